"""The benchmarks' shared rules (benchmarks/common.py): the headline file holds default runs only; the metrics."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from common import check_headline_overrides, classification_metrics  # noqa: E402


def test_headline_results_only_from_runs_with_the_defaults(tmp_path):
    headline = str(tmp_path / "results" / "cats_vs_dogs.json")
    check_headline_overrides([], headline, headline)  # defaults: allowed
    check_headline_overrides(["trainer.phase2_epochs=3"], str(tmp_path / "tuning.json"), headline)  # elsewhere
    with pytest.raises(SystemExit, match="default settings only; with --set trainer.phase2_epochs=3 pass --output"):
        check_headline_overrides(
            ["trainer.phase2_epochs=3"], os.path.join(tmp_path, "results/../results/cats_vs_dogs.json"), headline
        )


def test_classification_metrics_macro_f1_and_recall():
    # rows: true class; columns: predicted class
    metrics = classification_metrics([[8, 2, 0], [1, 3, 0], [0, 0, 6]], ["paper", "trash", "glass"])
    assert metrics["accuracy"] == pytest.approx(17 / 20, abs=1e-4)
    assert metrics["per_class"]["trash"] == {
        "support": 4,
        "recall": 0.75,
        "precision": 0.6,
        "f1": pytest.approx(2 / 3, abs=1e-4),
    }
    assert metrics["per_class"]["paper"]["recall"] == 0.8 and metrics["per_class"]["glass"]["f1"] == 1.0
    assert metrics["macro_f1"] == pytest.approx((0.8421 + 0.6667 + 1.0) / 3, abs=1e-4)
    assert metrics["smallest_recall"] == {"class": "trash", "recall": 0.75}

"""The real-data path, reduced so it runs in `make test`: 300 cats-vs-dogs photos through the whole pipeline.

A pre-split subset (100 cats + 100 dogs from train/, 50 + 50 from validation/) is linked (not copied) from
`../shared/datasets/cats_and_dogs_filtered` (or $FTUNE_CATS_DATA); the full benchmark is benchmarks/cats_vs_dogs.py.
This also covers the two-class path (one logit; the gate reads the same probability vector as for N classes).
"""

import os

import pytest
from conftest import IN_MEMORY_BEAM, REPO, pretrained_weights_path

from pipeline.configs import PipelineConfig
from pipeline.local_runner import run_local
from pipeline.reporting.report import report_data

pytestmark = pytest.mark.slow  # whole pipeline runs: `make test-fast` leaves them out

CATS_DATA = os.environ.get("FTUNE_CATS_DATA") or os.path.join(
    REPO, "..", "shared", "datasets", "cats_and_dogs_filtered"
)
PER_CLASS = {"train": 100, "validation": 50}


def link_subset(source: str, target: str) -> None:
    for split, count in PER_CLASS.items():
        for class_name in ("cats", "dogs"):
            src_dir = os.path.join(source, split, class_name)
            dst_dir = os.path.join(target, split, class_name)
            os.makedirs(dst_dir)
            for name in sorted(os.listdir(src_dir))[:count]:
                os.symlink(os.path.join(src_dir, name), os.path.join(dst_dir, name))


def test_cats_vs_dogs_subset_well_above_chance(tmp_path):
    if not os.path.isdir(CATS_DATA):
        pytest.fail(f"cats_and_dogs_filtered not found at {CATS_DATA}: set FTUNE_CATS_DATA")
    link_subset(os.path.abspath(CATS_DATA), str(tmp_path / "data"))
    config = PipelineConfig(pipeline_root=str(tmp_path / "root"), beam_args=list(IN_MEMORY_BEAM))
    config.data.data_root = str(tmp_path / "data")
    config.trainer.weights = pretrained_weights_path()
    config.trainer.phase1_epochs, config.trainer.phase2_epochs = 6, 2
    config.eval.accuracy_floor = 0.85

    result = run_local(config, progress=lambda m: None)

    assert result["split_mode"] == "presplit"
    data = report_data(config, with_predictions=False)
    assert data["ingestion"]["accepted_per_split"] == {"train": 200, "eval": 100}
    assert data["ingestion"]["quarantined_count"] == 0
    gate = data["gate"]
    assert gate["metric"] == "sparse_categorical_accuracy"
    assert gate["eval_example_count"] == 100
    # Chance is 0.5; ImageNet features separate cats from dogs even with 200 training images.
    assert gate["candidate_accuracy"] >= 0.85, gate["decision"]
    assert gate["blessed"] and data["push"]["pushed"]

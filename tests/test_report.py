"""The run report: figures, HTML and numbers from a real small pipeline run, and partial runs reported as such.

The shared small run (conftest.small_run: 2 generated classes, 96 px, a few epochs, the shared MobileNetV2 weights)
has one bad file among the images, so the quarantine list is not empty. Partial runs (stopped after
the Trainer or after ingestion, or no run at all) are checked by narrowing that run's MLMD view.
"""

import html
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import SMALL_RUN_BAD_FILE as BAD_FILE
from conftest import SMALL_RUN_PER_CLASS
from conftest import SMALL_RUN_PHASE1 as PHASE1_EPOCHS
from conftest import SMALL_RUN_PHASE2 as PHASE2_EPOCHS
from ml_metadata.proto import metadata_store_pb2
from PIL import Image
from tensorflow_model_analysis.proto import validation_result_pb2

from components.fine_tune_trainer import HISTORY_FILE
from components.image_example_gen import REPORT_FILE
from pipeline.configs import PipelineConfig
from pipeline.reporting import report, run_records
from pipeline.reporting.run_records import latest_artifact_uri

# BAD_FILE has characters that must be escaped in HTML: the quarantine table shows its path.
ACCEPTED = 2 * SMALL_RUN_PER_CLASS
TAB_GREEN = (44, 160, 44)  # matplotlib's "tab:green": the "start fine-tuning" marker
RED = (255, 0, 0)  # titles of wrongly classified images


@pytest.fixture(scope="module")
def run(small_run):
    """(config, index.html path, report_data) of the shared small run (conftest.small_run)."""
    config, _, _ = small_run
    return config, report.write_report(config), report.report_data(config)


def _png(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def _count_colour(pixels, rgb):
    return int(np.all(pixels == np.array(rgb, dtype=pixels.dtype), axis=-1).sum())


def _eval_records(config):
    uri = latest_artifact_uri(config, "ImageExampleGen", "examples")
    files = tf.io.gfile.glob(os.path.join(uri, "Split-eval", "*"))
    return list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())


def _read_json(path):
    with open(path) as f:
        return json.load(f)


# --- the full run ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_files_and_figures(run):
    config, index, data = run
    out_dir = os.path.dirname(index)
    assert index == os.path.join(config.pipeline_root, "report", "index.html")
    for name in report.FIGURES + (report.DATA_FILE,):
        assert os.path.isfile(os.path.join(out_dir, name)), name

    curves = _png(os.path.join(out_dir, report.LEARNING_CURVES_PNG))
    assert curves.shape[:2] == (750, 800)
    assert _count_colour(curves, TAB_GREEN) > 100, "no 'start fine-tuning' marker drawn"
    assert len(np.unique(curves.reshape(-1, 3), axis=0)) > 50

    matrix = _png(os.path.join(out_dir, report.CONFUSION_MATRIX_PNG))
    assert 400 <= matrix.shape[0] < matrix.shape[1] <= 1700
    assert len(np.unique(matrix.reshape(-1, 3), axis=0)) > 50

    grid = _png(os.path.join(out_dir, report.EVAL_GRID_PNG))
    rows, columns = report.grid_shape(data["predictions"]["total"])
    assert columns == 5 and rows >= 2  # at least 10 eval images in this run
    assert abs(grid.shape[0] - rows * 270) <= 1 and abs(grid.shape[1] - columns * 240) <= 1
    assert len(np.unique(grid.reshape(-1, 3), axis=0)) > 1000  # photos, not blank cells
    if data["predictions"]["correct"] < data["predictions"]["total"]:
        assert _count_colour(grid, RED) > 20, "wrong predictions must have red titles"
    for name in report.FIGURES:
        assert os.path.getsize(os.path.join(out_dir, name)) > 10_000


@pytest.mark.slow
def test_html_shows_figures_classes_gate_and_escaped_quarantine(run):
    config, index, data = run
    with open(index, encoding="utf-8") as f:
        page = f.read()
    for name in report.FIGURES:
        assert f'<img src="{name}"' in page
    assert "Missing:" not in page
    for name in data["ingestion"]["class_names"]:
        assert html.escape(name) in page
    gate = data["gate"]
    assert html.escape(gate["decision"]) in page
    assert ("NOT BLESSED" in page) != gate["blessed"]
    assert f"accuracy floor</th><td>{gate['accuracy_floor']:.3f}" in page
    # First run: nothing served, so the per-class comparison says so instead of showing an empty table.
    assert "No model was served when this one was evaluated" in page
    # The quarantine entry: path and reason, escaped.
    entry = data["ingestion"]["quarantined"][0]
    assert html.escape(entry["path"]) in page and html.escape(entry["reason"]) in page
    assert "&lt;an&gt; image &amp; &quot;quoted&quot;" in page
    assert BAD_FILE not in page
    push = data["push"]
    assert (html.escape(push["destination"]) in page) if push["pushed"] else ("Nothing pushed" in page)


@pytest.mark.slow
def test_report_data_matches_the_artifacts(run):
    config, index, data = run
    json.dumps(data)  # serialisable as it is
    assert data["missing"] == {}
    assert all(state in ("complete", "cached") for state in data["components"].values())

    ingest = _read_json(os.path.join(latest_artifact_uri(config, "ImageExampleGen", "examples"), REPORT_FILE))
    ing = data["ingestion"]
    assert ing["accepted"] == ingest["accepted"] == ACCEPTED
    assert ing["scanned"] == ACCEPTED + 1 and ing["quarantined_count"] == 1
    assert ing["quarantined"][0]["path"].endswith(BAD_FILE)
    assert "not an image" in ing["quarantined"][0]["reason"]
    assert ing["accepted_per_split"] == {s: sum(c.values()) for s, c in ingest["accepted_per_split"].items()}

    model_uri = latest_artifact_uri(config, "Trainer", "model")
    history = _read_json(os.path.join(model_uri, HISTORY_FILE))
    tr = data["training"]
    assert tr["final_accuracy"] == history["final_accuracy"]
    assert tr["phase2_start_epoch"] == history["phase2_start_epoch"] == PHASE1_EPOCHS
    assert tr["epochs_per_phase"] == {"phase1": PHASE1_EPOCHS, "phase2": PHASE2_EPOCHS}
    assert tr["curves"]["val_accuracy"] == history["val_accuracy"]

    pred = data["predictions"]
    n_eval = len(_eval_records(config))
    assert pred["total"] == n_eval == ing["accepted_per_split"]["eval"] and not pred["truncated"]
    assert sum(map(sum, pred["confusion_matrix"])) == n_eval
    assert pred["class_names"] == ingest["class_names"] and len(pred["confusion_matrix"]) == 2
    assert [sum(row) for row in pred["confusion_matrix"]] == [
        ingest["accepted_per_split"]["eval"].get(name, 0) for name in pred["class_names"]
    ]

    gate = data["gate"]
    blessing_uri = latest_artifact_uri(config, "Evaluator", "blessing")
    assert gate["blessed"] == os.path.exists(os.path.join(blessing_uri, "BLESSED"))
    assert gate["metric"] == "sparse_categorical_accuracy"  # the same metric for two classes as for many
    assert gate["accuracy_floor"] == config.eval.accuracy_floor
    assert gate["baseline_accuracy"] is None and gate["baseline_version"] is None
    assert gate["max_accuracy_drop"] is None  # nothing served before: the drop was not applied
    assert gate["eval_example_count"] == n_eval
    # The Evaluator ran the same signature on the same examples: the report's own count agrees with TFMA.
    assert pred["accuracy"] == pytest.approx(gate["candidate_accuracy"], abs=1e-6)
    assert set(gate["per_class_accuracy"]) == set(pred["class_names"])

    push = data["push"]
    if gate["blessed"]:
        assert push["pushed"] and push["version"] == "1"
        assert push["destination"] == os.path.join(config.serving_model_dir, "1")
        assert os.path.isfile(os.path.join(push["destination"], "saved_model.pb"))
    else:
        assert push["pushed"] is False and "bless" in push["reason"]
    assert _read_json(os.path.join(os.path.dirname(index), report.DATA_FILE))["ingestion"] == ing


@pytest.mark.slow
def test_summary_lines(run):
    _, _, data = run
    lines = report.summary_lines(data)
    assert lines[0].startswith("ingestion: 80 accepted (") and "1 quarantined" in lines[0]
    assert "after phase 1" in lines[1] and "after phase 2" in lines[1]
    assert lines[2] == f"warm start: {data['training']['warm_start']['reason']}"
    assert lines[2].startswith("warm start: cold start")  # nothing served before this run
    assert lines[3] == f"gate: {data['gate']['decision']}"
    assert (data["push"]["destination"] in lines[4]) if data["push"]["pushed"] else "nothing pushed" in lines[4]


# --- partial runs ----------------------------------------------------------------------------------------------


def _narrowed(config, last_node):
    """The run's MLMD view as if the pipeline had stopped after `last_node`."""
    real = run_records.load_run(config)
    kept = report.NODES[: report.NODES.index(last_node) + 1]
    return run_records.RunView(
        run_id=real.run_id,
        states={n: s for n, s in real.states.items() if n in kept},
        outputs={k: a for k, a in real.outputs.items() if k[0] in kept},
    )


@pytest.mark.slow
def test_run_stopped_after_trainer_reports_what_is_missing(run, tmp_path, monkeypatch):
    config, _, _ = run
    view = _narrowed(config, "Trainer")
    monkeypatch.setattr(report, "load_run", lambda c: view)
    out_dir = tmp_path / "after_trainer"
    out_dir.mkdir()
    (out_dir / report.EVAL_GRID_PNG).write_bytes(b"stale figure of an older report")
    index = report.write_report(config, str(out_dir))
    data = _read_json(out_dir / report.DATA_FILE)
    assert set(data["missing"]) == {"gate"} and "Evaluator did not run" in data["missing"]["gate"]
    assert data["training"] and data["predictions"]["total"] > 0 and data["gate"] is None
    assert data["push"]["pushed"] is None and "Pusher did not run" in data["push"]["reason"]
    assert data["components"]["Evaluator"] == "not run"
    page = open(index, encoding="utf-8").read()
    assert "Not evaluated" in page and "Nothing pushed: Pusher did not run" in page
    for name in report.FIGURES:
        assert f'<img src="{name}"' in page
    assert os.path.getsize(out_dir / report.EVAL_GRID_PNG) > 10_000  # redrawn, not the stale file


@pytest.mark.slow
def test_ingest_only_run_has_no_figures(run, tmp_path, monkeypatch):
    config, _, _ = run
    view = _narrowed(config, "SchemaGen")
    monkeypatch.setattr(report, "load_run", lambda c: view)
    out_dir = tmp_path / "ingest_only"
    out_dir.mkdir()
    (out_dir / report.LEARNING_CURVES_PNG).write_bytes(b"stale")
    index = report.write_report(config, str(out_dir))
    data = report.report_data(config)
    assert data["ingestion"]["accepted"] == ACCEPTED
    assert set(data["missing"]) == {"training", "predictions", "gate"}
    assert all("Trainer did not run" in data["missing"][k] for k in ("training", "predictions"))
    assert not any(os.path.exists(out_dir / name) for name in report.FIGURES)
    page = open(index, encoding="utf-8").read()
    assert "<img" not in page and page.count("Missing:") >= 3
    assert "&lt;an&gt; image" in page  # the quarantine list is still there


def test_no_run_at_all(tmp_path):
    config = PipelineConfig(pipeline_root=str(tmp_path / "never_ran"))
    data = report.report_data(config)
    json.dumps(data)
    assert data["run_id"] is None and data["ingestion"] is None and data["push"]["pushed"] is None
    assert "no metadata store" in data["missing"]["ingestion"]
    index = report.write_report(config)
    assert "no metadata store" in open(index, encoding="utf-8").read()
    assert report.summary_lines(data)[-2].startswith("push: nothing pushed: no metadata store")
    assert report.summary_lines(data)[-1] == "outcome: not_finished (exit code 1)"


# --- the gate's wording --------------------------------------------------------------------------------------------


def test_failed_thresholds_name_metric_class_and_both_numbers():
    from components import evaluator_gate

    result = validation_result_pb2.ValidationResult(validation_ok=False)
    overall = result.metric_validations_per_slice.add()
    failure = overall.failures.add()
    failure.metric_key.name = "sparse_categorical_accuracy"
    failure.metric_value.double_value.value = 0.52
    failure.metric_threshold.value_threshold.lower_bound.value = 0.6
    per_class = result.metric_validations_per_slice.add()
    per_class.slice_key.single_slice_keys.add(column="class_name", bytes_value=b"cats")
    per_class.failures.add().CopyFrom(failure)
    change = per_class.failures.add()
    change.metric_key.name = "sparse_categorical_accuracy"
    change.metric_value.double_value.value = -0.43
    change.metric_threshold.change_threshold.absolute.value = -0.1000000001
    metrics = {None: {"candidate": 0.52, "baseline": 0.9}, "cats": {"candidate": 0.52, "baseline": 0.95}}

    lines = [f["text"] for f in evaluator_gate.failure_lines(result, metrics, baseline_version=3)]
    assert lines == [
        "overall accuracy 0.520 is below the floor 0.600",
        "class 'cats' recall 0.520 is below the floor 0.600",
        "class 'cats' recall 0.520 vs 0.950 on the served model (version 3): changed by -0.430, at most 0.100 drop "
        "allowed",
    ]
    summary = {"blessed": False, "failures": [{"text": line} for line in lines], "change_thresholds_used": True}
    assert evaluator_gate.decision_text(summary).startswith("NOT BLESSED: overall accuracy 0.520 is below")


def test_not_pushed_says_why():
    artifact = metadata_store_pb2.Artifact(uri="/x/Pusher/pushed_model/9")
    artifact.custom_properties["pushed"].int_value = 0
    view = run_records.RunView(
        run_id="r1", states={"Pusher": "complete"}, outputs={("Pusher", "pushed_model"): artifact}
    )
    push = report._push(view, {"decision": "NOT BLESSED: ...", "baseline_version": None})
    assert push == {
        "pushed": False,
        "destination": None,
        "version": None,
        "reason": "the Evaluator did not bless the model (see the gate decision)",
    }

"""The run report: figures, HTML and numbers from a real small pipeline run, and partial runs reported as such.

The shared small run (conftest.small_run: 2 generated classes, 96 px, a few epochs, the shared MobileNetV2 weights)
has one bad file among the images, so the quarantine list is not empty. Partial runs (stopped after
the Trainer or after ingestion, or no run at all) are checked by narrowing that run's MLMD view.
"""

import copy
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import SMALL_RUN_BAD_FILE as BAD_FILE
from conftest import SMALL_RUN_PER_CLASS
from conftest import SMALL_RUN_PHASE1 as PHASE1_EPOCHS
from conftest import SMALL_RUN_PHASE2 as PHASE2_EPOCHS
from markupsafe import escape
from ml_metadata.proto import metadata_store_pb2
from PIL import Image
from tensorflow_model_analysis.proto import validation_result_pb2

from pipeline.configs import PipelineConfig
from pipeline.reporting import collect, figures, page, report, run_records, summary
from pipeline.reporting.predictions import per_class_metrics
from pipeline.reporting.run_records import latest_artifact_uri
from serving import sidecars

# BAD_FILE has characters that must be escaped in HTML: the quarantine table shows its path. The page escapes with
# Jinja2's autoescape (markupsafe: `"` is written &#34;, `'` &#39;).
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
    uri = latest_artifact_uri(config, sidecars.EXAMPLE_GEN, "examples")
    files = tf.io.gfile.glob(os.path.join(uri, "Split-eval", "*"))
    return list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())


def _eval_file_names(config):
    return [
        tf.train.Example.FromString(record).features.feature["file_name"].bytes_list.value[0].decode()
        for record in _eval_records(config)
    ]


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _esc(text):
    return str(escape(text))


# --- the full run ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_files_and_figures(run):
    config, index, data = run
    out_dir = os.path.dirname(index)
    assert index == os.path.join(config.pipeline_root, "report", "index.html")
    for name in report.FIGURES + (report.DATA_FILE,):
        assert os.path.isfile(os.path.join(out_dir, name)), name

    curves = _png(os.path.join(out_dir, figures.LEARNING_CURVES_PNG))
    assert curves.shape[:2] == (750, 800)
    assert _count_colour(curves, TAB_GREEN) > 100, "no 'start fine-tuning' marker drawn"
    assert len(np.unique(curves.reshape(-1, 3), axis=0)) > 50

    matrix = _png(os.path.join(out_dir, figures.CONFUSION_MATRIX_PNG))
    assert 400 <= matrix.shape[0] < matrix.shape[1] <= 1700
    assert len(np.unique(matrix.reshape(-1, 3), axis=0)) > 50

    grid = _png(os.path.join(out_dir, figures.EVAL_GRID_PNG))
    rows, columns = figures.grid_shape(data["predictions"]["total"])
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
        assert _esc(name) in page
    gate = data["gate"]
    assert _esc(gate["decision"]) in page
    assert ("NOT BLESSED" in page) != gate["blessed"]
    assert f"accuracy floor</th><td>{gate['accuracy_floor']:.3f}" in page
    # First run: nothing served, so the per-class comparison says so instead of showing an empty table.
    assert "No model was served when this one was evaluated" in page
    # The quarantine entry: path and reason, escaped.
    entry = data["ingestion"]["quarantined"][0]
    assert _esc(entry["path"]) in page and _esc(entry["reason"]) in page
    assert "&lt;an&gt; image &amp; &#34;quoted&#34;" in page
    assert BAD_FILE not in page
    push = data["push"]
    assert (_esc(push["destination"]) in page) if push["pushed"] else ("Nothing pushed" in page)


@pytest.mark.slow
def test_report_data_matches_the_artifacts(run):
    config, index, data = run
    json.dumps(data)  # serialisable as it is
    assert data["missing"] == {}
    assert all(state in ("complete", "cached") for state in data["components"].values())

    ingest = sidecars.read_ingest_report(latest_artifact_uri(config, sidecars.EXAMPLE_GEN, "examples"))
    ing = data["ingestion"]
    assert ing["accepted"] == ingest["accepted"] == ACCEPTED
    assert ing["scanned"] == ACCEPTED + 1 and ing["quarantined_count"] == 1
    assert ing["quarantined"][0]["path"].endswith(BAD_FILE)
    assert "not an image" in ing["quarantined"][0]["reason"]
    assert ing["accepted_per_split"] == {s: sum(c.values()) for s, c in ingest["accepted_per_split"].items()}

    history = sidecars.read_history(latest_artifact_uri(config, sidecars.TRAINER, "model"))
    tr = data["training"]
    assert tr["final_accuracy"] == history["final_accuracy"]
    assert tr["phase2_start_epoch"] == history["phase2_start_epoch"] == PHASE1_EPOCHS
    assert tr["epochs_per_phase"] == {"phase1": PHASE1_EPOCHS, "phase2": PHASE2_EPOCHS}
    assert tr["curves"]["val_accuracy"] == history["val_accuracy"]

    pred = data["predictions"]
    n_eval = len(_eval_records(config))
    assert pred["total"] == n_eval == ing["accepted_per_split"]["eval"]
    # The Trainer's record names every eval image once, each with its file's true label.
    recorded = sidecars.read_eval_predictions(latest_artifact_uri(config, sidecars.TRAINER, "model"))
    assert sorted(recorded["file_names"]) == sorted(_eval_file_names(config))
    assert pred["path"] == sidecars.eval_predictions_path(latest_artifact_uri(config, sidecars.TRAINER, "model"))
    assert sum(map(sum, pred["confusion_matrix"])) == n_eval
    assert pred["class_names"] == ingest["class_names"] and len(pred["confusion_matrix"]) == 2
    assert [sum(row) for row in pred["confusion_matrix"]] == [
        ingest["accepted_per_split"]["eval"].get(name, 0) for name in pred["class_names"]
    ]

    gate = data["gate"]
    blessing_uri = latest_artifact_uri(config, sidecars.EVALUATOR, "blessing")
    assert gate["blessed"] == os.path.exists(os.path.join(blessing_uri, "BLESSED"))
    assert gate["metric"] == "sparse_categorical_accuracy"  # the same metric for two classes as for many
    assert gate["accuracy_floor"] == config.eval.accuracy_floor
    assert gate["baseline_accuracy"] is None and gate["baseline_version"] is None
    assert gate["max_accuracy_drop"] is None  # nothing served before: the drop was not applied
    assert gate["eval_example_count"] == n_eval
    # The Evaluator ran the exported SavedModel (serving_tf_example) on the same examples; the Trainer's predictions
    # of the same weights (over its cached activations) agree with it: the same accuracy, the same recall per class.
    assert pred["accuracy"] == pytest.approx(gate["candidate_accuracy"], abs=1e-6)
    assert set(gate["per_class_accuracy"]) == set(pred["class_names"])
    # One recall per class on the page: the per-class table's is the gate's (here the same examples, same number).
    for name, recall in gate["per_class_accuracy"].items():
        assert pred["per_class"][name]["recall"] == pytest.approx(recall, abs=1e-6)

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
    # The recipe (trainer.profile=auto on this machine, which has no GPU: the CPU recipe) and why.
    assert lines[2] == "profile: fast (trainer.profile=auto: this machine: 0 GPUs)"
    assert data["training"]["profile"] == {"setting": "auto", "resolved": "fast", "why": "this machine: 0 GPUs"}
    assert lines[3] == f"warm start: {data['training']['warm_start']['reason']}"
    assert lines[3].startswith("warm start: cold start")  # nothing served before this run
    # The check of the training data (nothing served yet: no "data changes" line).
    assert lines[4].startswith("label issues: ") and f" {data['label_issues']['images']} training images" in lines[4]
    assert not any(line.startswith("data changes:") for line in lines)
    assert lines[5] == f"gate: {data['gate']['decision']}"
    assert (data["push"]["destination"] in lines[6]) if data["push"]["pushed"] else "nothing pushed" in lines[6]


# --- partial runs ----------------------------------------------------------------------------------------------


def _narrowed(config, last_node):
    """The run's MLMD view as if the pipeline had stopped after `last_node`."""
    real = run_records.load_run(config)
    kept = sidecars.COMPONENT_IDS[: sidecars.COMPONENT_IDS.index(last_node) + 1]
    return run_records.RunView(
        run_id=real.run_id,
        states={n: s for n, s in real.states.items() if n in kept},
        outputs={k: a for k, a in real.outputs.items() if k[0] in kept},
    )


@pytest.mark.slow
def test_run_stopped_after_trainer_reports_what_is_missing(run, tmp_path, monkeypatch):
    config, _, _ = run
    view = _narrowed(config, sidecars.TRAINER)
    monkeypatch.setattr(collect, "load_run", lambda c: view)
    out_dir = tmp_path / "after_trainer"
    out_dir.mkdir()
    (out_dir / figures.EVAL_GRID_PNG).write_bytes(b"stale figure of an older report")
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
    assert os.path.getsize(out_dir / figures.EVAL_GRID_PNG) > 10_000  # redrawn, not the stale file


@pytest.mark.slow
def test_ingest_only_run_has_no_figures(run, tmp_path, monkeypatch):
    config, _, _ = run
    view = _narrowed(config, sidecars.SCHEMA_GEN)
    monkeypatch.setattr(collect, "load_run", lambda c: view)
    out_dir = tmp_path / "ingest_only"
    out_dir.mkdir()
    (out_dir / figures.LEARNING_CURVES_PNG).write_bytes(b"stale")
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
    push = collect._push(view, {"decision": "NOT BLESSED: ...", "baseline_version": None})
    assert push == {
        "pushed": False,
        "destination": None,
        "version": None,
        "reason": "the Evaluator did not bless the model (see the gate decision)",
    }


# --- the page and the summary from hand-built data (no pipeline run) ---------------------------------------------

NAMES = ["cat <b>", 'dog\'s & "friends"']
MATRIX = [[9, 1], [2, 8]]


def _data(**changes):
    """Report data as collect.collect builds it, by hand: two classes with characters HTML must escape."""
    classes = {
        NAMES[0]: {"recall": 0.9, "baseline_recall": 0.85, "examples": 10, "gated": True},
        NAMES[1]: {"recall": 0.8, "baseline_recall": 0.82, "examples": 10, "gated": True},
    }
    data = {
        "pipeline_name": "ftune",
        "pipeline_root": "/tmp/root & co",
        "run_id": "r1",
        "generated_at": "2024-01-01T00:00:00",
        "components": {node: "complete" for node in sidecars.COMPONENT_IDS},
        "missing": {},
        "ingestion": {
            "scanned": 21,
            "accepted": 20,
            "accepted_per_split": {"eval": 20},
            "accepted_per_class": {"eval": {NAMES[0]: 10, NAMES[1]: 10}},
            "quarantined_count": 51,
            "quarantined_fraction": 0.5,
            "quarantined": [
                {"path": f'/data/<an> image & "quoted" {i}.jpg', "reason": "not an image"} for i in range(50)
            ],
            "class_names": NAMES,
            "input_base": "/data",
            "spans": [],
            "examples_uri": "/root/ImageExampleGen/examples/1",
            "report_path": "/root/ImageExampleGen/examples/1/ingest_report.json",
        },
        "training": None,
        "predictions": {
            "class_names": NAMES,
            "confusion_matrix": MATRIX,
            "total": 20,
            "correct": 17,
            "accuracy": 0.85,
            "eval_split_size": 20,
            "wrong_examples": [],
            **per_class_metrics(MATRIX, NAMES),
            "confident_mistakes": [{"file_name": "x.jpg", "true": NAMES[1], "predicted": NAMES[0], "probability": 0.9}],
            "unsure_correct": [],
            "source": "the Trainer's final model over its cached eval activations",
            "path": "/root/Trainer/model/2/eval_predictions.json",
        },
        "gate": {
            "blessed": True,
            "metric": "sparse_categorical_accuracy",
            "candidate_accuracy": 0.85,
            "baseline_accuracy": 0.83,
            "baseline_version": 3,
            "change_thresholds_used": True,
            "baseline_note": "",
            "accuracy_floor": 0.6,
            "max_accuracy_drop": 0.05,
            "class_recall_floor": 0.5,
            "max_class_recall_drop": 0.1,
            "min_class_examples": 5,
            "eval_example_count": 20,
            "macro_recall": 0.85,
            "baseline_macro_recall": 0.835,
            "per_class_accuracy": {name: v["recall"] for name, v in classes.items()},
            "baseline_per_class_accuracy": {name: v["baseline_recall"] for name, v in classes.items()},
            "classes": classes,
            "checked": ["overall accuracy >= 0.600"],
            "failures": [],
            "evaluation_uri": "/root/Evaluator/evaluation/4",
            "decision": "BLESSED: accuracy 0.850 >= floor 0.600",
        },
        "push": {"pushed": True, "destination": "/serving/4", "version": "4", "reason": "pushed as version 4"},
        "outcome": {"status": "pushed", "exit_code": 0},
        "tflite": None,
        "settings": PipelineConfig().to_dict(),
    }
    data.update(changes)
    return data


def _table_rows(page_text, heading):
    """{first cell: [the other cells]} of the first table after <h2>heading</h2>."""
    import re

    section = page_text.split(f"<h2>{heading}</h2>", 1)[1].split("</table>", 1)[0]
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", section):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        if cells:
            rows[cells[0]] = cells[1:]
    return rows


def test_page_from_numbers_escapes_user_text():
    data = _data()
    page_text = page.render_html(data, {})
    for heading in ("Ingestion", "Quarantine", "Per-class precision, recall and F1", "Gate (Evaluator)", "Push"):
        assert f"<h2>{heading}</h2>" in page_text, heading
    assert '<p class="verdict blessed">BLESSED: accuracy 0.850 &gt;= floor 0.600<br>Pushed: /serving/4' in page_text
    assert "accuracy floor</th><td>0.600" in page_text
    # Class names, paths and reasons are the user's: escaped wherever they appear, never raw.
    assert "cat &lt;b&gt;" in page_text and "dog&#39;s &amp; &#34;friends&#34;" in page_text
    assert "&lt;an&gt; image &amp; &#34;quoted&#34; 0.jpg" in page_text and "<an>" not in page_text
    assert "<code>/tmp/root &amp; co</code>" in page_text
    assert "&hellip; and 1 more" in page_text  # 51 quarantined, 50 listed
    for name in report.FIGURES[1:] + (figures.MISTAKES_PNG,):  # drawn (no status given): shown
        assert f'<img src="{name}"' in page_text
    assert "Missing: no training history" in page_text  # training is None, with no reason recorded
    # A figure that could not be drawn says why; "none": nothing to rank.
    status = {figures.CONFUSION_MATRIX_PNG: "could not be drawn: ValueError: <bad>", figures.UNSURE_PNG: "none"}
    page_text = page.render_html(data, status)
    assert "Missing: confusion_matrix.png: could not be drawn: ValueError: &lt;bad&gt;" in page_text
    assert "<p>None among the eval images.</p>" in page_text


def test_per_class_recall_on_the_page_is_the_gates():
    """The page shows one recall per class, the gate's (TFMA over the exported SavedModel), even where the Trainer's
    predictions, which precision and F1 come from, would say another."""
    data = _data()
    data["gate"]["classes"][NAMES[0]]["recall"] = 0.95  # TFMA over all eval images; the report's own says 0.9
    data["gate"]["macro_recall"] = 0.875
    page_text = page.render_html(data, {})
    rows = _table_rows(page_text, "Per-class precision, recall and F1")
    own = data["predictions"]["per_class"][NAMES[0]]
    assert rows["cat &lt;b&gt;"] == [f"{own['precision']:.3f}", "0.950", f"{own['f1']:.3f}", "10"]
    assert rows["macro average"][1] == "0.875"
    assert "0.900" not in page_text.split("<h2>Per-class precision, recall and F1</h2>", 1)[1].split("</table>")[0]
    assert "as the Evaluator measured it" in page_text
    assert _table_rows(page_text, "Gate (Evaluator)")  # the gate's own table shows the same number
    assert '<td>cat &lt;b&gt;</td><td class="num">10</td><td class="num">0.950</td>' in page_text
    # No gate (the Evaluator did not run): the report's own recall, and the page says where it comes from.
    page_text = page.render_html(_data(gate=None, missing={"gate": "Evaluator did not run"}), {})
    assert _table_rows(page_text, "Per-class precision, recall and F1")["cat &lt;b&gt;"][1] == "0.900"
    assert "no gate result" in page_text and "Not evaluated: Evaluator did not run" in page_text


def test_per_class_metrics_and_served_comparison_from_numbers():
    metrics = per_class_metrics([[8, 2, 0], [1, 9, 0], [0, 0, 0]], ["a", "b", "c"])
    assert metrics["per_class"]["a"] == {
        "precision": 8 / 9,
        "recall": 0.8,
        "f1": pytest.approx(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8)),
        "support": 10,
    }
    assert metrics["per_class"]["c"]["precision"] is None and metrics["per_class"]["c"]["support"] == 0
    assert metrics["macro"]["recall"] == pytest.approx((0.8 + 0.9) / 2)  # classes without eval images left out
    data = _data()
    data["gate"].update(
        metric="binary_accuracy",
        per_class_accuracy={"cat": 0.9, "dog": 0.8},
        baseline_per_class_accuracy={"cat": 0.85, "dog": 0.82},
    )
    page_text = page.render_html(data, {})
    assert "served version 3" in page_text
    assert _table_rows(page_text, "Candidate versus served model, per class") == {
        "cat": ["0.900", "0.850", "+0.050"],
        "dog": ["0.800", "0.820", "-0.020"],
    }
    data["gate"]["baseline_per_class_accuracy"] = {}
    assert "No model was served when this one was evaluated" in page.render_html(data, {})


def test_settings_section_lists_every_setting():
    page_text = page.render_html(_data(settings=PipelineConfig().to_dict(), ingestion=None), {})
    assert "<td>push.tflite</td><td>off</td>" in page_text and "<td>trainer.image_size</td><td>160</td>" in page_text
    assert "<p>Not requested (<code>push.tflite: off</code>).</p>" in page_text


def test_run_summary_data_collects_the_run_once(tmp_path, monkeypatch):
    """`ftune run`'s summary data is the report's own collection (one pass), less the report's predictions."""
    config = PipelineConfig(pipeline_root=str(tmp_path / "never_ran"))
    passes = []

    def counted(*args, **kwargs):
        passes.append(kwargs)
        return collect.collect(*args, **kwargs)

    monkeypatch.setattr(report, "collect", counted)
    data = summary.run_summary_data(config, {"wall_s": 1.25, "data_root": "/d"}, {})
    assert len(passes) == 1
    assert "predictions" not in data and "predictions" not in data["missing"]
    assert data["report"] == os.path.join(config.pipeline_root, "report", "index.html") and os.path.isfile(
        data["report"]
    )
    assert data["wall_s"] == 1.2 and data["ingestion"] is None and "no metadata store" in data["missing"]["gate"]
    text = summary.run_summary(config, {"wall_s": 1.25}, {}, copy.deepcopy(data))
    assert "outcome: not_finished (exit code 1)" in text and f"report: {data['report']}" in text


def _artifact(uri, **properties):
    artifact = metadata_store_pb2.Artifact(uri=str(uri))
    for name, value in properties.items():
        field = "int_value" if isinstance(value, int) else "string_value"
        setattr(artifact.custom_properties[name], field, value)
    return artifact


def test_collect_reads_every_part_through_the_sidecars(tmp_path, monkeypatch):
    """Each part from the file its component wrote (serving/sidecars.py), found through the run's artifacts."""
    examples, model, evaluation, served = (tmp_path / n for n in ("examples", "model", "evaluation", "serving"))
    sidecars.write_ingest_report(
        str(examples),
        {
            "scanned": 21,
            "accepted": 20,
            "accepted_per_split": {"train": {"a": 6, "b": 4}, "eval": {"a": 5, "b": 5}},
            "class_names": ["a", "b"],
            "quarantined": [{"path": "/d/x.jpg", "reason": "not an image"}],
            "quarantined_count": 1,
            "quarantined_fraction": 1 / 21,
            "input_base": "/d",
        },
    )
    sidecars.write_history(
        str(model),
        {"phase": [1, 1, 2], "accuracy": [0.5, 0.6, 0.7], "final_accuracy": {"phase1": 0.6, "phase2": 0.7}},
    )
    lite = dict(mode="int8", size_bytes=2048, tflite_accuracy=0.8, saved_model_accuracy=0.8, accepted=True)
    sidecars.write_tflite_record(sidecars.serving_model_dir(str(model)), lite)
    classes = {"a": {"recall": 0.8, "baseline_recall": None, "examples": 5, "gated": True}}
    thresholds = dict(accuracy_floor=0.6, max_accuracy_drop=None, class_recall_floor=0.5, max_class_recall_drop=None)
    sidecars.write_gate(
        str(evaluation),
        {
            **dict(blessed=True, metric="sparse_categorical_accuracy", accuracy=0.8, baseline_accuracy=None),
            **dict(baseline_version=None, change_thresholds_used=False, baseline_note="nothing served"),
            **dict(eval_examples=10, macro_recall=0.8, baseline_macro_recall=None, classes=classes),
            "thresholds": {**thresholds, "min_class_examples": 5},
            **dict(checked=["overall accuracy >= 0.600"], failures=[], decision="BLESSED: ..."),
        },
    )
    (served / "1").mkdir(parents=True)
    (served / "1" / "model.tflite").write_bytes(b"tflite")
    view = run_records.RunView(
        run_id="r1",
        states={node: "complete" for node in sidecars.COMPONENT_IDS},
        outputs={
            (sidecars.EXAMPLE_GEN, "examples"): _artifact(examples),
            (sidecars.TRAINER, "model"): _artifact(model),
            (sidecars.EVALUATOR, "evaluation"): _artifact(evaluation),
            (sidecars.EVALUATOR, "blessing"): _artifact(tmp_path / "blessing", blessed=1),
            (sidecars.PUSHER, "pushed_model"): _artifact(
                tmp_path / "push", pushed=1, pushed_version="1", pushed_destination=str(served / "1")
            ),
        },
    )
    monkeypatch.setattr(collect, "load_run", lambda c: view)
    data = collect.collect(PipelineConfig(pipeline_root=str(tmp_path)), with_predictions=True, keep_images=False).data
    json.dumps(data)
    assert set(data["missing"]) == {"predictions"}
    assert data["missing"]["predictions"].startswith(f"no eval_predictions.json in {model}")
    ing = data["ingestion"]
    assert ing["accepted_per_split"] == {"eval": 10, "train": 10} and ing["quarantined_count"] == 1
    assert ing["report_path"] == sidecars.ingest_report_path(str(examples))
    assert data["training"]["epochs_per_phase"] == {"phase1": 2, "phase2": 1}
    assert data["training"]["history_path"] == sidecars.history_path(str(model))
    gate = data["gate"]
    assert gate["blessed"] and gate["per_class_accuracy"] == {"a": 0.8} and gate["accuracy_floor"] == 0.6
    assert data["push"]["pushed"] and data["outcome"]["status"] == "pushed"
    assert data["tflite"]["pushed_path"] == str(served / "1" / "model.tflite")
    lines = report.summary_lines(data)
    assert lines[0] == "ingestion: 20 accepted (eval 10, train 10), 1 quarantined"
    assert (
        lines[-1]
        == f"tflite (int8): 2 KB, accuracy 0.800 vs SavedModel 0.800; accepted, pushed {served}/1/model.tflite"
    )


REFUSED_ATTEMPT = {
    "fingerprint": "sha256:abc",
    "settings": {},
    "served_version": 1,
    "failed_checks": ["class 'cat <b>' recall 0.000 is below the floor 0.300", "overall accuracy 0.400 < 0.600"],
    "pipeline_run": "run-7",
    "time": "2026-12-04T06:10:00+00:00",
}


def test_page_shows_the_change_check_and_the_last_refusal():
    decision = {"changed": True, "refused": False, "reason": "new data: span-2", "served_version": 1}
    page_text = page.render_html(
        _data(change_check=decision, last_refused=REFUSED_ATTEMPT, last_refused_applies=False), {}
    )
    section = page_text.split("<h2>Change check</h2>", 1)[1].split("<h2>", 1)[0]
    assert "Trained: new data: span-2." in section
    assert "Last refused: 2026-12-04T06:10:00+00:00 (run run-7) against version 1" in section
    assert "no longer applies: another version is served now" in section
    assert "<li>class &#39;cat &lt;b&gt;&#39; recall 0.000 is below the floor 0.300</li>" in section
    # A refusal the change check still holds: the page says how to train anyway.
    page_text = page.render_html(_data(last_refused=REFUSED_ATTEMPT, last_refused_applies=True), {})
    assert "not trained again while that stays served" in page_text and "force=1" in page_text
    # Neither a decision (ftune ingest) nor a refusal on file.
    section = page.render_html(_data(), {}).split("<h2>Change check</h2>", 1)[1].split("<h2>", 1)[0]
    assert "no change check" in section and "Last refused" not in section


def test_a_run_the_change_check_stopped_reports_why_everything_was_skipped(tmp_path, monkeypatch):
    """A run with nothing new: only ChangeCheck ran (its decision in MLMD); the report says every other part was
    skipped for the check's reason, and the run ended as `ftune run` says: still_refused, exit 0."""
    config = PipelineConfig(pipeline_root=str(tmp_path))
    version = os.path.join(config.serving_model_dir, "1")
    os.makedirs(version)
    open(os.path.join(version, "saved_model.pb"), "wb").close()
    sidecars.write_refused_attempt(config.serving_model_dir, REFUSED_ATTEMPT)
    reason = "no new data since the refused run of 2026-12-04T06:10:00+00:00: ...; version 1 stays served"
    decision = _artifact(tmp_path / "decision", changed=0, refused=1, reason=reason, served_version=1)
    view = run_records.RunView(
        run_id="r2", states={sidecars.CHANGE_CHECK: "complete"}, outputs={(sidecars.CHANGE_CHECK, "decision"): decision}
    )
    monkeypatch.setattr(collect, "load_run", lambda c: view)
    data = collect.collect(config, with_predictions=True, keep_images=False).data
    json.dumps(data)
    assert data["change_check"] == {"changed": False, "refused": True, "reason": reason, "served_version": 1}
    assert data["last_refused"] == REFUSED_ATTEMPT and data["last_refused_applies"] is True
    assert data["components"][sidecars.CHANGE_CHECK] == "complete"
    assert {state for node, state in data["components"].items() if node != sidecars.CHANGE_CHECK} == {"skipped"}
    assert set(data["missing"]) == {"ingestion", "training", "predictions", "gate"}
    assert all(
        why == f"skipped: the change check found nothing to train ({reason})" for why in data["missing"].values()
    )
    assert data["outcome"] == {"status": "still_refused", "exit_code": 0, "version": 1}
    page_text = page.render_html(data, {})
    assert "Nothing to train (every later component skipped): no new data since the refused run" in page_text
    assert "not trained again while that stays served" in page_text
    assert report.summary_lines(data)[-1] == "outcome: still_refused (exit code 0)"

"""Using the model and seeing the run: `ftune predict`, a clean console, the report's error analysis, TFLite.

The slow tests read the shared small run (conftest.small_run: one `ftune run --json` on 2 generated classes, 96 px,
a few epochs, Beam in multi-processing mode with 2 worker processes so that worker start-up noise would show, int8
TFLite on); the rest need no pipeline.
"""

import base64
import html
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import REPO, SMALL_RUN_PER_CLASS
from conftest import SMALL_RUN_PHASE1 as PHASE1
from conftest import SMALL_RUN_PHASE2 as PHASE2

from pipeline import cli
from pipeline.configs import ConfigError, PipelineConfig, load_config
from pipeline.reporting import report

# Lines that must never reach the console of a default run: TF/XLA C++ logs, absl, Beam/TF Python logs in their
# default format, Python warnings.
NOISE = [
    re.compile(p)
    for p in (
        r"Unable to register",
        r"TensorRT",
        r"cuDNN|cuBLAS|cuFFT",
        r"FutureWarning|DeprecationWarning|UserWarning",
        r"absl::InitializeLog",
        r"^(INFO|WARNING|DEBUG):[\w.]+:",
        r"warnings\.warn",
        r"^[IWE]\d{4} \d\d:\d\d:\d\d",
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] ",
        r"rebuild TensorFlow",
    )
]


def _ftune(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def run(small_run):
    """(config, completed `ftune run --json` process, its JSON summary): the shared small run."""
    return small_run


def _eval_images(config):
    """[(file name, encoded bytes, label)] of the eval split, from ImageExampleGen's output."""
    import tensorflow as tf

    from pipeline.reporting.run_records import latest_artifact_uri

    uri = latest_artifact_uri(config, "ImageExampleGen", "examples")
    files = tf.io.gfile.glob(os.path.join(uri, "Split-eval", "*"))
    out = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature
        out.append(
            (
                feature["file_name"].bytes_list.value[0].decode(),
                feature["image"].bytes_list.value[0],
                int(feature["label"].int64_list.value[0]),
            )
        )
    return out


def _served(config):
    import tensorflow as tf

    version_dir = os.path.join(config.serving_model_dir, "1")
    return version_dir, tf.saved_model.load(version_dir)


# --- the console -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_console_is_clean_and_labels_the_phases(run):
    _, result, _ = run
    console = (result.stderr + result.stdout).splitlines()
    print(f"{len(console)} console lines ({len(result.stdout.splitlines())} of them the JSON on stdout):")
    print(result.stderr)
    noisy = [line for line in console if any(p.search(line) for p in NOISE)]
    assert not noisy, "library noise on the console:\n" + "\n".join(noisy[:20])
    text = result.stderr
    for node in ("ImageExampleGen", "Transform", "Trainer", "Evaluator", "Pusher"):
        assert re.search(rf"^\[ftune\] [\d:]+ {node} started$", text, re.M), node
        assert re.search(rf"^\[ftune\] [\d:]+ {node} finished in \d+\.\d s$", text, re.M), node
    assert f"Phase 1 (frozen base) epoch 1/{PHASE1} [" in text
    assert re.search(rf"Phase 2 \(fine-tuning from layer 100\) epoch {PHASE2}/{PHASE2} \[#+\]", text)
    assert "s left in this phase" in text and "run summary" in text
    # What a person reads: stderr (stdout holds the JSON summary, which is for programs).
    assert len(result.stderr.splitlines()) < 80, f"{len(result.stderr.splitlines())} console lines"


@pytest.mark.slow
def test_run_json_is_the_summary_data(run):
    config, result, data = run
    assert data["push"]["pushed"] is True and data["push"]["version"] == "1"
    assert data["ingestion"]["accepted"] == 2 * SMALL_RUN_PER_CLASS and data["report"].endswith("index.html")
    assert data["gate"]["blessed"] is True and set(data["components_time"]) >= {"Trainer", "Pusher"}
    assert data["tflite"]["mode"] == "int8" and data["settings"]["push"]["tflite"] == "int8"
    # The text summary went to stderr, stdout holds the JSON alone.
    assert "run summary" in result.stderr and result.stdout.lstrip().startswith("{")


def test_quiet_stderr_filters_this_process_and_its_children(tmp_path):
    """The filter sits on file descriptor 2, so noise from child processes (Beam workers) is dropped too."""
    script = textwrap.dedent(
        """
        import subprocess, sys, warnings
        from pipeline.local_runner import QuietStderr
        NOISE = (
            "2026-12-02 15:56:39.742160: E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc:10575] "
            "Unable to register cuDNN factory",
            "W0000 00:00:1733150000.123456   12345 tf_tensorrt.cc:12] TF-TRT Warning: Could not find TensorRT",
            "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
            "/x/google/api_core/_python_version_support.py:246: FutureWarning: You are using Python 3.10",
            "  warnings.warn(message, FutureWarning)",
            "INFO:apache_beam.runners.worker.sdk_worker_main:Logging handler created.",
            "WARNING:tensorflow:From /x/writer.py:112: tf_record_iterator is deprecated and will be removed.",
            "Instructions for updating:",
            "Use eager execution and: ",
            "`tf.data.TFRecordDataset(path)`",
            "Exception ignored in: <function AtomicFunction.__del__ at 0x7fc2e1c2ce50>",
            "Traceback (most recent call last):",
            '  File "/x/atomic_function.py", line 291, in __del__',
            "TypeError: 'NoneType' object is not subscriptable",
            "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
            "fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, output_inference_type: FLOAT32",
        )
        with QuietStderr():
            for line in NOISE:
                print(line, file=sys.stderr, flush=True)
            print("[ftune] kept from the parent", file=sys.stderr, flush=True)
            print("WARNING:root:ImageExampleGen: quarantined /d/a.jpg: truncated", file=sys.stderr, flush=True)
            child = "import sys\\nfor l in %r: print(l, file=sys.stderr)\\nprint('kept from a child', file=sys.stderr)"
            subprocess.run([sys.executable, "-c", child % (NOISE,)], check=True)
            print("Traceback (most recent call last):", file=sys.stderr, flush=True)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "[ftune] kept from the parent",
        "WARNING:root:ImageExampleGen: quarantined /d/a.jpg: truncated",
        "kept from a child",
        "Traceback (most recent call last):",
    ]


def test_version_and_new_settings_are_checked():
    result = _ftune("--version", timeout=60)
    assert result.returncode == 0 and re.fullmatch(r"ftune \d+\.\d+\.\d+\S*\n", result.stdout)
    with pytest.raises(ConfigError, match="push.tflite must be one of off, float16, int8; got 'int4'"):
        load_config(None, ["push.tflite=int4"])
    with pytest.raises(ConfigError, match="eval.max_tflite_accuracy_drop must be in"):
        load_config(None, ["eval.max_tflite_accuracy_drop=2"])
    assert PipelineConfig().push.tflite == "off" and PipelineConfig().eval.max_tflite_accuracy_drop == 0.01


# --- ftune predict ---------------------------------------------------------------------------------------------


def _image_folder(config, tmp_path):
    """Four eval images plus four files that cannot be scored; returns (folder, {name: label id})."""
    folder = tmp_path / "photos"
    folder.mkdir()
    labels = {}
    for index, (name, encoded, label) in enumerate(_eval_images(config)[:4]):
        target = f"{index}_{os.path.basename(name)}"
        (folder / target).write_bytes(encoded)
        labels[target] = label
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)  # JPEG header, garbage
    (folder / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")  # truncated PNG
    return folder, labels


@pytest.mark.slow
def test_predict_scores_files_and_reports_bad_ones(run, tmp_path):
    import tensorflow as tf

    config, _, _ = run
    folder, labels = _image_folder(config, tmp_path)
    result = _ftune(
        "predict",
        str(folder),
        str(tmp_path / "missing.jpg"),
        "--pipeline-root",
        config.pipeline_root,
        "--format",
        "json",
        "--top-k",
        "2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {os.path.basename(r["path"]): r for r in json.loads(result.stdout)}
    assert set(rows) == set(labels) | {"notes.txt", "empty.png", "corrupt.jpg", "cut.png", "missing.jpg"}
    assert rows["missing.jpg"]["error"] == "no such file or folder"
    assert rows["empty.png"]["error"] == "empty file"
    assert "not a JPEG, PNG, GIF or BMP" in rows["notes.txt"]["error"]
    assert rows["corrupt.jpg"]["error"].startswith("cannot be decoded") and not rows["corrupt.jpg"]["ok"]
    assert rows["cut.png"]["error"].startswith("cannot be decoded")
    # The good ones: what the served version's serving_default (TF Serving's signature) answers for each file.
    _, loaded = _served(config)
    names = [n.decode() for n in loaded.class_names.numpy()]
    for name in labels:
        row = rows[name]
        assert row["ok"] and len(row["top"]) == 2
        expected = loaded.signatures["serving_default"](image_bytes=tf.constant([(folder / name).read_bytes()]))
        probabilities = expected["probabilities"].numpy()[0]
        assert row["top"][0]["class"] == names[int(np.argmax(probabilities))]
        assert abs(row["top"][0]["probability"] - float(probabilities.max())) < 1e-5
        assert abs(sum(e["probability"] for e in row["top"]) - 1.0) < 1e-4  # 2 classes, top 2
    table = _ftune("predict", str(folder), "--pipeline-root", config.pipeline_root, "--top-k", "1")
    assert table.returncode == 0 and "ERROR empty file" in table.stdout
    assert "4 images scored, 4 could not be read" in table.stderr


class _StandInTFServing(BaseHTTPRequestHandler):
    """Stands in for TF Serving's REST API (no TF Serving binary here): answers
    POST /v1/models/<name>[/versions/<n>]:predict from the same SavedModel, in TF Serving's row format, and with
    HTTP 400 {"error": ...} when an image does not decode, as TF Serving does."""

    loaded = None
    model_name = ""
    requests = []

    def do_POST(self):
        import tensorflow as tf

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        if not re.fullmatch(rf"/v1/models/{self.model_name}(/versions/1)?:predict", self.path):
            return self._answer(404, {"error": f"Servable not found for request: {self.path}"})
        images = [base64.b64decode(instance["b64"]) for instance in body["instances"]]
        try:
            outputs = self.loaded.signatures[body["signature_name"]](image_bytes=tf.constant(images))
        except tf.errors.InvalidArgumentError as exc:
            return self._answer(400, {"error": exc.message})
        rows = [
            {
                "probabilities": outputs["probabilities"].numpy()[i].tolist(),
                "class_ids": int(outputs["class_ids"].numpy()[i]),
                "class_names": outputs["class_names"].numpy()[i].decode(),
            }
            for i in range(len(images))
        ]
        self._answer(200, {"predictions": rows})

    def _answer(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_predict_server_sends_tf_serving_rest_requests(run, tmp_path):
    from serving import predict

    config, _, _ = run
    folder, labels = _image_folder(config, tmp_path)
    version_dir, loaded = _served(config)
    _StandInTFServing.loaded, _StandInTFServing.model_name = loaded, config.push.model_name
    _StandInTFServing.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandInTFServing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        files, _ = predict.expand_paths([str(folder)])
        local = predict.predict_files(files, predict.LocalPredictor(version_dir), top_k=2)
        rest = predict.predict_files(
            files, predict.RestPredictor(url, config.push.model_name, 1, predict.read_labels(version_dir)), top_k=2
        )
        assert (
            cli.main(["predict", str(folder / "*.jpg"), "--server", url, "--pipeline-root", config.pipeline_root]) == 0
        )
    finally:
        server.shutdown()
    assert [r["ok"] for r in rest] == [r["ok"] for r in local]
    for mine, theirs in zip(rest, local, strict=True):
        if mine["ok"]:
            assert [e["class"] for e in mine["top"]] == [e["class"] for e in theirs["top"]]
            assert np.allclose([e["probability"] for e in mine["top"]], [e["probability"] for e in theirs["top"]])
        else:
            assert mine["error"] == theirs["error"], mine["path"]
    path, body = _StandInTFServing.requests[0]
    assert path == f"/v1/models/{config.push.model_name}/versions/1:predict"
    assert body["signature_name"] == "serving_default" and set(body["instances"][0]) == {"b64"}
    assert _StandInTFServing.requests[-1][0] == f"/v1/models/{config.push.model_name}:predict"  # --server, no --version
    # The batch with the corrupt images was answered 400, then retried one image at a time.
    assert any(len(b["instances"]) > 1 for _, b in _StandInTFServing.requests)
    assert any(len(b["instances"]) == 1 for _, b in _StandInTFServing.requests)


def test_predict_without_a_served_model_is_an_error(tmp_path):
    result = _ftune("predict", str(tmp_path), "--pipeline-root", str(tmp_path / "root"), timeout=120)
    # Exit code 3: unusable input (pipeline/outcome.py).
    assert result.returncode == 3 and "no served model in" in result.stderr and "Traceback" not in result.stderr


# --- the report ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_has_per_class_metrics_mistakes_comparison_settings_and_tflite(run):
    config, _, data = run
    index = data["report"]
    with open(index, encoding="utf-8") as f:
        page = f.read()
    for heading in (
        "Per-class precision, recall and F1",
        "Most confident mistakes",
        "Least confident correct predictions",
        "Candidate versus served model, per class",
        "Input and settings",
        "TFLite",
    ):
        assert f"<h2>{heading}</h2>" in page, heading
    assert "macro average" in page and "push.tflite" in page and html.escape(config.pipeline_root) in page
    numbers = json.load(open(os.path.join(os.path.dirname(index), report.DATA_FILE)))["predictions"]
    matrix, names = numbers["confusion_matrix"], numbers["class_names"]
    for i, name in enumerate(names):
        m = numbers["per_class"][name]
        assert m["support"] == sum(matrix[i]) and abs(m["recall"] - matrix[i][i] / sum(matrix[i])) < 1e-9
        column = sum(row[i] for row in matrix)
        assert m["precision"] == (matrix[i][i] / column if column else None)
    mistakes, unsure = numbers["confident_mistakes"], numbers["unsure_correct"]
    assert all(e["true"] != e["predicted"] for e in mistakes) and all(e["true"] == e["predicted"] for e in unsure)
    assert [e["probability"] for e in mistakes] == sorted((e["probability"] for e in mistakes), reverse=True)
    assert [e["probability"] for e in unsure] == sorted(e["probability"] for e in unsure)
    assert len(mistakes) == min(report.RANKED_IMAGES, numbers["total"] - numbers["correct"])
    shown = report.RANKED_FIGURES if mistakes else (report.UNSURE_PNG,)
    for name in shown:
        assert f'<img src="{name}"' in page and os.path.getsize(os.path.join(os.path.dirname(index), name)) > 5000


def test_per_class_metrics_and_served_comparison_from_numbers():
    metrics = report.per_class_metrics([[8, 2, 0], [1, 9, 0], [0, 0, 0]], ["a", "b", "c"])
    assert metrics["per_class"]["a"] == {
        "precision": 8 / 9,
        "recall": 0.8,
        "f1": pytest.approx(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8)),
        "support": 10,
    }
    assert metrics["per_class"]["c"]["precision"] is None and metrics["per_class"]["c"]["support"] == 0
    assert metrics["macro"]["recall"] == pytest.approx((0.8 + 0.9) / 2)  # classes without eval images left out
    gate = {
        "metric": "binary_accuracy",
        "baseline_version": 3,
        "per_class_accuracy": {"cat": 0.9, "dog": 0.8},
        "baseline_per_class_accuracy": {"cat": 0.85, "dog": 0.82},
    }
    page = report._candidate_vs_served_html({"gate": gate, "missing": {}})
    assert "served version 3" in page and "+0.050" in page and "-0.020" in page


# --- TFLite ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tflite_is_gated_on_its_accuracy_against_the_saved_model(run):
    import tensorflow as tf

    from serving.tflite import TFLITE_FILE, predicted_classes, tflite_logits
    from trainer.features import decode_and_resize

    config, _, data = run
    lite = data["tflite"]
    assert lite["accepted"] and lite["accuracy_drop"] <= 0.25 and lite["eval_examples"] > 0
    pushed = os.path.join(config.serving_model_dir, "1", TFLITE_FILE)
    assert lite["pushed_path"] == pushed and os.path.getsize(pushed) == lite["size_bytes"]
    # Recomputed here, independently: the interpreter on the eval split's images as documented (RGB, bilinear to
    # S x S, float32 in [0, 255]), and the served SavedModel on the same files.
    evals = _eval_images(config)
    images = decode_and_resize(
        tf.constant([e[1] for e in evals]), config.trainer.image_size, config.data.max_image_pixels
    ).numpy()
    labels = np.array([e[2] for e in evals])
    with open(pushed, "rb") as f:
        lite_accuracy = float(np.mean(predicted_classes(tflite_logits(f.read(), images.astype(np.float32))) == labels))
    _, loaded = _served(config)
    served = loaded.signatures["serving_default"](image_bytes=tf.constant([e[1] for e in evals]))
    saved_accuracy = float(np.mean(served["class_ids"].numpy() == labels))
    assert lite_accuracy == pytest.approx(lite["tflite_accuracy"])
    assert saved_accuracy == pytest.approx(lite["saved_model_accuracy"])
    assert saved_accuracy - lite_accuracy <= config.eval.max_tflite_accuracy_drop
    assert "tflite (int8)" in " ".join(report.summary_lines(data))


def test_settings_section_lists_every_setting():
    page = report._settings_html({"settings": PipelineConfig().to_dict(), "ingestion": None})
    assert "<td>push.tflite</td><td>off</td>" in page and "<td>trainer.image_size</td><td>160</td>" in page


def test_component_lines_say_started_and_finished_with_seconds():
    import logging

    from pipeline.local_runner import _ProgressFilter

    progress = _ProgressFilter()

    def shown(message, *args):
        record = logging.LogRecord("absl", logging.INFO, __file__, 1, message, args, None)
        return record.getMessage() if progress.filter(record) else None

    assert shown("Component %s is running.", "Transform") == "Transform started"
    assert re.fullmatch(r"Transform finished in \d+\.\d s", shown("Component %s is finished.", "Transform"))
    assert shown("Component %s is running.", "StatisticsGen") == "StatisticsGen started"
    assert shown("A cached execution %d is used.", 7) is None
    assert shown("Component %s is finished.", "StatisticsGen").endswith(" s (cached)")
    assert shown("Transform: some internal detail") is None


def test_epochs_are_logged_with_their_phase_bar_and_time_left(caplog):
    import keras

    from trainer.fine_tune import PhaseProgress

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((8, 2), np.float32), np.zeros((8, 1), np.float32)
    with caplog.at_level("INFO", logger="trainer.fine_tune"):
        model.fit(
            x,
            y,
            epochs=5,
            initial_epoch=2,
            verbose=0,
            callbacks=[PhaseProgress("phase 2 (fine-tuning from layer 100)", 2, 5)],
        )
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "Phase 2 (fine-tuning from layer 100): 3 epoch(s), overall epochs 3-5"
    assert re.match(r"Phase 2 \(fine-tuning from layer 100\) epoch 1/3 \[#{6}\.{14}\] loss \d", lines[1])
    assert "s left in this phase" in lines[1] and lines[3].endswith("phase done") and "epoch 3/3 [####" in lines[3]


def test_json_mode_keeps_stdout_for_the_json_alone():
    """`ftune run --json`: Python prints, C-level writes to fd 1 and child processes' stdout all go to stderr."""
    script = textwrap.dedent(
        """
        import os, subprocess, sys
        from pipeline.local_runner import StdoutToStderr
        with StdoutToStderr():
            print("progress from python")
            os.write(1, b"from C++ straight to fd 1\\n")
            subprocess.run([sys.executable, "-c", "print('from a child process')"], check=True)
        print('{"json": true}')
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"json": True}
    assert result.stderr.splitlines() == ["progress from python", "from C++ straight to fd 1", "from a child process"]


@pytest.mark.parametrize("mode", ["float16", "int8"])
def test_tflite_gate_writes_the_model_only_within_the_allowed_drop(tmp_path, monkeypatch, mode):
    """The gate itself, on a tiny Keras model: accepted -> model.tflite beside saved_model.pb; a TFLite model that
    loses accuracy -> no file, and the record says why."""
    import keras
    import tensorflow as tf

    from serving import tflite

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(3)])
    images = np.random.RandomState(0).uniform(0, 255, (24, 8, 8, 3)).astype(np.float32)
    labels = np.argmax(model.predict(images, verbose=0), axis=1)  # the Keras model is right on every image
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)

    accepted = tmp_path / "accepted"
    # int8 may flip a close call among 24 random images: room for a few.
    record = tflite.export_tflite(model, mode, 8, data, data, 0.25, str(accepted))
    assert record["accepted"] and record["saved_model_accuracy"] == 1.0 and record["eval_examples"] == 24
    assert record["accuracy_drop"] == pytest.approx(1.0 - record["tflite_accuracy"])
    assert (accepted / tflite.TFLITE_FILE).stat().st_size == record["size_bytes"]
    assert tflite.read_record(str(accepted)) == record

    rejected = tmp_path / "rejected"
    original = tflite.tflite_logits
    monkeypatch.setattr(tflite, "tflite_logits", lambda flatbuffer, x: -original(flatbuffer, x))  # argmin: wrong
    record = tflite.export_tflite(model, mode, 8, data, data, 0.01, str(rejected))
    assert not record["accepted"] and record["accuracy_drop"] > 0.01 and record["file"] is None
    assert "more than eval.max_tflite_accuracy_drop=0.01" in record["reason"]
    assert not (rejected / tflite.TFLITE_FILE).exists() and tflite.read_record(str(rejected)) == record

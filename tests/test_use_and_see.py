"""Seeing the run: a clean console, the JSON summary, and the report's error analysis. (`ftune predict` is tested in
test_predict.py, TFLite in test_tflite.py; they read the same small run.)

The slow tests read the shared small run (conftest.small_run: one `ftune run --json` on 2 generated classes, 96 px,
a few epochs, Beam in multi-processing mode with 2 worker processes so that worker start-up noise would show, int8
TFLite on); the rest need no pipeline.
"""

import html
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import REPO, SMALL_RUN_PER_CLASS, ftune_cli
from conftest import SMALL_RUN_PHASE1 as PHASE1
from conftest import SMALL_RUN_PHASE2 as PHASE2

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


@pytest.fixture(scope="module")
def run(small_run):
    """(config, completed `ftune run --json` process, its JSON summary): the shared small run."""
    return small_run


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
def test_a_run_leaves_nothing_in_the_system_temporary_folder(run, small_run_tmpdir):
    # TFX builds a 49 MB source package of itself there for every Beam component and never removes it (about
    # 200 MB a run: it filled this machine's disk); the run's scratch folder (pipeline/scratch.py) takes it away.
    left = sorted(str(p.relative_to(small_run_tmpdir)) for p in small_run_tmpdir.rglob("*"))
    assert left == [], left[:20]


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


def test_version_prints_the_package_version():
    result = ftune_cli("--version", timeout=60)
    assert result.returncode == 0 and re.fullmatch(r"ftune \d+\.\d+\.\d+\S*\n", result.stdout)


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

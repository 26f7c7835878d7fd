"""Scheduled retraining through the real `ftune run` CLI on generated spans, one pipeline root for the module:

1. span 1 -> version 1 (cold: nothing served yet);
2. the same command again -> no training, no new version, "no new data; version 1 stays served", in < 30 s;
3. span 2 added -> warm start from version 1, version 2, spans 1-2 read;
4. a window of 1 (`data.spans=1`) -> only the newest span is read;
5. span 3 adds a class -> cold start, and the summary says why.
"""

import json
import os
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from conftest import REPO, SPAN_RUN_SETTINGS, pretrained_weights_path

from components import change_check as cc
from pipeline.configs import PipelineConfig, load_config
from pipeline.reporting.run_records import change_decision, component_timings, latest_artifact_uri, load_run
from pipeline.sample_data import generate_sample_data
from serving import model_versions, sidecars

pytestmark = pytest.mark.slow  # whole pipeline runs: `make test-fast` leaves them out

PER_CLASS = 20
COMMON = SPAN_RUN_SETTINGS + [
    "eval.max_accuracy_drop=0.2",
    # About 5 eval images per class: one image is a recall step of 0.2, so the default 0.1 allowed drop would make
    # the warm run's push depend on a single image. This module tests spans and warm starts, not the gate.
    "eval.max_class_recall_drop=0.45",
]


def ftune(command, root, data, *overrides, timeout=900):
    cmd = [sys.executable, "-m", "pipeline.cli", command, "--pipeline-root", str(root), "--data-root", str(data)]
    if command == "run":
        cmd += ["--weights", pretrained_weights_path()]
    else:
        cmd += ["--set", f"trainer.weights={pretrained_weights_path()}"]
    for item in list(COMMON) + list(overrides):
        cmd += ["--set", item]
    started = time.time()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    result.seconds = time.time() - started
    return result


def add_span(data, number, classes, seed):
    generate_sample_data(os.path.join(str(data), f"span-{number}"), classes=classes, per_class=PER_CLASS, seed=seed)


def ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def ingest_report(config):
    return sidecars.read_ingest_report(latest_artifact_uri(config, sidecars.EXAMPLE_GEN, "examples"))


def served_warm_start(config, version):
    return sidecars.read_warm_start(os.path.join(config.serving_model_dir, str(version)))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("retrain")


@pytest.fixture(scope="module")
def data(root):
    path = root / "images"
    add_span(path, 1, classes=3, seed=1)
    return path


@pytest.fixture(scope="module")
def config(root):
    return PipelineConfig(pipeline_root=str(root))


@pytest.fixture(scope="module")
def first(root, data, config):
    # The Pusher writes version 1's record (serving/model_record.py); the no-op check below reads only that record.
    return ok(ftune("run", root, data))


def test_first_span_trains_version_1_cold(first, config):
    assert model_versions.served_versions(config.serving_model_dir) == [1]
    assert ingest_report(config)["spans"] == ["span-1"]
    assert served_warm_start(config, 1) == {
        "from_version": None,
        "reason": "cold start: nothing is served yet",
    }
    assert "warm start: cold start: nothing is served yet" in first.stdout


def test_same_command_again_does_not_train(first, root, data, config):
    again = ok(ftune("run", root, data))
    assert "no new data; version 1 stays served" in again.stdout
    assert "Component Trainer" not in again.stdout + again.stderr
    assert model_versions.served_versions(config.serving_model_dir) == [1]
    assert again.seconds < 30, f"the no-op run took {again.seconds:.1f} s"
    # Only the change check ran; its decision is in MLMD with the reason the console printed.
    decision = change_decision(load_run(config))
    assert decision == {
        "changed": False,
        "refused": False,
        "reason": "no new data; version 1 stays served",
        "served_version": 1,
    }
    timings = component_timings(config)
    assert timings[sidecars.CHANGE_CHECK]["state"] in ("complete", "cached")
    # A changed setting is not "nothing changed", and the reason names it (the check's own function, no run).
    overrides = [f"pipeline_root={root}", f"data.data_root={data}", f"trainer.weights={pretrained_weights_path()}"]
    changed = load_config(None, overrides + COMMON + ["trainer.learning_rate=0.002"]).absolute_paths()
    check = cc.check(
        {
            cc.DATA_ROOT_KEY: str(data),
            cc.SPLIT_MODE_KEY: "auto",
            cc.TRAIN_DIR_KEY: changed.data.train_dir,
            cc.EVAL_DIR_KEY: changed.data.eval_dir,
            cc.SPANS_KEY: changed.data.spans,
            cc.SETTINGS_KEY: json.dumps(changed.to_dict()),
            cc.SERVING_MODEL_DIR_KEY: changed.serving_model_dir,
            cc.FORCE_KEY: 0,
        }
    )
    assert check.changed and "trainer.learning_rate (0.001 -> 0.002)" in check.reason


@pytest.fixture(scope="module")
def second(first, root, data):
    add_span(data, 2, classes=3, seed=2)
    return ok(ftune("run", root, data))


def test_new_span_warm_starts_version_2_from_version_1(second, config):
    assert model_versions.served_versions(config.serving_model_dir) == [1, 2]
    assert ingest_report(config)["spans"] == ["span-1", "span-2"]
    assert "spans span-1, span-2" in second.stdout
    assert served_warm_start(config, 2) == {
        "from_version": 1,
        "reason": "warm start from served version 1",
    }
    assert "warm start: warm start from served version 1" in second.stdout
    history = sidecars.read_history(latest_artifact_uri(config, sidecars.TRAINER, "model"))
    assert len(history["phase"]) <= 2  # warm_phase1_epochs + warm_phase2_epochs, not the cold 5 + 1


def test_window_of_one_reads_only_the_newest_span(second, root, data, config):
    ok(ftune("ingest", root, data, "data.spans=1"))
    report = ingest_report(config)
    assert report["spans"] == ["span-2"]
    assert report["scanned"] == report["accepted"] == 3 * PER_CLASS
    names = set()
    uri = latest_artifact_uri(config, "ImageExampleGen", "examples")
    for split in ("train", "eval"):
        files = tf.io.gfile.glob(os.path.join(uri, f"Split-{split}", "*"))
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
            names.add(tf.train.Example.FromString(record).features.feature["file_name"].bytes_list.value[0].decode())
    assert len(names) == 3 * PER_CLASS and all(name.startswith("span-2/") for name in names)


def test_span_adding_a_class_starts_cold_and_says_why(second, root, data, config):
    add_span(data, 3, classes=4, seed=3)
    third = ok(ftune("run", root, data))
    assert "cold start: the labels changed since served version 2 (classes added: star)" in third.stdout
    assert ingest_report(config)["class_names"] == ["circle", "square", "star", "triangle"]
    model = sidecars.serving_model_dir(latest_artifact_uri(config, sidecars.TRAINER, "model"))
    assert sidecars.read_warm_start(model)["from_version"] is None

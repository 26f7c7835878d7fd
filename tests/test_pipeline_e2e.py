"""The whole product on generated data, through the real `ftune run` CLI and LocalDagRunner:

1. a first run is SIGKILLed during the Trainer, then resumed: cached upstream reused, version 1 pushed;
2. a deliberately worse model (no training at all) is not blessed and the serving directory is unchanged;
3. a good run pushes version 2 and keeps version 1;
plus train/serve skew and the atomic push under a polling reader.
"""

import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import IN_MEMORY_BEAM, REPO, ftune_run_command, tree_digest

from pipeline import outcome
from pipeline.configs import PipelineConfig
from pipeline.reporting.run_records import component_timings, latest_artifact_uri
from serving import model_versions, sidecars

pytestmark = pytest.mark.slow  # whole pipeline runs: `make test-fast` leaves them out

CLASSES, PER_CLASS = 3, 30
COMMON = [
    f"data.sample_classes={CLASSES}",
    f"data.sample_per_class={PER_CLASS}",
    "data.split_mode=hash",  # sample data with class folders at the top, as the served-model test reads them
    "trainer.image_size=96",
    "trainer.batch_size=16",
    "trainer.phase1_epochs=6",
    "trainer.phase2_epochs=2",
    f"beam_args={json.dumps(IN_MEMORY_BEAM)}",
    "eval.accuracy_floor=0.7",
    # Every run here starts cold, so that "no training at all" really is a worse model (warm starts and the
    # retraining flow are tested in test_scheduled_retraining.py).
    "trainer.warm_start=off",
]


def ftune_run(root, *overrides, timeout=600):
    cmd = ftune_run_command(root, list(COMMON) + list(overrides))
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def versions(config):
    d = config.serving_model_dir
    return sorted(int(v) for v in os.listdir(d) if v.isdigit()) if os.path.isdir(d) else []


def eval_accuracy(config):
    import tensorflow_model_analysis as tfma

    uri = latest_artifact_uri(config, "Evaluator", "evaluation")
    for metrics in tfma.load_metrics(uri):
        if not metrics.slice_key.single_slice_keys:  # the overall slice
            for key in metrics.metric_keys_and_values:
                if key.key.name in ("sparse_categorical_accuracy", "binary_accuracy") and not key.key.is_diff:
                    if not key.key.model_name or key.key.model_name == "candidate":
                        return key.value.double_value.value
    raise AssertionError(f"no accuracy in {uri}")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def config(root):
    return PipelineConfig(pipeline_root=str(root))


@pytest.fixture(scope="module")
def resumed_first_run(root, config):
    """Run 1 killed with SIGKILL once the Trainer starts, then the same command again."""
    cmd = ftune_run_command(root, COMMON)
    process = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    killed_during_trainer = False
    deadline = time.time() + 600
    for line in process.stdout:
        if line.rstrip().endswith(" Trainer started"):  # the console line for TFX's "Component Trainer is running."
            time.sleep(3)  # let it get into training
            os.killpg(process.pid, signal.SIGKILL)
            killed_during_trainer = True
            break
        assert time.time() < deadline, "the first run never reached the Trainer"
    process.wait(timeout=60)
    assert killed_during_trainer, "the run finished before the Trainer could be killed"
    assert process.returncode == -signal.SIGKILL
    killed_timings = component_timings(config)
    assert versions(config) == []

    resumed = ftune_run(root)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return killed_timings, component_timings(config), resumed.stdout


def test_resume_after_sigkill_reuses_upstream_and_pushes_once(resumed_first_run, config):
    killed, resumed, stdout = resumed_first_run
    assert killed["ImageExampleGen"]["state"] == "complete" and killed["Transform"]["state"] == "complete"
    assert resumed["ImageExampleGen"]["state"] == "cached"
    assert resumed["Transform"]["state"] == "cached"
    assert resumed["Trainer"]["state"] == "complete"
    assert versions(config) == [1]
    # The console's last word names where version 1 went (not just that something was pushed).
    assert f"push: {os.path.join(config.serving_model_dir, '1')}" in stdout, stdout[-2000:]


def test_first_model_is_well_above_chance(resumed_first_run, config):
    assert eval_accuracy(config) > 0.8  # 3 classes: chance is 0.33


@pytest.fixture(scope="module")
def worse_run(resumed_first_run, root, config):
    before = tree_digest(config.serving_dir)
    # No training at all: a random head on the frozen base.
    result = ftune_run(root, "trainer.phase1_epochs=0", "trainer.phase2_epochs=0")
    assert result.returncode == outcome.EXIT_GATE_REFUSED, result.stdout[-3000:] + result.stderr[-3000:]
    return before, result.stdout


def test_worse_model_is_not_blessed_and_serving_dir_is_unchanged(worse_run, config):
    before, stdout = worse_run
    blessing = latest_artifact_uri(config, "Evaluator", "blessing")
    assert os.path.exists(os.path.join(blessing, "NOT_BLESSED"))
    assert tree_digest(config.serving_dir, skip={sidecars.REFUSED_ATTEMPT_FILE}) == before
    assert versions(config) == [1]
    assert "not blessed" in stdout.lower()


@pytest.fixture(scope="module")
def good_run(worse_run, root, config):
    # A different seed gives a different (and still good) model; max_accuracy_drop leaves room for a tie-ish
    # result on 18 eval images.
    result = ftune_run(root, "trainer.seed=7", "eval.max_accuracy_drop=0.1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_good_run_pushes_version_2_and_keeps_version_1(good_run, config):
    assert versions(config) == [1, 2]
    for version in (1, 2):
        assert os.path.isfile(os.path.join(config.serving_model_dir, str(version), "saved_model.pb"))


def test_served_model_answers_image_bytes_with_class_names(good_run, config):
    model = tf.saved_model.load(os.path.join(config.serving_model_dir, "2"))
    sample_root = config.sample_data_dir
    classes = sorted(d for d in os.listdir(sample_root) if not d.startswith("."))
    files = [os.path.join(sample_root, c, sorted(os.listdir(os.path.join(sample_root, c)))[0]) for c in classes]
    images = [open(f, "rb").read() for f in files]
    outputs = model.signatures["serving_default"](image_bytes=tf.constant(images))
    assert outputs["probabilities"].shape == (len(classes), CLASSES)
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert set(n.decode() for n in outputs["class_names"].numpy()) <= set(classes)
    warmup = os.path.join(config.serving_model_dir, "2", "assets.extra", "tf_serving_warmup_requests")
    assert os.path.getsize(warmup) > 0


def test_no_train_serve_skew(good_run, config):
    """For the same file: exported serving_default(bytes) == in-training Keras model on Transform's output."""
    import keras
    import tensorflow_transform as tft

    from trainer.features import parse_images

    model_uri = latest_artifact_uri(config, "Trainer", "model")
    run_uri = latest_artifact_uri(config, "Trainer", "model_run")
    transformed_uri = latest_artifact_uri(config, "Transform", "transformed_examples")
    keras_model = keras.models.load_model(os.path.join(run_uri, sidecars.KERAS_MODEL_FILE))
    tft_output = tft.TFTransformOutput(latest_artifact_uri(config, "Transform", "transform_graph"))
    spec = tft_output.transformed_feature_spec()
    files = tf.io.gfile.glob(os.path.join(transformed_uri, "Split-eval", "*"))
    records = list(tf.data.TFRecordDataset(files, compression_type="GZIP").take(8).as_numpy_iterator())
    features = tf.io.parse_example(records, spec)
    images = parse_images(features["image_raw"], 96)
    in_training = tf.nn.softmax(keras_model(images, training=False), axis=-1).numpy()

    exported = tf.saved_model.load(sidecars.serving_model_dir(model_uri))
    raw = [
        open(os.path.join(config.sample_data_dir, name.decode()), "rb").read() for name in features["file_name"].numpy()
    ]
    served = exported.signatures["serving_default"](image_bytes=tf.constant(raw))["probabilities"].numpy()
    np.testing.assert_allclose(served, in_training, atol=1e-5)


# --- atomic push -----------------------------------------------------------------------------------------------


def test_polling_reader_only_sees_complete_versions(tmp_path):
    source = tmp_path / "model"
    (source / "variables").mkdir(parents=True)
    files = {
        "saved_model.pb": 3_000_000,
        "variables/variables.data-00000-of-00001": 40_000_000,
        "variables/variables.index": 200_000,
        "fingerprint.pb": 100,
    }
    rng = np.random.default_rng(0)
    for name, size in files.items():
        (source / name).write_bytes(rng.bytes(size))
    serving = tmp_path / "serving" / "m"
    seen_incomplete, polls = [], [0]
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            polls[0] += 1
            for name in os.listdir(serving) if serving.exists() else []:
                if not name.isdigit():
                    continue  # TF Serving ignores non-integer folder names
                for rel, size in files.items():
                    path = serving / name / rel
                    if not path.exists() or path.stat().st_size != size:
                        seen_incomplete.append((name, rel))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        pushed = [model_versions.push_atomically(str(source), str(serving)) for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    assert pushed == [1, 2, 3]
    assert polls[0] > 10, "the reader must have polled during the pushes"
    assert seen_incomplete == []
    assert sorted(os.listdir(serving)) == ["1", "2", "3"]  # no staging leftovers
    assert model_versions.prune_versions(str(serving), keep=2) == [1]
    assert sorted(os.listdir(serving)) == ["2", "3"]

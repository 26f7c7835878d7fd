"""The loop through the real `ftune` CLI and LocalDagRunner on generated pre-split data, in one pipeline root:

1. a first run is SIGKILLed during the Trainer, then the same command again: the cached upstream is reused and
   version 1 is pushed with its record (exit 0), its model well above chance;
2. a run whose training images of one class ("square") were relabelled into another is refused by the per-class
   gate although overall accuracy passes: exit EXIT_GATE_REFUSED, the blessing says NOT_BLESSED, the summary names
   the class with both numbers, every served version is byte-identical and the refused attempt is recorded beside
   them; the same command again does not train (the change check remembers the refusal) and `ftune versions`
   shows it;
3. a run on data with an extra class is compared on floors only (the served model has other labels), says so,
   and pushes version 2 beside version 1; version 2 answers image bytes with class names, and its serving
   signature gives what the Keras model gave in training (no train/serve skew);
4. `ftune rollback --to 1` publishes version 3 holding version 1's model with a record saying so; `ftune versions
   --json` lists every version with its record;
plus the exit codes for invalid settings and unusable input.

(Until 2026-12-06 steps 1-3's resume, "worse model not blessed" and "good run pushes version 2" were a module of
their own, test_pipeline_e2e.py, with three more whole runs; its assertions now read these runs.)
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import IN_MEMORY_BEAM, REPO, pretrained_weights_path, tree_digest

from components.image_example_gen import input_fingerprint, make_input_config
from pipeline import outcome
from pipeline.configs import PipelineConfig
from pipeline.reporting.run_records import component_timings, latest_artifact_uri
from pipeline.sample_data import SHAPE_NAMES, generate_sample_data
from serving import sidecars

pytestmark = pytest.mark.slow  # whole pipeline runs

TRAIN_PER_CLASS, EVAL_PER_CLASS = 30, 10
RELABELLED, INTO = "square", "circle"
KEPT_OF_RELABELLED = 2  # the class keeps a couple of training images, so the label vocabulary is unchanged
COMMON = [
    "trainer.image_size=96",
    "trainer.batch_size=16",
    "trainer.phase1_epochs=6",
    "trainer.phase2_epochs=1",
    f"beam_args={json.dumps(IN_MEMORY_BEAM)}",
    # Every run trains from the pretrained base: this module tests the gate on what the data teaches. (A warm
    # start from version 1 with 2+3 epochs keeps most of v1's 'square' recall on relabelled data and is blessed;
    # warm starts are tested in test_scheduled_retraining.py.)
    "trainer.warm_start=off",
    # The phase-2 rate the recall thresholds below were measured at (the default went 0.1 -> 0.3 for issue 33: with
    # one phase-2 epoch at 0.3 the relabelled class kept its recall from its 2 weighted images and `circle` fell).
    "trainer.fine_tune_lr_factor=0.1",
    # Overall thresholds loose enough that only the per-class gate can refuse the relabelled run.
    "eval.accuracy_floor=0.5",
    "eval.max_accuracy_drop=0.4",
    # Measured on this data: the first model's weakest class recall was 0.5, the relabelled class 0.0 to 0.7.
    "eval.class_recall_floor=0.3",
    "eval.max_class_recall_drop=0.2",
    f"eval.min_class_examples={EVAL_PER_CLASS}",
]


def ftune(*args, timeout=600):
    cmd = [sys.executable, "-m", "pipeline.cli", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def ftune_run_args(root, data_root, *overrides, flags=()):
    args = ["run", "--pipeline-root", str(root), "--data-root", str(data_root), "--weights", pretrained_weights_path()]
    args += list(flags)
    for item in COMMON + list(overrides):
        args += ["--set", item]
    return args


def ftune_run(root, data_root, *overrides, flags=()):
    return ftune(*ftune_run_args(root, data_root, *overrides, flags=flags))


def killed_when_the_trainer_starts(args):
    """`ftune ARGS`, SIGKILLed (the whole process group) a few seconds after the console says the Trainer started."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 600
    for line in process.stdout:
        if line.rstrip().endswith(" Trainer started"):  # the console line for TFX's "Component Trainer is running."
            time.sleep(3)  # let it get into training
            os.killpg(process.pid, signal.SIGKILL)
            break
        assert time.time() < deadline, "the first run never reached the Trainer"
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before the Trainer could be killed"


def eval_accuracy(config):
    """The candidate's overall accuracy as TFMA computed it (the Evaluator's metrics, not a second computation)."""
    import tensorflow_model_analysis as tfma

    uri = latest_artifact_uri(config, sidecars.EVALUATOR, "evaluation")
    for metrics in tfma.load_metrics(uri):
        if not metrics.slice_key.single_slice_keys:  # the overall slice
            for key in metrics.metric_keys_and_values:
                if key.key.name in ("sparse_categorical_accuracy", "binary_accuracy") and not key.key.is_diff:
                    if not key.key.model_name or key.key.model_name == "candidate":
                        return key.value.double_value.value
    raise AssertionError(f"no accuracy in {uri}")


def presplit_data(path, classes):
    generate_sample_data(str(path / "train"), classes=classes, per_class=TRAIN_PER_CLASS, seed=0)
    generate_sample_data(str(path / "validation"), classes=classes, per_class=EVAL_PER_CLASS, seed=1)
    return path


def record_of(config, version):
    return sidecars.read_model_record(os.path.join(config.serving_model_dir, str(version)))


def served(config):
    d = config.serving_model_dir
    return sorted(int(v) for v in os.listdir(d) if v.isdigit()) if os.path.isdir(d) else []


def explain(result):
    return result.stdout[-4000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("governance")


@pytest.fixture(scope="module")
def config(root):
    return PipelineConfig(pipeline_root=str(root / "pipeline")).absolute_paths()


@pytest.fixture(scope="module")
def first_run(root, config):
    """Run 1 killed with SIGKILL once the Trainer starts, then the same command again: (data, the resumed run,
    component timings after the kill, component timings after the resumed run)."""
    data = presplit_data(root / "data3", classes=3)
    killed_when_the_trainer_starts(ftune_run_args(config.pipeline_root, data))
    killed_timings = component_timings(config)
    assert served(config) == []
    result = ftune_run(config.pipeline_root, data)
    assert result.returncode == outcome.EXIT_OK, explain(result)
    return data, result, killed_timings, component_timings(config)


def test_resume_after_sigkill_reuses_upstream_and_pushes_once(first_run, config):
    _, result, killed, resumed = first_run
    assert killed[sidecars.EXAMPLE_GEN]["state"] == "complete" and killed["Transform"]["state"] == "complete"
    assert resumed[sidecars.EXAMPLE_GEN]["state"] == "cached"
    assert resumed["Transform"]["state"] == "cached"
    assert resumed[sidecars.TRAINER]["state"] == "complete"
    assert served(config) == [1]
    # The console's last word names where version 1 went (not just that something was pushed).
    assert f"push: {os.path.join(config.serving_model_dir, '1')}" in result.stdout, result.stdout[-2000:]


def test_first_model_is_well_above_chance(first_run, config):
    assert eval_accuracy(config) > 0.8  # 3 classes: chance is 0.33


def test_first_run_pushes_version_1_with_its_record(first_run, config):
    data, result, _, _ = first_run
    assert served(config) == [1]
    record = record_of(config, 1)
    assert record["version"] == 1 and record["kind"] == "trained" and record["rollback_of"] is None
    assert record["labels"] == sorted(SHAPE_NAMES[:3])
    assert record["data"]["roots"] == [str(data)]
    presplit = make_input_config("presplit", "train", "validation")
    assert record["data"]["fingerprint"] == input_fingerprint(str(data), presplit, spans=[])
    assert record["data"]["images_per_class"]["eval"] == {c: EVAL_PER_CLASS for c in SHAPE_NAMES[:3]}
    assert record["settings"]["eval"]["class_recall_floor"] == 0.3
    assert record["settings"]["trainer"]["phase1_epochs"] == 6 and record["settings"]["data"]["data_root"] == str(data)
    metrics = record["metrics"]
    assert metrics["accuracy"] > 0.7 and set(metrics["recall_per_class"]) == set(SHAPE_NAMES[:3])
    assert metrics["macro_recall"] == pytest.approx(sum(metrics["recall_per_class"].values()) / 3)
    assert metrics["gated_classes"] == sorted(SHAPE_NAMES[:3])
    assert record["gate"]["baseline_version"] is None and record["gate"]["blessed"] is True
    assert "no model served yet" in record["gate"]["baseline_note"]
    assert record["started_at"] <= record["ended_at"] and record["pipeline_run"] and record["code_version"]
    assert "outcome: pushed (exit code 0)" in result.stdout


@pytest.fixture(scope="module")
def relabelled_run(first_run, root, config):
    data = root / "relabelled"
    shutil.copytree(first_run[0], data)
    moved = sorted((data / "train" / RELABELLED).iterdir())[KEPT_OF_RELABELLED:]
    for path in moved:
        path.rename(data / "train" / INTO / path.name)
    before = tree_digest(config.serving_dir)
    result = ftune_run(config.pipeline_root, data)
    return before, result


def test_relabelled_class_is_refused_by_name_and_nothing_changes(relabelled_run, config):
    before, result = relabelled_run
    assert result.returncode == outcome.EXIT_GATE_REFUSED, explain(result)
    assert tree_digest(config.serving_dir, skip={sidecars.REFUSED_ATTEMPT_FILE}) == before and served(config) == [1]
    assert os.path.exists(os.path.join(latest_artifact_uri(config, sidecars.EVALUATOR, "blessing"), "NOT_BLESSED"))
    gate_line = next(line for line in result.stdout.splitlines() if "gate: NOT BLESSED" in line)
    gate = sidecars.read_gate(latest_artifact_uri(config, sidecars.EVALUATOR, "evaluation"))
    assert RELABELLED in {f["class"] for f in gate["failures"]}, gate["failures"]
    assert all(f["class"] for f in gate["failures"])  # the overall thresholds alone would have passed
    assert gate["accuracy"] >= 0.5 and gate["change_thresholds_used"]
    # Refused on the relabelled class: below the floor (0.3), or more than max_class_recall_drop (0.2) below the
    # served model's recall on it. Which of the two fires depends on the training's random path: with 2 training
    # images left, and class weighting lifting them, its recall has come out anywhere from 0.0 to 0.7.
    recall = gate["classes"][RELABELLED]
    assert recall["baseline_recall"] >= 0.3 and recall["recall"] < recall["baseline_recall"] - 0.2, recall
    # The summary names the metric, the class and both numbers (recall and the floor, or recall and served recall).
    if recall["recall"] < 0.3:
        assert f"class '{RELABELLED}' recall {recall['recall']:.3f} is below the floor 0.300" in gate_line
    else:
        served_text = f"vs {recall['baseline_recall']:.3f} on the served model (version 1)"
        assert f"class '{RELABELLED}' recall {recall['recall']:.3f} {served_text}" in gate_line
    for failure in gate["failures"]:
        assert failure["text"] in gate_line
        if failure["kind"] == "change":
            assert f"vs {failure['baseline']:.3f} on the served model (version 1)" in failure["text"]
    assert "outcome: gate_refused (exit code 4)" in result.stdout
    # The refusal is remembered beside the versions, with the checks that failed, for the next run's change check.
    refused = sidecars.read_refused_attempt(config.serving_model_dir)
    assert refused["served_version"] == 1 and refused["failed_checks"] == [f["text"] for f in gate["failures"]]


@pytest.fixture(scope="module")
def refused_again(relabelled_run, root, config):
    """The same relabelled data, the same command: what a weekly schedule does until someone fixes the data."""
    before = tree_digest(config.serving_dir)
    started = time.time()
    result = ftune_run(config.pipeline_root, root / "relabelled", flags=["--json"])
    return before, result, time.time() - started


def test_a_refused_batch_is_not_retrained(refused_again, config):
    before, result, seconds = refused_again
    assert result.returncode == outcome.EXIT_OK, explain(result)
    data = json.loads(result.stdout)
    assert data["outcome"] == {"status": outcome.STILL_REFUSED, "exit_code": 0, "version": 1}
    refused = sidecars.read_refused_attempt(config.serving_model_dir)
    assert data["message"] == (
        f"no new data since the refused run of {refused['time']}: {refused['failed_checks'][0]}"
        + (f" (and {len(refused['failed_checks']) - 1} more)" if len(refused["failed_checks"]) > 1 else "")
        + "; version 1 stays served"
    )
    assert "Trainer skipped (nothing to do)" in result.stderr and "Trainer finished" not in result.stderr
    assert tree_digest(config.serving_dir) == before
    assert seconds < 30, f"the no-op run took {seconds:.1f} s"
    # `ftune versions` shows the last refusal.
    versions = ftune("versions", "--pipeline-root", str(config.pipeline_root))
    assert versions.returncode == 0 and "last refused" in versions.stdout and RELABELLED in versions.stdout


@pytest.fixture(scope="module")
def extra_class_run(refused_again, root, config):
    data = presplit_data(root / "data4", classes=4)
    return data, ftune_run(config.pipeline_root, data)


def test_extra_class_is_compared_on_floors_only_and_says_so(extra_class_run, config):
    _, result = extra_class_run
    assert result.returncode == outcome.EXIT_OK, explain(result)
    assert served(config) == [1, 2]
    for version in (1, 2):
        assert os.path.isfile(os.path.join(config.serving_model_dir, str(version), "saved_model.pb"))
    record = record_of(config, 2)
    assert record["labels"] == sorted(SHAPE_NAMES[:4])
    assert record["gate"]["change_thresholds_used"] is False and record["gate"]["baseline_version"] == 1
    assert record["gate"]["thresholds"]["max_class_recall_drop"] is None
    assert "different label vocabulary" in record["gate"]["baseline_note"]
    assert "floors only" in result.stdout and "different label vocabulary" in result.stdout


def test_served_model_answers_image_bytes_with_class_names(extra_class_run, config):
    import tensorflow as tf

    data, _ = extra_class_run
    model = tf.saved_model.load(os.path.join(config.serving_model_dir, "2"))
    classes = sorted(SHAPE_NAMES[:4])
    files = [sorted((data / "validation" / c).iterdir())[0] for c in classes]
    outputs = model.signatures["serving_default"](image_bytes=tf.constant([f.read_bytes() for f in files]))
    assert outputs["probabilities"].shape == (len(classes), len(classes))
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert set(n.decode() for n in outputs["class_names"].numpy()) <= set(classes)
    warmup = os.path.join(config.serving_model_dir, "2", "assets.extra", "tf_serving_warmup_requests")
    assert os.path.getsize(warmup) > 0


def test_no_train_serve_skew(extra_class_run, config):
    """For the same file: exported serving_default(bytes) == in-training Keras model on Transform's output."""
    import keras
    import tensorflow as tf
    import tensorflow_transform as tft

    import trainer.model  # noqa: F401  (registers the custom layers that load_model needs)
    from trainer.features import parse_images

    data, _ = extra_class_run
    model_uri = latest_artifact_uri(config, sidecars.TRAINER, "model")
    run_uri = latest_artifact_uri(config, sidecars.TRAINER, "model_run")
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
    raw = [(data / name.decode()).read_bytes() for name in features["file_name"].numpy()]
    served_probabilities = exported.signatures["serving_default"](image_bytes=tf.constant(raw))["probabilities"]
    np.testing.assert_allclose(served_probabilities.numpy(), in_training, atol=1e-5)


@pytest.fixture(scope="module")
def rolled_back(extra_class_run, config):
    return ftune("rollback", "--pipeline-root", config.pipeline_root, "--to", "1")


def test_rollback_republishes_version_1_as_version_3(rolled_back, config):
    assert rolled_back.returncode == outcome.EXIT_OK, explain(rolled_back)
    assert served(config) == [1, 2, 3]
    base = config.serving_model_dir
    for name in ("saved_model.pb", "fingerprint.pb", os.path.join("variables", "variables.index")):
        with open(os.path.join(base, "1", name), "rb") as a, open(os.path.join(base, "3", name), "rb") as b:
            assert a.read() == b.read(), name
    record, original = record_of(config, 3), record_of(config, 1)
    assert record["version"] == 3 and record["kind"] == "rollback" and record["rollback_of"] == 1
    assert record["labels"] == original["labels"] and record["data"] == original["data"]
    assert record["pushed_at"] >= original["pushed_at"]
    assert not [n for n in os.listdir(base) if n.startswith(".")]  # no staging leftovers


def test_versions_json_lists_every_version_with_its_record(rolled_back, config):
    result = ftune("versions", "--pipeline-root", config.pipeline_root, "--json")
    assert result.returncode == outcome.EXIT_OK, explain(result)
    listed = json.loads(result.stdout)["versions"]
    assert [v["version"] for v in listed] == [1, 2, 3]
    assert [v["served"] for v in listed] == [False, False, True]
    assert [v["record"]["kind"] for v in listed] == ["trained", "trained", "rollback"]
    for item in listed:
        assert item["record"] == record_of(config, item["version"])
    table = ftune("versions", "--pipeline-root", config.pipeline_root)
    assert table.returncode == outcome.EXIT_OK
    last = table.stdout.strip().splitlines()[-1]
    assert last.startswith("3 ") and "rollback of 1" in last and "TF Serving serves this" in last


def test_exit_codes_for_invalid_settings_and_unusable_input(tmp_path):
    bad = ftune("run", "--pipeline-root", str(tmp_path / "r"), "--set", "eval.class_recall_floor=2")
    assert bad.returncode == outcome.EXIT_INVALID_SETTINGS, explain(bad)
    assert "eval.class_recall_floor must be in [0, 1]" in bad.stderr
    one_class = tmp_path / "one_class" / "circle"
    generate_sample_data(str(tmp_path / "one_class"), classes=2, per_class=2, seed=0)
    shutil.rmtree(tmp_path / "one_class" / SHAPE_NAMES[1])
    assert one_class.is_dir()
    unusable = ftune_run(tmp_path / "r", tmp_path / "one_class")
    assert unusable.returncode == outcome.EXIT_UNUSABLE_INPUT, explain(unusable)
    assert "unusable data" in unusable.stderr and "at least 2" in unusable.stderr

"""The Evaluator gate's executor (the same Do the pipeline runs, locally and on Kubeflow) on hand-made models.

The "models" are SavedModels whose `serving_tf_example` signature predicts class mapping[label] for each example,
so each class's recall is known exactly: the per-class floor, the per-class no-regression threshold against the
served model, classes with too few eval images reported not gated, and a served model with another label
vocabulary used for floors only. TFMA runs for real (in-memory Beam); no training.
"""

import json
import os

import pytest
import tensorflow as tf
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from components import evaluator_gate
from components.served_model_baseline import SERVED_VERSION_PROPERTY
from serving import sidecars

LABELS = ["a", "b", "c"]
EVAL_COUNTS = {"a": 10, "b": 10, "c": 3}  # "c" has fewer than MIN_CLASS_EXAMPLES: reported, not gated
MIN_CLASS_EXAMPLES = 5


def write_examples(root):
    examples = standard_artifacts.Examples()
    examples.uri = str(root / "examples")
    examples.split_names = artifact_utils.encode_split_names(["eval"])
    os.makedirs(os.path.join(examples.uri, "Split-eval"))
    path = os.path.join(examples.uri, "Split-eval", "data_tfrecord-00000-of-00001.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for label, name in enumerate(LABELS):
            for i in range(EVAL_COUNTS[name]):
                feature = {
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                    "class_name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
                    "file_name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"{name}/{i}.jpg".encode()])),
                }
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    sidecars.write_ingest_report(examples.uri, {"accepted_per_split": {"eval": EVAL_COUNTS}, "class_names": LABELS})
    return examples


class MappedModel(tf.Module):
    """Predicts class mapping[label] with probability 1, or, per example index, a wrong class (see `wrong`)."""

    def __init__(self, mapping, wrong_every=None):
        super().__init__()
        self.mapping = tf.constant(mapping, tf.int64)
        self.depth = len(mapping)
        self.wrong_every = wrong_every  # (class id, n): every n-th example of that class goes to class 0

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, examples):
        parsed = tf.io.parse_example(
            examples,
            {"label": tf.io.FixedLenFeature([1], tf.int64), "file_name": tf.io.FixedLenFeature([], tf.string)},
        )
        label = tf.squeeze(parsed["label"], 1)
        predicted = tf.gather(self.mapping, label)
        if self.wrong_every is not None:
            cls, n = self.wrong_every
            index = tf.strings.to_number(
                tf.strings.regex_replace(tf.strings.split(parsed["file_name"], "/").to_tensor()[:, 1], r"\.jpg", ""),
                tf.int64,
            )
            predicted = tf.where((label == cls) & (index % n == 0), tf.zeros_like(predicted), predicted)
        return {"probabilities": tf.one_hot(predicted, self.depth)}


def save_model(uri, labels, mapping, wrong_every=None, served_version=None):
    artifact = standard_artifacts.Model()
    artifact.uri = str(uri)
    export = sidecars.serving_model_dir(artifact.uri)
    module = MappedModel(mapping, wrong_every)
    tf.saved_model.save(module, export, signatures={evaluator_gate.TF_EXAMPLE_SIGNATURE: module.serve})
    sidecars.write_labels(sidecars.assets_extra(export), labels)
    if served_version is not None:
        artifact.set_int_custom_property(SERVED_VERSION_PROPERTY, served_version)
    return artifact


def no_baseline(root):
    artifact = standard_artifacts.Model()
    artifact.uri = str(root / "baseline_none")
    os.makedirs(artifact.uri)
    artifact.set_int_custom_property(SERVED_VERSION_PROPERTY, -1)
    return artifact


def run_gate(root, candidate, baseline):
    evaluation, blessing = standard_artifacts.ModelEvaluation(), standard_artifacts.ModelBlessing()
    evaluation.uri, blessing.uri = str(root / "evaluation"), str(root / "blessing")
    os.makedirs(evaluation.uri)
    os.makedirs(blessing.uri)
    eval_config = evaluator_gate.make_eval_config(
        accuracy_floor=0.5, max_accuracy_drop=0.5, class_recall_floor=0.5, max_class_recall_drop=0.1
    )
    exec_properties = {
        standard_component_specs.EVAL_CONFIG_KEY: proto_utils.proto_to_json(eval_config),
        standard_component_specs.EXAMPLE_SPLITS_KEY: json.dumps(["eval"]),
        evaluator_gate.MIN_CLASS_EXAMPLES_KEY: MIN_CLASS_EXAMPLES,
    }
    inputs = {
        standard_component_specs.EXAMPLES_KEY: [write_examples(root)],
        standard_component_specs.MODEL_KEY: [candidate],
        standard_component_specs.BASELINE_MODEL_KEY: [baseline],
    }
    context = base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=["--direct_running_mode=in_memory"], tmp_dir=str(root / "tmp"), unique_id="1"
    )
    evaluator_gate.Executor(context).Do(
        inputs,
        {standard_component_specs.EVALUATION_KEY: [evaluation], standard_component_specs.BLESSING_KEY: [blessing]},
        exec_properties,
    )
    summary = sidecars.read_gate(blessing.uri)
    assert summary == sidecars.read_gate(evaluation.uri)
    assert os.path.exists(os.path.join(blessing.uri, "BLESSED" if summary["blessed"] else "NOT_BLESSED"))
    return summary


def test_a_broken_class_is_refused_by_its_floor_and_a_small_class_is_only_reported(tmp_path):
    # Class b is predicted as a (recall 0), class c (3 eval images) as a too; overall accuracy 10/23.
    candidate = save_model(tmp_path / "candidate", LABELS, [0, 0, 0])
    gate = run_gate(tmp_path, candidate, no_baseline(tmp_path))
    assert gate["blessed"] is False
    assert gate["classes"]["b"] == {"recall": 0.0, "baseline_recall": None, "examples": 10, "gated": True}
    assert gate["classes"]["c"]["gated"] is False and gate["classes"]["c"]["recall"] == 0.0
    assert gate["macro_recall"] == pytest.approx(1 / 3)
    texts = [f["text"] for f in gate["failures"]]
    assert "class 'b' recall 0.000 is below the floor 0.500" in texts
    assert "overall accuracy 0.435 is below the floor 0.500" in texts
    assert not any("'c'" in t for t in texts)  # reported, not gated
    assert gate["decision"].startswith("NOT BLESSED: ") and "class 'b' recall 0.000" in gate["decision"]
    assert gate["change_thresholds_used"] is False and "no model served yet" in gate["baseline_note"]
    assert any("reported, not gated" in line and "c" in line for line in gate["checked"])


def test_a_class_that_regresses_against_the_served_model_is_refused_with_both_numbers(tmp_path):
    served = save_model(tmp_path / "served", LABELS, [0, 1, 2], served_version=4)
    # Every other b image goes to a: recall 0.5, at the floor, but 0.5 below the served model's 1.0.
    candidate = save_model(tmp_path / "candidate", LABELS, [0, 1, 2], wrong_every=(1, 2))
    gate = run_gate(tmp_path, candidate, served)
    assert gate["blessed"] is False and gate["change_thresholds_used"] is True
    assert gate["classes"]["b"]["recall"] == pytest.approx(0.5) and gate["classes"]["b"]["baseline_recall"] == 1.0
    (failure,) = gate["failures"]
    assert failure["class"] == "b" and failure["kind"] == "change" and failure["metric"] == "recall"
    assert failure["text"] == (
        "class 'b' recall 0.500 vs 1.000 on the served model (version 4): changed by -0.500, at most 0.100 drop allowed"
    )
    assert gate["baseline_version"] == 4 and gate["baseline_macro_recall"] == 1.0


def test_a_served_model_with_other_labels_is_used_for_floors_only(tmp_path):
    served = save_model(tmp_path / "served", ["a", "b"], [0, 1, 1], served_version=2)
    candidate = save_model(tmp_path / "candidate", LABELS, [0, 1, 2])
    gate = run_gate(tmp_path, candidate, served)
    assert gate["blessed"] is True and gate["change_thresholds_used"] is False
    assert "different label vocabulary" in gate["baseline_note"] and "(a, b vs a, b, c)" in gate["baseline_note"]
    assert gate["baseline_accuracy"] is None and gate["thresholds"]["max_class_recall_drop"] is None
    assert "floors only" in gate["decision"] and gate["macro_recall"] == 1.0


def test_the_gate_has_no_defaults_of_its_own():
    # The thresholds are components/settings.py's EvalConfig: a forgotten one fails instead of gating at 0.
    with pytest.raises(TypeError, match="class_recall_floor"):
        evaluator_gate.make_eval_config(accuracy_floor=0.5, max_accuracy_drop=0.0)
    with pytest.raises(TypeError, match="min_class_examples"):
        evaluator_gate.GatedEvaluator(
            examples=None, model=None, baseline_model=None, schema=None, eval_config=None, example_splits=["eval"]
        )

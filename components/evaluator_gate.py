"""The blessing gate: TFMA EvalConfig (overall accuracy and per-class recall, floors and no regression vs. the
served model) and the Evaluator executor around TFX's.

What the gate checks (all of it in the EvalConfig and this executor, so a local run and the compiled Kubeflow spec
apply the same gate):
  * overall: accuracy >= eval.accuracy_floor, and at most eval.max_accuracy_drop below the served model;
  * each class (the eval images whose true class is c; accuracy on that slice is the class's recall):
    recall >= eval.class_recall_floor, and at most eval.max_class_recall_drop below the served model's recall on
    the same class. Classes with fewer than eval.min_class_examples eval images are reported, not gated;
  * the change thresholds (vs. the served model) only when a model is served AND its label vocabulary is the
    candidate's: a served model with other classes is not comparable, so the gate falls back to the floors and
    says so.

The executor writes what it checked and found to `gate.json` in both the evaluation and the blessing artifact
(read by the run summary, the report and the Pusher's per-version record): per-class recall and example counts,
macro recall (mean over classes with eval images), the thresholds, the baseline version, whether change thresholds
were used and why not, and one line per failure naming the metric, the class and both numbers.

The model is evaluated through its `serving_tf_example` signature as a plain SavedModel
(`model_type='tf_generic'`): no Keras is loaded, and it is exactly the graph TF Serving will run, TFT transform
included.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

import tensorflow_model_analysis as tfma
from tfx import types
from tfx.components.evaluator import executor as evaluator_executor
from tfx.components.evaluator.component import Evaluator
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils, proto_utils

from components.served_model_baseline import SERVED_VERSION_PROPERTY, is_served
from serving import sidecars
from serving.signatures import OUTPUT_PROBABILITIES, TF_EXAMPLE_SIGNATURE
from trainer.features import CLASS_NAME_KEY, LABEL_KEY

# A change threshold compares candidate - baseline against -max_drop; the epsilon makes "equal" pass with
# max_drop = 0 despite float rounding.
_EPSILON = 1e-10


# One metric for any number of classes: the exported model always outputs a [N, C] probability vector (two
# classes too), so the gate is the same whatever the data, locally and in the compiled Kubeflow spec.
ACCURACY_METRIC = "SparseCategoricalAccuracy"
ACCURACY_NAME = "sparse_categorical_accuracy"  # TFMA's name for it in results
PREDICTION_KEY = OUTPUT_PROBABILITIES
EVAL_SPLIT = "eval"


def _threshold(floor: float, max_drop: float) -> tfma.MetricThreshold:
    return tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": floor}),
        # Ignored when there is no baseline (first run, or a served model with other classes), as in TFX.
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -max_drop - _EPSILON},
        ),
    )


def _is_overall(spec: tfma.SlicingSpec) -> bool:
    return not spec.feature_keys and not spec.feature_values and not spec.slice_keys_sql


def make_eval_config(
    accuracy_floor: float,
    max_accuracy_drop: float,
    class_recall_floor: float,
    max_class_recall_drop: float,
) -> tfma.EvalConfig:
    """The gate as compiled: overall accuracy thresholds, and per-class thresholds on the true-class slices.

    The per-class threshold names the class column (every class); at run time the executor narrows it to the
    classes with at least min_class_examples eval images (`with_gated_classes`). Every threshold is required (the
    values are components/settings.py's EvalConfig): a forgotten one fails here instead of gating at 0."""
    model_spec = dict(
        signature_name=TF_EXAMPLE_SIGNATURE,
        label_key=LABEL_KEY,
        prediction_key=PREDICTION_KEY,
        model_type=tfma.TF_GENERIC,
    )
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(name="candidate", **model_spec),
            tfma.ModelSpec(name="baseline", is_baseline=True, **model_spec),
        ],
        # Overall, and per true class.
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[CLASS_NAME_KEY])],
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(
                        class_name=ACCURACY_METRIC,
                        per_slice_thresholds=[
                            tfma.PerSliceMetricThreshold(
                                slicing_specs=[tfma.SlicingSpec()],
                                threshold=_threshold(accuracy_floor, max_accuracy_drop),
                            ),
                            # Accuracy on the examples of true class c is c's recall.
                            tfma.PerSliceMetricThreshold(
                                slicing_specs=[tfma.SlicingSpec(feature_keys=[CLASS_NAME_KEY])],
                                threshold=_threshold(class_recall_floor, max_class_recall_drop),
                            ),
                        ],
                    ),
                    tfma.MetricConfig(class_name="ExampleCount"),
                ]
            )
        ],
    )


# A per-run override of the floor (a Kubeflow run parameter): its own execution property, since TFX 1.16 cannot
# parameterise a field inside eval_config.
ACCURACY_FLOOR_KEY = "accuracy_floor"
MIN_CLASS_EXAMPLES_KEY = "min_class_examples"


def _load_eval_config(exec_properties: Dict[str, Any]) -> tfma.EvalConfig:
    return proto_utils.json_to_proto(exec_properties[standard_component_specs.EVAL_CONFIG_KEY], tfma.EvalConfig())


def _with_eval_config(exec_properties: Dict[str, Any], eval_config: tfma.EvalConfig) -> Dict[str, Any]:
    return {**exec_properties, standard_component_specs.EVAL_CONFIG_KEY: proto_utils.proto_to_json(eval_config)}


def with_accuracy_floor(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
    """The overall accuracy floor replaced by the run's `accuracy_floor` (the per-class floors stay)."""
    floor = exec_properties.get(ACCURACY_FLOOR_KEY)
    if floor is None:
        return exec_properties
    eval_config = _load_eval_config(exec_properties)
    for metrics_spec in eval_config.metrics_specs:
        for metric in metrics_spec.metrics:
            overall = [metric.threshold] + [
                t.threshold for t in metric.per_slice_thresholds if all(_is_overall(s) for s in t.slicing_specs)
            ]
            for threshold in overall:
                if threshold.HasField("value_threshold"):
                    threshold.value_threshold.lower_bound.value = floor
    return _with_eval_config(exec_properties, eval_config)


def with_gated_classes(exec_properties: Dict[str, Any], gated: List[str]) -> Dict[str, Any]:
    """The per-class thresholds narrowed to the `gated` classes (one slice spec per class; none: removed)."""
    eval_config = _load_eval_config(exec_properties)
    for metrics_spec in eval_config.metrics_specs:
        for metric in metrics_spec.metrics:
            kept = []
            for per_slice in metric.per_slice_thresholds:
                if list(per_slice.slicing_specs) == [tfma.SlicingSpec(feature_keys=[CLASS_NAME_KEY])]:
                    if not gated:
                        continue
                    del per_slice.slicing_specs[:]
                    per_slice.slicing_specs.extend(
                        tfma.SlicingSpec(feature_values={CLASS_NAME_KEY: name}) for name in gated
                    )
                kept.append(per_slice)
            del metric.per_slice_thresholds[:]
            metric.per_slice_thresholds.extend(kept)
    return _with_eval_config(exec_properties, eval_config)


def thresholds_of(eval_config: tfma.EvalConfig) -> Dict[str, Optional[float]]:
    """{accuracy_floor, max_accuracy_drop, class_recall_floor, max_class_recall_drop} as configured."""
    found: Dict[str, Optional[float]] = dict.fromkeys(
        ("accuracy_floor", "max_accuracy_drop", "class_recall_floor", "max_class_recall_drop")
    )
    for metrics_spec in eval_config.metrics_specs:
        for metric in metrics_spec.metrics:
            for per_slice in metric.per_slice_thresholds:
                prefix = "accuracy" if all(_is_overall(s) for s in per_slice.slicing_specs) else "class_recall"
                drop = "max_accuracy_drop" if prefix == "accuracy" else "max_class_recall_drop"
                threshold = per_slice.threshold
                if threshold.HasField("value_threshold"):
                    found[f"{prefix}_floor"] = threshold.value_threshold.lower_bound.value
                if threshold.HasField("change_threshold"):
                    found[drop] = round(-threshold.change_threshold.absolute.value, 6)
    return found


# --- what the gate found --------------------------------------------------------------------------------------


def _slice_class(slice_key) -> Optional[str]:
    """None for the overall slice, else the class name of a true-class slice."""
    keys = slice_key.single_slice_keys
    if not keys:
        return None
    key = keys[0]
    kind = key.WhichOneof("kind")
    value = getattr(key, kind) if kind else ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read_metrics(evaluation_uri: str) -> Dict[Optional[str], Dict[str, float]]:
    """{None (overall) | class: {"candidate", "baseline", "examples"}} from TFMA's metrics."""
    found: Dict[Optional[str], Dict[str, float]] = {}
    for slice_metrics in tfma.load_metrics(evaluation_uri):
        where = _slice_class(slice_metrics.slice_key)
        entry = found.setdefault(where, {})
        for item in slice_metrics.metric_keys_and_values:
            key = item.key
            if key.is_diff or not item.value.HasField("double_value"):
                continue
            role = "baseline" if key.model_name == "baseline" else "candidate"
            if key.name == ACCURACY_NAME:
                entry[role] = float(item.value.double_value.value)
            elif key.name == "example_count" and role == "candidate":
                entry["examples"] = int(item.value.double_value.value)
    return found


def failure_lines(validation, metrics: Dict[Optional[str], Dict[str, float]], baseline_version) -> List[Dict]:
    """One entry per failed threshold: {slice, class, metric, kind, value, baseline, threshold, text}."""
    failures = []
    for per_slice in validation.metric_validations_per_slice:
        where = _slice_class(per_slice.slice_key)
        numbers = metrics.get(where, {})
        metric = "accuracy" if where is None else "recall"
        subject = "overall accuracy" if where is None else f"class '{where}' recall"
        for failure in per_slice.failures:
            threshold = failure.metric_threshold
            candidate = numbers.get("candidate", failure.metric_value.double_value.value)
            entry = {"slice": "overall" if where is None else where, "class": where, "metric": metric}
            if threshold.HasField("change_threshold"):
                allowed = round(-threshold.change_threshold.absolute.value, 6)
                served = numbers.get("baseline")
                entry.update(kind="change", value=candidate, baseline=served, threshold=allowed)
                entry["text"] = (
                    f"{subject} {candidate:.3f} vs {_num(served)} on the served model (version {baseline_version}): "
                    f"changed by {failure.metric_value.double_value.value:+.3f}, at most {allowed:.3f} drop allowed"
                )
            else:
                floor = threshold.value_threshold.lower_bound.value
                entry.update(kind="floor", value=candidate, baseline=numbers.get("baseline"), threshold=floor)
                entry["text"] = f"{subject} {candidate:.3f} is below the floor {floor:.3f}"
            failures.append(entry)
    for spec in validation.missing_slices:
        name = dict(spec.feature_values).get(CLASS_NAME_KEY)
        failures.append(
            {
                "slice": name or "overall",
                "class": name,
                "metric": "recall" if name else "accuracy",
                "kind": "missing",
                "value": None,
                "baseline": None,
                "threshold": None,
                "text": f"no eval examples for {'class ' + repr(name) if name else 'the overall slice'}",
            }
        )
    return failures


def _num(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _macro(recalls: List[Optional[float]]) -> Optional[float]:
    known = [r for r in recalls if r is not None]
    return sum(known) / len(known) if known else None


def gate_summary(
    evaluation_uri: str,
    eval_config: tfma.EvalConfig,
    labels: List[str],
    counts: Dict[str, int],
    min_class_examples: int,
    baseline_version: Optional[int],
    change_thresholds_used: bool,
    baseline_note: str,
) -> Dict[str, Any]:
    """What the gate checked and found (the content of gate.json)."""
    validation = tfma.load_validation_result(evaluation_uri)
    metrics = read_metrics(evaluation_uri)
    overall = metrics.get(None, {})
    names = list(labels) + sorted(c for c in metrics if c is not None and c not in labels)
    classes = {}
    for name in names:
        numbers = metrics.get(name, {})
        examples = int(numbers.get("examples", counts.get(name, 0)))
        classes[name] = {
            "recall": numbers.get("candidate"),
            "baseline_recall": numbers.get("baseline") if change_thresholds_used else None,
            "examples": examples,
            "gated": examples >= min_class_examples,
        }
    thresholds = {**thresholds_of(eval_config), "min_class_examples": min_class_examples}
    if not change_thresholds_used:
        thresholds["max_accuracy_drop"] = thresholds["max_class_recall_drop"] = None
    summary = {
        "blessed": bool(validation.validation_ok),
        "metric": ACCURACY_NAME,
        "accuracy": overall.get("candidate"),
        "baseline_accuracy": overall.get("baseline") if change_thresholds_used else None,
        "macro_recall": _macro([c["recall"] for c in classes.values()]),
        "baseline_macro_recall": _macro([c["baseline_recall"] for c in classes.values()])
        if change_thresholds_used
        else None,
        "eval_examples": overall.get("examples"),
        "classes": classes,
        "labels": list(labels),
        "thresholds": thresholds,
        "baseline_version": baseline_version,
        "change_thresholds_used": change_thresholds_used,
        "baseline_note": baseline_note,
        "failures": failure_lines(validation, metrics, baseline_version),
    }
    summary["checked"] = checked_lines(summary)
    summary["decision"] = decision_text(summary)
    return summary


def checked_lines(summary: Dict[str, Any]) -> List[str]:
    """What the gate checked, in words (the report prints these)."""
    t = summary["thresholds"]
    gated = [c for c, v in summary["classes"].items() if v["gated"]]
    reported = [c for c, v in summary["classes"].items() if not v["gated"]]
    lines = [f"overall accuracy >= {t['accuracy_floor']:.3f}"]
    if gated:
        lines.append(f"recall of each of {len(gated)} class(es) ({', '.join(gated)}) >= {t['class_recall_floor']:.3f}")
    if reported:
        lines.append(f"reported, not gated (fewer than {t['min_class_examples']} eval images): {', '.join(reported)}")
    if summary["change_thresholds_used"]:
        lines.append(
            f"against the served model (version {summary['baseline_version']}): overall accuracy at most "
            f"{t['max_accuracy_drop']:.3f} lower"
            + (f", each gated class's recall at most {t['max_class_recall_drop']:.3f} lower" if gated else "")
        )
    else:
        lines.append(f"floors only: {summary['baseline_note']}")
    return lines


def decision_text(summary: Dict[str, Any]) -> str:
    """One sentence: the verdict, and for a refusal the metric, the class and both numbers of each failure."""
    if not summary["blessed"]:
        why = "; ".join(f["text"] for f in summary["failures"][:5]) or "the Evaluator did not bless the model"
        floors_only = "" if summary["change_thresholds_used"] else f" (floors only: {summary['baseline_note']})"
        return f"NOT BLESSED: {why}{floors_only}"
    t = summary["thresholds"]
    gated = sum(1 for c in summary["classes"].values() if c["gated"])
    text = (
        f"BLESSED: accuracy {_num(summary['accuracy'])} >= floor {t['accuracy_floor']:.3f}; recall of {gated} gated "
        f"class(es) >= {t['class_recall_floor']:.3f}; macro recall {_num(summary['macro_recall'])}"
    )
    if summary["change_thresholds_used"]:
        return (
            f"{text}; no regression beyond the allowed drops against the served model (version "
            f"{summary['baseline_version']}, accuracy {_num(summary['baseline_accuracy'])})"
        )
    return f"{text}; floors only: {summary['baseline_note']}"


class Executor(evaluator_executor.Executor):
    """TFX's Evaluator, plus: a baseline only when one is served with the same label vocabulary, per-class
    thresholds only on classes with enough eval images, the per-run floor, and gate.json."""

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        exec_properties = with_accuracy_floor(exec_properties)
        model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        labels = sidecars.read_labels(model.uri) or []
        key = standard_component_specs.BASELINE_MODEL_KEY
        baseline = (input_dict.get(key) or [None])[0]
        baseline_version, note = None, ""
        if baseline is not None and not is_served(baseline):
            note = "no model served yet, so nothing to compare with"
        elif baseline is not None:
            baseline_version = baseline.get_int_custom_property(SERVED_VERSION_PROPERTY)
            served_labels = sidecars.read_labels(baseline.uri)
            if served_labels != labels:
                note = (
                    f"the served model (version {baseline_version}) has a different label vocabulary "
                    f"({', '.join(served_labels) if served_labels else 'unknown'} vs {', '.join(labels)}), so it "
                    "is not used for change thresholds"
                )
        if note:
            logging.info("Evaluator: %s; floors only", note)
            input_dict = {k: v for k, v in input_dict.items() if k != key}
        examples = artifact_utils.get_single_instance(input_dict[standard_component_specs.EXAMPLES_KEY])
        counts = sidecars.eval_class_counts(examples.uri, EVAL_SPLIT)
        min_examples = int(exec_properties[MIN_CLASS_EXAMPLES_KEY])
        gated = [c for c in labels if counts.get(c, 0) >= min_examples]
        logging.info("Evaluator: per-class recall gated for %s (min %d eval images)", gated, min_examples)
        configured = _load_eval_config(exec_properties)  # before narrowing: the class thresholds as configured
        exec_properties = with_gated_classes(exec_properties, gated)
        super().Do(input_dict, output_dict, exec_properties)

        evaluation = artifact_utils.get_single_instance(output_dict[standard_component_specs.EVALUATION_KEY])
        summary = gate_summary(
            evaluation.uri,
            configured,
            labels,
            counts,
            min_examples,
            baseline_version,
            change_thresholds_used=not note,
            baseline_note=note,
        )
        blessing = artifact_utils.get_single_instance(output_dict[standard_component_specs.BLESSING_KEY])
        for uri in (evaluation.uri, blessing.uri):
            sidecars.write_gate(uri, summary)
        logging.info("Evaluator: %s", summary["decision"])


class GateSpec(standard_component_specs.EvaluatorSpec):
    PARAMETERS = {
        **standard_component_specs.EvaluatorSpec.PARAMETERS,
        ACCURACY_FLOOR_KEY: ExecutionParameter(type=float, optional=True),
        # Required: the gate must not silently fall back to gating every class with one eval image.
        MIN_CLASS_EXAMPLES_KEY: ExecutionParameter(type=int),
    }


class GatedEvaluator(Evaluator):
    SPEC_CLASS = GateSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(
        self,
        *,
        examples,
        model,
        baseline_model,
        schema,
        eval_config,
        example_splits,
        min_class_examples: int,
        accuracy_floor=None,
    ):
        spec = GateSpec(
            examples=examples,
            model=model,
            baseline_model=baseline_model,
            schema=schema,
            eval_config=eval_config,
            example_splits=json_utils.dumps(example_splits),
            fairness_indicator_thresholds=json_utils.dumps(None),
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
            accuracy_floor=accuracy_floor,
            min_class_examples=min_class_examples,
        )
        # Evaluator.__init__ builds the stock EvaluatorSpec; skip it (as ImageExampleGen does).
        base_beam_component.BaseBeamComponent.__init__(self, spec=spec)

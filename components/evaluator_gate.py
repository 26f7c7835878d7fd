"""The blessing gate: TFMA EvalConfig (accuracy floor + no regression vs. the served model) and the Evaluator
executor that treats "nothing served yet" as "no baseline".

The model is evaluated through its `serving_tf_example` signature as a plain SavedModel
(`model_type='tf_generic'`): no Keras is loaded, and it is exactly the graph TF Serving will run, TFT transform
included.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List

import tensorflow_model_analysis as tfma
from tfx import types
from tfx import v1 as tfx
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils, proto_utils

from components.served_model_baseline import is_served
from serving.signatures import OUTPUT_PROBABILITIES, TF_EXAMPLE_SIGNATURE
from trainer.features import CLASS_NAME_KEY, LABEL_KEY

# A change threshold compares candidate - baseline against -max_drop; the epsilon makes "equal" pass with
# max_drop = 0 despite float rounding.
_EPSILON = 1e-10


# One metric for any number of classes: the exported model always outputs a [N, C] probability vector (two
# classes too), so the gate is the same whatever the data, locally and in the compiled Kubeflow spec.
ACCURACY_METRIC = "SparseCategoricalAccuracy"
PREDICTION_KEY = OUTPUT_PROBABILITIES


def make_eval_config(accuracy_floor: float, max_accuracy_drop: float) -> tfma.EvalConfig:
    threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": accuracy_floor}),
        # Ignored when there is no baseline (first run), as in TFX.
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -max_accuracy_drop - _EPSILON},
        ),
    )
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
                    # The gate looks at the overall slice only: the per-class slices are reported, but a class
                    # with a handful of eval images must not block (or pass) a model on its own.
                    tfma.MetricConfig(
                        class_name=ACCURACY_METRIC,
                        per_slice_thresholds=[
                            tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()], threshold=threshold)
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


def with_accuracy_floor(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
    floor = exec_properties.get(ACCURACY_FLOOR_KEY)
    if floor is None:
        return exec_properties
    key = standard_component_specs.EVAL_CONFIG_KEY
    eval_config = proto_utils.json_to_proto(exec_properties[key], tfma.EvalConfig())
    for metrics_spec in eval_config.metrics_specs:
        for metric in metrics_spec.metrics:
            for threshold in [metric.threshold, *(t.threshold for t in metric.per_slice_thresholds)]:
                if threshold.HasField("value_threshold"):
                    threshold.value_threshold.lower_bound.value = floor
    return {**exec_properties, key: proto_utils.proto_to_json(eval_config)}


class Executor(evaluator_executor.Executor):
    """TFX's Evaluator, minus a baseline that stands for "nothing served yet", plus the per-run floor."""

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        exec_properties = with_accuracy_floor(exec_properties)
        key = standard_component_specs.BASELINE_MODEL_KEY
        baseline = input_dict.get(key) or []
        if baseline and not is_served(baseline[0]):
            logging.info("Evaluator: no model served yet; evaluating against the accuracy floor only")
            input_dict = {k: v for k, v in input_dict.items() if k != key}
        super().Do(input_dict, output_dict, exec_properties)


class GateSpec(standard_component_specs.EvaluatorSpec):
    PARAMETERS = {
        **standard_component_specs.EvaluatorSpec.PARAMETERS,
        ACCURACY_FLOOR_KEY: ExecutionParameter(type=float, optional=True),
    }


class GatedEvaluator(tfx.components.Evaluator):
    SPEC_CLASS = GateSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, *, examples, model, baseline_model, schema, eval_config, example_splits, accuracy_floor=None):
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
        )
        # Evaluator.__init__ builds the stock EvaluatorSpec; skip it (as ImageExampleGen does).
        base_beam_component.BaseBeamComponent.__init__(self, spec=spec)

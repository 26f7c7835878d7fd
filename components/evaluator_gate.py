"""The blessing gate: TFMA EvalConfig (accuracy floor + no regression vs. the served model) and the Evaluator
executor that treats "nothing served yet" as "no baseline".

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
from tfx.types import standard_component_specs

from components.image_transform import CLASS_NAME_KEY, LABEL_KEY
from components.served_model_baseline import is_served
from serving.export import TF_EXAMPLE_SIGNATURE

# A change threshold compares candidate - baseline against -max_drop; the epsilon makes "equal" pass with
# max_drop = 0 despite float rounding.
_EPSILON = 1e-10


def accuracy_metric(num_classes: Optional[int]) -> tuple:
    """(metric class name, prediction key): binary accuracy on P(class 1) for 2 classes, else sparse categorical
    accuracy on the probability vector (also correct for 2 classes when the class count is unknown)."""
    if num_classes == 2:
        return "BinaryAccuracy", "score"
    return "SparseCategoricalAccuracy", "probabilities"


def make_eval_config(num_classes: Optional[int], accuracy_floor: float, max_accuracy_drop: float) -> tfma.EvalConfig:
    metric_name, prediction_key = accuracy_metric(num_classes)
    threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": accuracy_floor}),
        # Ignored when there is no baseline (first run), as in TFX.
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -max_accuracy_drop - _EPSILON},
        ),
    )
    model_spec = dict(signature_name=TF_EXAMPLE_SIGNATURE, label_key=LABEL_KEY, prediction_key=prediction_key,
                      model_type=tfma.TF_GENERIC)
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
                        class_name=metric_name,
                        per_slice_thresholds=[
                            tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()], threshold=threshold)
                        ],
                    ),
                    tfma.MetricConfig(class_name="ExampleCount"),
                ]
            )
        ],
    )


class Executor(evaluator_executor.Executor):
    """TFX's Evaluator, minus a baseline that stands for "nothing served yet"."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        key = standard_component_specs.BASELINE_MODEL_KEY
        baseline = input_dict.get(key) or []
        if baseline and not is_served(baseline[0]):
            logging.info("Evaluator: no model served yet; evaluating against the accuracy floor only")
            input_dict = {k: v for k, v in input_dict.items() if k != key}
        super().Do(input_dict, output_dict, exec_properties)

"""ServedModelBaseline: the model TF Serving serves now, as a Model artifact for the Evaluator's baseline.

Why not TFX's Resolver (LatestBlessedModelStrategy): Resolver nodes compile to KFP `resolver` executors, which
open-source Kubeflow Pipelines rejects ("resolver executors not implemented"). And "never regress against what
users are being served" is the right gate anyway: the latest blessed model in MLMD is not necessarily the one in
the serving directory (rollbacks, pushes from another pipeline root).

The executor copies the highest complete version under `<serving base>/<model name>/` into its output artifact
(the SavedModel folder `sidecars.serving_model_dir` names, where the Evaluator looks), so the evaluation is
reproducible even if the serving directory changes meanwhile. With nothing served yet (first run) it writes an
empty artifact with `served_version = -1`, which the Evaluator gate treats as "no baseline" (no change threshold,
as TFX does).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import io_utils

from serving import sidecars
from serving.model_versions import NO_SERVED_VERSION, latest_served

SERVING_MODEL_DIR_KEY = "serving_model_dir"
SERVING_STATE_KEY = "serving_state"
BASELINE_MODEL_KEY = "baseline_model"
SERVED_VERSION_PROPERTY = "served_version"
SERVED_PATH_PROPERTY = "served_path"


class Executor(base_executor.BaseExecutor):
    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        baseline = artifact_utils.get_single_instance(output_dict[BASELINE_MODEL_KEY])
        version, path = latest_served(exec_properties[SERVING_MODEL_DIR_KEY])
        baseline.set_int_custom_property(SERVED_VERSION_PROPERTY, version)
        if path is None:
            logging.info(
                "ServedModelBaseline: nothing served under %s yet (first run)", exec_properties[SERVING_MODEL_DIR_KEY]
            )
            fileio.makedirs(baseline.uri)
            return
        baseline.set_string_custom_property(SERVED_PATH_PROPERTY, path)
        # Artifact URIs are gs:// on Kubeflow: copy with TFX's filesystem layer, not shutil.
        io_utils.copy_dir(path, sidecars.serving_model_dir(baseline.uri))
        logging.info("ServedModelBaseline: baseline is served version %d (%s)", version, path)


def is_served(model: types.Artifact) -> bool:
    return model.get_int_custom_property(SERVED_VERSION_PROPERTY) != NO_SERVED_VERSION


class ServedModelBaselineSpec(ComponentSpec):
    PARAMETERS = {
        SERVING_MODEL_DIR_KEY: ExecutionParameter(type=str),
        SERVING_STATE_KEY: ExecutionParameter(type=str, optional=True),
    }
    INPUTS: Dict[str, ChannelParameter] = {}
    OUTPUTS = {BASELINE_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model)}


class ServedModelBaseline(base_component.BaseComponent):
    SPEC_CLASS = ServedModelBaselineSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, serving_model_dir: str, serving_state: str = ""):
        super().__init__(
            spec=ServedModelBaselineSpec(
                serving_model_dir=serving_model_dir,
                serving_state=serving_state,
                baseline_model=types.Channel(type=standard_artifacts.Model),
            )
        )

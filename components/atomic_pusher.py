"""Pusher executor: blessed models only, into `<base>/<model>/<version>/`, atomically, keeping N versions.

TFX's stock filesystem Pusher copies straight into a timestamp-named version folder, so TF Serving (which polls
the model base path) can pick up a version whose files are still being copied. This executor publishes through
serving/model_versions.py instead: staged copy, then an atomic rename to the next integer version.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List

from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from serving.model_versions import prune_versions, push, same_model_served

KEEP_VERSIONS_KEY = "keep_versions"


class Executor(pusher_executor.Executor):
    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            logging.info("Pusher: model not blessed; nothing pushed")
            self._MarkNotPushed(model_push)
            return
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        serving_model_dir = destination.filesystem.base_directory
        model_path = self.GetModelPath(input_dict)
        existing = same_model_served(model_path, serving_model_dir)
        if existing:
            logging.info("Pusher: this model is already served as version %d; not pushed again", existing)
            self._MarkPushed(
                model_push,
                pushed_destination=os.path.join(serving_model_dir, str(existing)),
                pushed_version=str(existing),
            )
            return
        version = push(model_path, serving_model_dir)
        custom_config = self._get_custom_config(exec_properties)
        pruned = prune_versions(serving_model_dir, int(custom_config.get(KEEP_VERSIONS_KEY, 0)))
        pushed = os.path.join(serving_model_dir, str(version))
        logging.info("Pusher: pushed version %d to %s; removed old versions %s", version, pushed, pruned)
        self._MarkPushed(model_push, pushed_destination=pushed, pushed_version=str(version))

    @staticmethod
    def _get_custom_config(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
        import json

        raw = exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "{}"
        return json.loads(raw) if isinstance(raw, str) else dict(raw)

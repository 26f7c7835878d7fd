"""Pusher executor: blessed models only, into `<base>/<model>/<version>/`, atomically, keeping N versions.

TFX's stock filesystem Pusher copies straight into a timestamp-named version folder, so TF Serving (which polls
the model base path) can pick up a version whose files are still being copied. Here the model is copied into a
hidden staging folder beside the versions (TF Serving ignores names that are not integers) and then renamed to
its version number: a rename within one filesystem is atomic, so a poller sees either no new version or a
complete one. Versions are 1, 2, 3, ... (highest served + 1), which TF Serving orders numerically.

Atomicity holds for local/PVC paths. Object stores (gs://, s3://) have no atomic rename; there TF Serving's own
check for `saved_model.pb` (copied last by TFX) is what protects a poller.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from typing import Any, Dict, List

from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from components.served_model_baseline import served_versions

KEEP_VERSIONS_KEY = "keep_versions"
STAGING_PREFIX = ".staging-"


def push(model_path: str, serving_model_dir: str) -> int:
    """Pushes model_path as the next version of serving_model_dir; returns the version."""
    if "://" in serving_model_dir:
        return push_to_object_store(model_path, serving_model_dir)
    return push_atomically(model_path, serving_model_dir)


def push_to_object_store(model_path: str, serving_model_dir: str) -> int:
    """gs:// or s3://: no atomic rename, so copy saved_model.pb last (TF Serving loads a version only once that
    file exists), as TFX's own Pusher does."""
    version = (served_versions(serving_model_dir) or [0])[-1] + 1
    target = os.path.join(serving_model_dir, str(version))
    io_utils.copy_dir(model_path, target, deny_regex_patterns=[r"saved_model\.pb$"])
    io_utils.copy_file(os.path.join(model_path, "saved_model.pb"), os.path.join(target, "saved_model.pb"))
    return version


def push_atomically(model_path: str, serving_model_dir: str) -> int:
    """Copies model_path to serving_model_dir/<next version> via a staged rename; returns the version."""
    os.makedirs(serving_model_dir, exist_ok=True)
    staging = os.path.join(serving_model_dir, f"{STAGING_PREFIX}{uuid.uuid4().hex}")
    try:
        # The model is an artifact (gs:// on Kubeflow): read it through TFX's filesystem layer.
        io_utils.copy_dir(model_path, staging)
        _fsync_tree(staging)
        while True:
            version = (served_versions(serving_model_dir) or [0])[-1] + 1
            target = os.path.join(serving_model_dir, str(version))
            try:
                # os.rename onto an existing non-empty folder fails, so a concurrent push cannot be overwritten.
                os.rename(staging, target)
                return version
            except OSError:
                if not os.path.exists(target):
                    raise
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def same_model_served(model_path: str, serving_model_dir: str) -> int:
    """The served version holding this very SavedModel (same `fingerprint.pb`: graph and weights hashes), or 0.

    Re-running an unchanged pipeline re-evaluates against the served copy of the same model and blesses it;
    pushing it again would only add a duplicate version."""
    candidate = os.path.join(model_path, "fingerprint.pb")
    if not fileio.exists(candidate):
        return 0
    with fileio.open(candidate, "rb") as f:
        fingerprint = f.read()
    for version in reversed(served_versions(serving_model_dir)):
        served = os.path.join(serving_model_dir, str(version), "fingerprint.pb")
        if fileio.exists(served):
            with fileio.open(served, "rb") as f:
                if f.read() == fingerprint:
                    return version
    return 0


def _fsync_tree(root: str) -> None:
    """Flush the copied files before the rename publishes them (a crash must not leave a torn version)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())


def prune_versions(serving_model_dir: str, keep: int) -> List[int]:
    """Deletes all but the newest `keep` versions (0 keeps all); returns the deleted ones."""
    versions = served_versions(serving_model_dir)
    if keep <= 0 or len(versions) <= keep:
        return []
    doomed = versions[:-keep]
    for version in doomed:
        fileio.rmtree(os.path.join(serving_model_dir, str(version)))
    return doomed


class Executor(pusher_executor.Executor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
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
            self._MarkPushed(model_push, pushed_destination=os.path.join(serving_model_dir, str(existing)),
                             pushed_version=str(existing))
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

"""Pusher: blessed models only, into `<base>/<model>/<version>/`, atomically, each version with its record.

TFX's stock filesystem Pusher copies straight into a timestamp-named version folder, so TF Serving (which polls
the model base path) can pick up a version whose files are still being copied. This executor publishes through
serving/model_versions.py instead: staged copy, then an atomic rename to the next integer version.

Every pushed version carries `assets.extra/model_record.json` (schema: serving/model_record.py), written into the
staged copy before the rename: the input folders and their fingerprint and images per class (from
ImageExampleGen's ingest report, an input of this component), the settings (compiled, with the Trainer's and the
gate's values in effect for this run), the weights file's content digest the change check compared (its
decision, an input of this component), the metrics and the gate's outcome (the Evaluator's gate.json in the
blessing), the code version, the pipeline run and its times.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.types.experimental.simple_artifacts import File

from components import label_fixes
from components.change_check import (
    TRAINING_CODE_VERSION,
    WEIGHTS_DIGEST_KEY,
    WEIGHTS_KEY,
    read_decision,
    refused_attempt,
)
from serving import sidecars
from serving.model_record import code_version, utc_now
from serving.model_versions import prune_versions, push, same_model_served
from trainer.weights_digest import is_digest

KEEP_VERSIONS_KEY = "keep_versions"
# The change check's decision (components/change_check.py): the data and settings this run tried.
CHANGE_DECISION_KEY = "change_decision"
# custom_config key: the full settings (PipelineConfig.to_dict()) for the record.
SETTINGS_KEY = "settings"
EXAMPLES_KEY = "examples"


class Executor(pusher_executor.Executor):
    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        destination = pusher_pb2.PushDestination()
        from tfx.utils import proto_utils

        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        serving_model_dir = destination.filesystem.base_directory
        if not self.CheckBlessing(input_dict):
            self._remember_refusal(input_dict, serving_model_dir)
            logging.info("Pusher: model not blessed; nothing pushed")
            self._MarkNotPushed(model_push)
            return
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
        custom_config = self._get_custom_config(exec_properties)
        record = self._record(input_dict, custom_config)
        version = push(model_path, serving_model_dir, record)
        pruned = prune_versions(serving_model_dir, int(custom_config.get(KEEP_VERSIONS_KEY, 0)))
        pushed = os.path.join(serving_model_dir, str(version))
        logging.info("Pusher: pushed version %d to %s; removed old versions %s", version, pushed, pruned)
        self._MarkPushed(model_push, pushed_destination=pushed, pushed_version=str(version))

    def _remember_refusal(self, input_dict: Dict[str, List[types.Artifact]], serving_model_dir: str) -> None:
        """Writes refused_attempt.json beside the versions, so that the next run's change check does not retrain the
        same data and settings against the same served version (components/change_check.py)."""
        decisions = input_dict.get(CHANGE_DECISION_KEY) or []
        if not decisions:
            return
        blessing = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_BLESSING_KEY])
        gate = sidecars.read_gate(blessing.uri) or {}
        failed = [f.get("text", "") for f in gate.get("failures") or []] or [gate.get("decision") or "not blessed"]
        run_id = self._context.pipeline_run_id if self._context else None
        attempt = refused_attempt(read_decision(decisions[0]), failed, run_id)
        path = sidecars.write_refused_attempt(serving_model_dir, attempt)
        logging.info("Pusher: refused attempt recorded in %s", path)

    def _record(self, input_dict: Dict[str, List[types.Artifact]], custom_config: Dict[str, Any]) -> Dict[str, Any]:
        model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        blessing = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_BLESSING_KEY])
        examples = (input_dict.get(EXAMPLES_KEY) or [None])[0]
        decisions = input_dict.get(CHANGE_DECISION_KEY) or []
        run_id = self._context.pipeline_run_id if self._context else None
        return build_record(
            model_uri=model.uri,
            gate=sidecars.read_gate(blessing.uri),
            ingest=sidecars.read_ingest_report(examples.uri) if examples is not None else None,
            settings=custom_config.get(SETTINGS_KEY),
            pipeline_run=run_id,
            weights_digest=read_decision(decisions[0]).settings.get(WEIGHTS_KEY) if decisions else None,
        )

    @staticmethod
    def _get_custom_config(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
        raw = exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "{}"
        return json.loads(raw) if isinstance(raw, str) else dict(raw)


def _started_at(pipeline_run: Optional[str]) -> Optional[str]:
    """LocalDagRunner names a run by its local start time (ISO-8601); other orchestrators' ids are not times."""
    try:
        started = datetime.datetime.fromisoformat(pipeline_run or "")
    except ValueError:
        return None
    return started.astimezone(datetime.timezone.utc).isoformat(timespec="seconds")


def build_record(
    model_uri: str,
    gate: Optional[Dict[str, Any]],
    ingest: Optional[Dict[str, Any]],
    settings: Optional[Dict[str, Any]],
    pipeline_run: Optional[str],
    weights_digest: Optional[str] = None,
) -> Dict[str, Any]:
    """The record of a version about to be pushed (keys: serving/model_record.py); "version" is set at publish.
    `weights_digest`: trainer.weights as the change check compared it (`sha256:<hex>` of a weights file; anything
    else, a keyword or a URI, is recorded as null)."""
    history = sidecars.read_history(model_uri) or {}
    gate = gate or {}
    settings = json.loads(json.dumps(settings)) if settings else None
    if settings is not None:
        # The values in effect for this run (Kubeflow run parameters may override the compiled ones).
        settings["trainer"].update(history.get("trainer_config") or {})
        for key in ("accuracy_floor", "class_recall_floor", "min_class_examples"):
            if (gate.get("thresholds") or {}).get(key) is not None:
                settings["eval"][key] = gate["thresholds"][key]
        if ingest and ingest.get("input_base"):
            settings["data"]["data_root"] = ingest["input_base"]
    classes = gate.get("classes") or {}
    now = utc_now()
    return {
        "version": None,
        "kind": "trained",
        "rollback_of": None,
        "pushed_at": now,
        "started_at": _started_at(pipeline_run),
        "ended_at": now,
        "pipeline_run": pipeline_run,
        "code_version": code_version(),
        "training_code_version": TRAINING_CODE_VERSION,
        WEIGHTS_DIGEST_KEY: weights_digest if is_digest(weights_digest) else None,
        "labels": history.get("class_names") or gate.get("labels"),
        "data": {
            "roots": [ingest["input_base"]] if ingest and ingest.get("input_base") else [],
            "spans": (ingest or {}).get("spans"),
            "fingerprint": (ingest or {}).get("input_fingerprint"),
            "images_per_class": (ingest or {}).get("accepted_per_split"),
            # The label fixes ingestion applied: {path, sha256, counts} (components/label_fixes.py); null without.
            "label_fixes": label_fixes.record_of((ingest or {}).get("label_fixes")),
        },
        "settings": settings,
        "metrics": {
            "accuracy": gate.get("accuracy"),
            "macro_recall": gate.get("macro_recall"),
            "recall_per_class": {name: c.get("recall") for name, c in classes.items()},
            "examples_per_class": {name: c.get("examples") for name, c in classes.items()},
            "gated_classes": [name for name, c in classes.items() if c.get("gated")],
            "baseline_accuracy": gate.get("baseline_accuracy"),
            "baseline_macro_recall": gate.get("baseline_macro_recall"),
        },
        "gate": {
            "baseline_version": gate.get("baseline_version"),
            "blessed": gate.get("blessed", True),
            "decision": gate.get("decision"),
            "change_thresholds_used": gate.get("change_thresholds_used"),
            "baseline_note": gate.get("baseline_note"),
            "thresholds": gate.get("thresholds"),
            "checked": gate.get("checked"),
        },
        "warm_start": history.get("warm_start") or {"from_version": None, "reason": None},
        "profile": history.get("profile"),
    }


class RecordingPusherSpec(standard_component_specs.PusherSpec):
    INPUTS = {
        **standard_component_specs.PusherSpec.INPUTS,
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
        CHANGE_DECISION_KEY: ChannelParameter(type=File, optional=True),
    }


class RecordingPusher(base_component.BaseComponent):
    """TFX's Pusher with the atomic, recorded push; ImageExampleGen's examples are an input for the record, the
    change check's decision for the refused-attempt memory."""

    SPEC_CLASS = RecordingPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(
        self,
        *,
        model,
        model_blessing,
        examples,
        change_decision,
        serving_model_dir: str,
        custom_config: Dict[str, Any],
    ):
        super().__init__(
            spec=RecordingPusherSpec(
                model=model,
                model_blessing=model_blessing,
                examples=examples,
                change_decision=change_decision,
                push_destination=pusher_pb2.PushDestination(
                    filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=serving_model_dir)
                ),
                custom_config=json.dumps(custom_config),
                pushed_model=types.Channel(type=standard_artifacts.PushedModel),
            )
        )

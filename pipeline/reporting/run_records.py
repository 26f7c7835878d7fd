"""Reading a pipeline run's records from MLMD: the one place that queries the metadata store.

The run summary, the HTML report, `ftune ingest` and the tests all read runs through these functions:

    load_run(config) -> RunView           the newest pipeline run: state per node, artifacts each published
    component_timings(config) -> dict     seconds and state of each node's newest execution
    latest_artifact_uri(config, node, key) -> str | None
    change_decision(run) -> dict | None   what the run's change check decided
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional, Tuple

from pipeline.configs import PipelineConfig
from serving import sidecars

_EXECUTION_STATES = {0: "unknown", 1: "new", 2: "running", 3: "complete", 4: "failed", 5: "cached", 6: "canceled"}


def open_store(config: PipelineConfig):
    """The pipeline root's MLMD store, or None when the pipeline never ran there."""
    if not os.path.exists(config.metadata_path):
        return None
    from ml_metadata.metadata_store import metadata_store
    from tfx.orchestration import metadata

    return metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(config.metadata_path))


@dataclasses.dataclass
class RunView:
    """The nodes of one pipeline run: execution state per node and the artifacts each published."""

    run_id: Optional[str] = None
    states: Dict[str, str] = dataclasses.field(default_factory=dict)
    outputs: Dict[Tuple[str, str], Any] = dataclasses.field(default_factory=dict)  # (node, key) -> MLMD Artifact
    absent_reason: str = ""  # set when there is no run at all

    def artifact(self, node: str, key: str) -> Any:
        return self.outputs.get((node, key))

    def uri(self, node: str, key: str) -> Optional[str]:
        artifact = self.artifact(node, key)
        return artifact.uri if artifact is not None else None

    def why_missing(self, node: str) -> str:
        if self.run_id is None:
            return self.absent_reason or "no pipeline run recorded"
        state = self.states.get(node)
        if state is None:
            failed = [n for n, s in self.states.items() if s == "failed"]
            cause = f"{', '.join(failed)} failed" if failed else "the run stopped before it"
            return f"{node} did not run in the latest run ({self.run_id}): {cause}"
        if state in ("complete", "cached"):
            return f"{node} ran ({state}) in the latest run ({self.run_id}) but its output is not available"
        return f"{node} {state} in the latest run ({self.run_id})"


def load_run(config: PipelineConfig) -> RunView:
    """The latest run of config.pipeline_name recorded in the pipeline root's MLMD store."""
    store = open_store(config)
    if store is None:
        return RunView(absent_reason=f"no metadata store at {config.metadata_path}: the pipeline has not run here")
    run_context, executions = _latest_run(store, config.pipeline_name)
    if run_context is None:
        return RunView(absent_reason=f"no run of pipeline {config.pipeline_name!r} in {config.metadata_path}")
    view = RunView(run_id=run_context.name)
    node_of = {}
    for execution in sorted(executions, key=lambda e: e.id):  # a later execution of a node wins
        node = _node_name(store, execution.id, config.pipeline_name)
        if node:
            node_of[execution.id] = node
            view.states[node] = _EXECUTION_STATES.get(execution.last_known_state, "unknown")
    _collect_outputs(store, node_of, view)
    return view


def _latest_run(store, pipeline_name: str) -> Tuple[Any, List[Any]]:
    """(pipeline_run context, its executions) of the pipeline's newest execution; (None, []) if none."""
    pipeline_context = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if pipeline_context is None:
        return None, []
    executions = store.get_executions_by_context(pipeline_context.id)
    if not executions:
        return None, []
    newest = max(executions, key=lambda e: e.id)
    runs = [c for c in store.get_contexts_by_execution(newest.id) if c.type == "pipeline_run"]
    if not runs:
        return None, []
    return runs[0], store.get_executions_by_context(runs[0].id)


def _node_name(store, execution_id: int, pipeline_name: str) -> Optional[str]:
    prefix = f"{pipeline_name}."
    for context in store.get_contexts_by_execution(execution_id):
        if context.type == "node" and context.name.startswith(prefix):
            return context.name[len(prefix) :]
    return None


def _collect_outputs(store, node_of: Dict[int, str], view: RunView) -> None:
    if not node_of:
        return
    keyed: Dict[int, Tuple[str, str]] = {}
    for event in store.get_events_by_execution_ids(list(node_of)):
        if event.type != event.OUTPUT:
            continue
        keys = [step.key for step in event.path.steps if step.HasField("key")]
        if keys:
            keyed[event.artifact_id] = (node_of[event.execution_id], keys[0])
    if not keyed:
        return
    for artifact in sorted(store.get_artifacts_by_id(list(keyed)), key=lambda a: a.id):
        if artifact.state == artifact.LIVE:
            view.outputs[keyed[artifact.id]] = artifact


def artifact_property(artifact: Any, name: str, default: Any = None) -> Any:
    """A scalar custom property of an MLMD artifact."""
    if artifact is None or name not in artifact.custom_properties:
        return default
    value = artifact.custom_properties[name]
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind in ("int_value", "double_value", "string_value") else default


def component_timings(config: PipelineConfig) -> Dict[str, Dict]:
    """{node id: {'seconds', 'state'}} for the newest execution of each node of this pipeline."""
    store = open_store(config)
    if store is None:
        return {}
    timings: Dict[str, Dict] = {}
    prefix = f"{config.pipeline_name}."
    for context in store.get_contexts_by_type("node"):
        if not context.name.startswith(prefix):
            continue
        executions = store.get_executions_by_context(context.id)
        if not executions:
            continue
        latest = max(executions, key=lambda e: e.id)
        seconds = (latest.last_update_time_since_epoch - latest.create_time_since_epoch) / 1000.0
        state = _EXECUTION_STATES.get(latest.last_known_state, "unknown")
        timings[context.name[len(prefix) :]] = {"seconds": round(seconds, 1), "state": state}
    return timings


def latest_artifact_uri(config: PipelineConfig, node: str, output_key: str) -> Optional[str]:
    """URI of the newest live artifact that `node` published under `output_key`, in any run."""
    store = open_store(config)
    if store is None:
        return None
    # TFX attributes each node's executions to a context of type "node" named "<pipeline>.<node id>".
    context = store.get_context_by_type_and_name("node", f"{config.pipeline_name}.{node}")
    if context is None:
        return None
    executions = store.get_executions_by_context(context.id)
    candidates = []
    for event in store.get_events_by_execution_ids([e.id for e in executions]):
        keys = [step.key for step in event.path.steps if step.HasField("key")]
        if event.type == event.OUTPUT and output_key in keys:
            candidates.append(event.artifact_id)
    artifacts = store.get_artifacts_by_id(candidates) if candidates else []
    live = [a for a in artifacts if a.state == a.LIVE]
    return max(live, key=lambda a: a.id).uri if live else None


def change_decision(run: RunView) -> Optional[Dict[str, Any]]:
    """{changed, refused, reason, served_version} from the run's change check (components/change_check.py), or
    None when the run has none (a stage-limited run, or one that stopped before it)."""
    from components import change_check as cc

    artifact = run.artifact(sidecars.CHANGE_CHECK, cc.DECISION_KEY)
    if artifact is None:
        return None
    served = artifact_property(artifact, cc.SERVED_VERSION_PROPERTY, -1)
    return {
        "changed": bool(artifact_property(artifact, cc.CHANGED_PROPERTY, 1)),
        "refused": bool(artifact_property(artifact, cc.REFUSED_PROPERTY, 0)),
        "reason": artifact_property(artifact, cc.REASON_PROPERTY, ""),
        "served_version": served if served >= 0 else None,
    }

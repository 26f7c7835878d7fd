"""Executes a compiled KFP v2 package (the YAML `ftune compile` writes) task by task, the way the open-source KFP
backend's driver and launcher would, with local folders in place of the cluster.

What it stands in for, step by step (KFP backend 2.x, `backend/src/v2/driver` and `launcher`):

* run parameters: the API server's check of the run's parameters against the root `inputDefinitions` (unknown
  names and wrong types are refused; missing optional ones take their `defaultValue`);
* the DAG walk: tasks ordered by `dependentTasks` and the producers their inputs name; a task starts only after
  every task it depends on succeeded;
* the container driver: each input parameter resolved from a constant, a run parameter or an upstream output
  parameter; each input artifact is the upstream task's output artifact, with the URI and metadata that task's
  executor reported; each output artifact gets the URI `<pipeline_root>/<pipeline name>/<run id>/<task>/<key>`
  and the type from the component's output definitions; the executor-output file (`/tmp/kfp_outputs/...` in a
  pod) is a fresh per-task path;
* the driver's trigger condition: a task's `triggerPolicy.condition` (TFX compiles `tfx.dsl.Cond` into one, e.g.
  `(inputs.artifacts['_ChangeCheck.decision'].artifacts[0].metadata['changed'] == 1.0)`) is evaluated with a real
  CEL implementation (cel-python; KFP uses cel-go) over the task's resolved inputs, as KFP's driver does
  (`backend/src/v2/expression`, `Condition`): the variables are the ExecutorInput's fields (`inputs`: `artifacts`
  -> {key: {artifacts: [RuntimeArtifact: name, type, uri, metadata...]}}, `parameter_values`...; Struct numbers are
  doubles, as in cel-go). False: the task is skipped (no pod, no outputs), and every task that depends on it is
  skipped too without being looked at (the Argo DAG's `depends: <task>.Succeeded` omits them); the run still
  succeeds. A condition that cannot be evaluated (a missing metadata key, a parse or type error, a result that is
  not a bool) fails the run naming the task, as the driver's error fails the task;
* KFP's cache: for tasks whose `cachingOptions.enableCache` is true, a fingerprint of what KFP's cache key holds
  (input artifact names, parameter values, output artifact types, image, command and args, PVC names) is looked
  up in a cache file shared by executions under the same root; a hit reuses the earlier outputs without running
  anything, as KFP marks a task "cached";
* the pod: the container's `command` + `args` with KFP's placeholders resolved (kfp 2.5's `kfp.local` helpers),
  run in a subprocess whose environment is the image's (given by the caller) plus the container's `env`, whose
  working directory is a fresh folder (the image's WORKDIR), and whose `pvcMount`s (platform spec) are local
  folders reachable at the mount path;
* the launcher: it reads the executor output (`ExecutorOutput` JSON) and passes the reported artifacts and their
  metadata downstream; a non-zero exit fails the task and the run.

What it cannot check (needs a real cluster): the image itself (its Python, its installed packages: the caller
chooses the interpreter and PYTHONPATH), image pulls, scheduling, resources, GPUs, node selectors and tolerations
(read, never enforced), that only the mounted tasks can reach a volume (a local folder is visible to every process),
read-only root filesystems and the pod's user, a real object store (an s3:// pipeline root is served by a local S3
server, tests/s3_server.py; the launcher's copying of artifacts between /gcs, /minio, /s3 and the bucket is not
emulated: TFX's tasks read and write their URIs themselves), MLMD (artifact ids are made up here), the KFP UI,
retries, timeouts and lifecycle hooks (TFX's `preCacheCheck` on ExampleGen is ignored, as open-source KFP ignores
it), importer/resolver executors (refused; KFP's compiler also refuses a condition on an importer), and how long
anything takes on a cluster.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from typing import Any, Dict, List, Mapping, Optional

import celpy
import yaml
from celpy import celtypes
from google.protobuf import json_format
from kfp.local import executor_input_utils, executor_output_utils, placeholder_utils
from kfp.pipeline_spec import pipeline_spec_pb2

# Where the KFP launcher tells the executor to write its output metadata, inside the pod.
POD_OUTPUT_FILE = "kfp_outputs/output_metadata.json"
CACHE_FILE = "kfp_cache.json"
_PARAMETER_TYPES = pipeline_spec_pb2.ParameterType


class HarnessError(RuntimeError):
    """The package cannot run as KFP would run it (the message names the task and why)."""


class ConditionError(HarnessError):
    """A task's trigger condition cannot be evaluated; KFP's driver fails the task, so the run fails."""

    def __init__(self, task: str, condition: str, why: str):
        super().__init__(f"task {task}: trigger condition {condition!r} cannot be evaluated: {why}")
        self.task, self.condition = task, condition


class TaskFailed(HarnessError):
    def __init__(self, task: str, returncode: int, log_path: str):
        with open(log_path, errors="replace") as f:
            tail = f.read()[-6000:]
        super().__init__(f"task {task} exited with {returncode}; log {log_path}:\n{tail}")
        self.task, self.returncode, self.log_path = task, returncode, log_path


@dataclasses.dataclass
class TaskRun:
    name: str
    state: str  # "executed", "cached" or "skipped" (its condition was false, or a task it depends on was skipped)
    wall_s: float
    executor_input: Dict[str, Any]
    outputs: Dict[str, Dict[str, Any]]  # output key -> RuntimeArtifact as a dict (name, uri, type, metadata)
    output_parameters: Dict[str, Any]
    argv: List[str]
    log_path: str
    note: str = ""  # why a task was skipped


@dataclasses.dataclass
class Execution:
    run_id: str
    run_root: str  # <pipeline_root>/<pipeline name>/<run id>
    parameters: Dict[str, Any]  # the run's parameters, defaults filled in
    order: List[str]
    tasks: Dict[str, TaskRun]

    def artifact(self, task: str, key: str) -> Dict[str, Any]:
        return self.tasks[task].outputs[key]

    def states(self) -> Dict[str, str]:
        return {name: run.state for name, run in self.tasks.items()}

    def skipped(self) -> List[str]:
        return [name for name in self.order if self.tasks[name].state == "skipped"]


# --- reading the package -------------------------------------------------------------------------------------------


def read_package(package_path: str):
    """(PipelineSpec, PlatformSpec) from the YAML (or JSON) package; unknown fields are errors, as in KFP's API."""
    with open(package_path) as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    if not documents:
        raise HarnessError(f"{package_path} holds no pipeline spec")
    spec = json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec())
    platform = pipeline_spec_pb2.PlatformSpec()
    for document in documents[1:]:
        json_format.ParseDict(document, platform)
    return spec, platform


def task_order(spec) -> List[str]:
    """Tasks in an order where each comes after every task it depends on (ties by name, so runs are repeatable)."""
    upstream = _upstream(spec)
    for name, needs in upstream.items():
        if needs - set(upstream):
            raise HarnessError(f"task {name} depends on unknown tasks {sorted(needs - set(upstream))}")
    order: List[str] = []
    while len(order) < len(upstream):
        ready = sorted(n for n in upstream if n not in order and upstream[n] <= set(order))
        if not ready:
            raise HarnessError(f"the DAG has a cycle among {sorted(set(upstream) - set(order))}")
        order.append(ready[0])
    return order


def _upstream(spec) -> Dict[str, set]:
    tasks = spec.root.dag.tasks
    result = {}
    for name, task in tasks.items():
        needs = set(task.dependent_tasks)
        needs |= {a.task_output_artifact.producer_task for a in task.inputs.artifacts.values()}
        needs |= {p.task_output_parameter.producer_task for p in task.inputs.parameters.values()}
        result[name] = needs - {""}
    return result


def kubernetes_configs(platform) -> Dict[str, Dict[str, Any]]:
    """{executor label: the kfp-kubernetes executor config, as a dict}."""
    if "kubernetes" not in platform.platforms:
        return {}
    config = json_format.MessageToDict(platform.platforms["kubernetes"].deployment_spec)
    return config.get("executors", {})


# --- parameters ----------------------------------------------------------------------------------------------------


def _check_type(where: str, value: Any, parameter_type: int) -> Any:
    kind = _PARAMETER_TYPES.ParameterTypeEnum.Name(parameter_type)
    ok = {
        "STRING": isinstance(value, str),
        "NUMBER_INTEGER": isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer(),
        "NUMBER_DOUBLE": isinstance(value, (int, float)) and not isinstance(value, bool),
        "BOOLEAN": isinstance(value, bool),
        "LIST": isinstance(value, list),
        "STRUCT": isinstance(value, dict),
    }.get(kind, True)
    if not ok:
        raise HarnessError(f"{where}: {value!r} is not a {kind}")
    return int(value) if kind == "NUMBER_INTEGER" else value


def run_parameters(spec, given: Mapping[str, Any]) -> Dict[str, Any]:
    """The run's parameter values as the KFP API server accepts them: declared names only, typed, defaults filled."""
    declared = spec.root.input_definitions.parameters
    unknown = set(given) - set(declared)
    if unknown:
        raise HarnessError(f"run parameters {sorted(unknown)} are not inputs of the pipeline ({sorted(declared)})")
    values = {}
    for name, definition in declared.items():
        if name in given:
            values[name] = _check_type(f"run parameter {name}", given[name], definition.parameter_type)
        elif definition.HasField("default_value"):
            values[name] = _check_type(
                f"default of {name}", json_format.MessageToDict(definition.default_value), definition.parameter_type
            )
        elif not definition.is_optional:
            raise HarnessError(f"run parameter {name} is required (no default in the spec)")
    return values


# --- KFP's cache -----------------------------------------------------------------------------------------------------


def cache_fingerprint(executor_input: Dict[str, Any], container: Dict[str, Any], pvc_names: List[str]) -> str:
    """What KFP's cache key (backend/src/v2/cacheutils) is made of: input artifact names, input parameter values,
    output artifacts without their URIs, the image, command + args and PVC names."""
    inputs = executor_input.get("inputs", {})
    key = {
        "inputArtifactNames": {
            k: [a.get("name", "") for a in v.get("artifacts", [])] for k, v in inputs.get("artifacts", {}).items()
        },
        "inputParameterValues": inputs.get("parameterValues", {}),
        "outputArtifactsSpec": {
            k: {"name": v["artifacts"][0].get("name", ""), "type": v["artifacts"][0].get("type")}
            for k, v in executor_input["outputs"].get("artifacts", {}).items()
        },
        "containerSpec": {
            "image": container.get("image"),
            "cmdArgs": list(container.get("command", [])) + list(container.get("args", [])),
            "pvcNames": sorted(pvc_names),
        },
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


# --- trigger conditions (KFP's driver: backend/src/v2/expression, Condition) ---------------------------------------


def evaluate_condition(task: str, condition: str, executor_input: Dict[str, Any]) -> bool:
    """Whether the task runs: `condition` (CEL) over the ExecutorInput's fields, as KFP's driver evaluates it.

    The driver declares the ExecutorInput proto as CEL's context, so `inputs` and `outputs` are variables and every
    field reads by its proto name; it evaluates before provisioning outputs, so `outputs` is empty. Raises
    ConditionError (naming the task) when the expression does not parse or evaluate, or is not a bool."""
    message = json_format.ParseDict(
        {"inputs": executor_input.get("inputs", {})}, pipeline_spec_pb2.ExecutorInput(), ignore_unknown_fields=False
    )
    environment = celpy.Environment()
    try:
        program = environment.program(environment.compile(condition))
        activation = {field.name: _cel_field(message, field) for field in message.DESCRIPTOR.fields}
        result = program.evaluate(activation)
    except (celpy.CELParseError, celpy.CELEvalError) as exc:
        raise ConditionError(task, condition, _cel_error_text(exc)) from exc
    if isinstance(result, celpy.CELEvalError):
        raise ConditionError(task, condition, _cel_error_text(result))
    if not isinstance(result, celtypes.BoolType):
        raise ConditionError(task, condition, f"the result is not a bool: {result!r}")
    return bool(result)


def _cel_error_text(error: Exception) -> str:
    """cel-python's error as one line: "no such key: 'changed'", "no such overload: ...", the parse error."""
    if isinstance(error, celpy.CELParseError):
        return " ".join(str(error).split())
    args = getattr(error, "args", ())
    message = str(args[0]) if args else type(error).__name__
    details = args[2] if len(args) > 2 and isinstance(args[2], tuple) else ()
    shown = [repr(str(d)) if isinstance(d, celtypes.StringType) else str(d) for d in details]
    return ": ".join([message, ", ".join(shown)]) if shown else message


def _cel_field(message, field):
    """One proto field as cel-go presents it: maps as maps, repeated as lists, unset messages as their defaults."""
    value = getattr(message, field.name)
    if field.type == field.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return celtypes.MapType({_cel_scalar(k): _cel_single(value_field, v) for k, v in value.items()})
    if field.label == field.LABEL_REPEATED:
        return celtypes.ListType([_cel_single(field, v) for v in value])
    return _cel_single(field, value)


def _cel_single(field, value):
    if field.type == field.TYPE_MESSAGE:
        return _cel_message(value)
    if field.type == field.TYPE_ENUM:
        return celtypes.IntType(value)
    return _cel_scalar(value)


def _cel_message(message):
    kind = message.DESCRIPTOR.full_name
    if kind == "google.protobuf.Struct":
        return celtypes.MapType({celtypes.StringType(k): _cel_json(v) for k, v in message.fields.items()})
    if kind == "google.protobuf.ListValue":
        return celtypes.ListType([_cel_json(v) for v in message.values])
    if kind == "google.protobuf.Value":
        return _cel_json(message)
    return celtypes.MapType({celtypes.StringType(f.name): _cel_field(message, f) for f in message.DESCRIPTOR.fields})


def _cel_json(value):
    """A google.protobuf.Value: JSON numbers are doubles in CEL (so `metadata['changed'] == 1.0`, never `== 1`)."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return celtypes.DoubleType(value.number_value)
    if kind == "string_value":
        return celtypes.StringType(value.string_value)
    if kind == "bool_value":
        return celtypes.BoolType(value.bool_value)
    if kind == "struct_value":
        return _cel_message(value.struct_value)
    if kind == "list_value":
        return _cel_message(value.list_value)
    return None  # null_value (CEL null)


def _cel_scalar(value):
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.IntType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, bytes):
        return celtypes.BytesType(value)
    return celtypes.StringType(value)


# --- the execution -------------------------------------------------------------------------------------------------


def execute(
    package_path: str,
    pipeline_root: str,
    run_params: Optional[Mapping[str, Any]] = None,
    *,
    image_env: Mapping[str, str],
    volumes: Optional[Mapping[str, str]] = None,
    run_id: Optional[str] = None,
    local_dir: Optional[str] = None,
    task_timeout_s: float = 900,
    max_parallel: int = 2,
) -> Execution:
    """Runs every task of the package's DAG; returns what each task did and produced.

    Args:
      package_path: the compiled package (YAML: pipeline spec, then the Kubernetes platform spec).
      pipeline_root: the run's pipeline root (a run may override the spec's `defaultPipelineRoot`, as KFP's
        `pipeline_root` run option does): a local folder, or a bucket URI (s3://) the tasks read and write
        themselves, as on a cluster whose artifacts live in MinIO.
      local_dir: where the harness keeps KFP's cache file (KFP keeps it in its database, not the bucket) and the
        pods' folders; default: the pipeline root, which must then be local. Executions sharing it share the cache.
      run_params: the run's parameters (as `ftune submit --param` would send them).
      image_env: the environment of the image (PATH with its `python`, HOME, PYTHONPATH where the project is
        installed...): the only variables the tasks see, plus the container's own `env`.
      volumes: {PVC claim name: local folder standing in for the volume}. A task whose platform spec mounts the
        claim at `mountPath` finds the folder there (a symlink; the mount path's parent must be writable here).
      run_id: KFP's run id (default: a fresh uuid).
      task_timeout_s: per task.
      max_parallel: tasks running at once (KFP starts every ready task; a small machine cannot).
    Raises:
      TaskFailed: a task exited non-zero (the run stops there, as KFP's does).
      ConditionError: a task's trigger condition cannot be evaluated (the run stops there, as KFP's does).
      HarnessError: the package asks for something KFP would refuse or this harness cannot emulate.
    """
    spec, platform = read_package(package_path)
    parameters = run_parameters(spec, run_params or {})
    run_id = run_id or uuid.uuid4().hex[:12]
    if "://" in pipeline_root:
        if not local_dir:
            raise HarnessError(f"pipeline root {pipeline_root} is a URI: name a local_dir for the harness's own files")
        run_root = f"{pipeline_root.rstrip('/')}/{spec.pipeline_info.name}/{run_id}"
    else:
        run_root = os.path.join(os.path.abspath(pipeline_root), spec.pipeline_info.name, run_id)
    local_dir = os.path.abspath(local_dir or pipeline_root)
    pods_root = os.path.join(local_dir, ".pods", run_id)
    cache_path = os.path.join(local_dir, CACHE_FILE)
    cache = _load_json(cache_path)
    k8s = kubernetes_configs(platform)
    executors = json_format.MessageToDict(spec.deployment_spec).get("executors", {})

    order = task_order(spec)
    upstream = _upstream(spec)
    done: Dict[str, TaskRun] = {}

    def skip(name: str, note: str, executor_input: Optional[Dict[str, Any]] = None) -> None:
        done[name] = TaskRun(name, "skipped", 0.0, executor_input or {}, {}, {}, [], "", note)

    def prepare(name: str):
        """The driver's part: the executor input, the trigger condition, and a cache hit when KFP would find one.
        Returns None when the task is settled without a pod (skipped or cached)."""
        task = spec.root.dag.tasks[name]
        skipped_upstream = sorted(u for u in upstream[name] if done[u].state == "skipped")
        if skipped_upstream:
            # Argo's `depends: <task>.Succeeded` is false for a skipped task: the driver never runs.
            skip(name, f"depends on skipped task(s) {', '.join(skipped_upstream)}")
            return None
        component = spec.components[task.component_ref.name]
        executor = executors.get(component.executor_label, {})
        if set(executor) != {"container"}:
            raise HarnessError(
                f"task {name}: executor {component.executor_label} is {sorted(executor)}, not a container"
            )
        mounts = k8s.get(component.executor_label, {}).get("pvcMount", [])
        pod_dir = os.path.join(pods_root, name)
        executor_input = _executor_input(spec, name, component, parameters, done, run_root, pod_dir)
        condition = task.trigger_policy.condition
        if condition and not evaluate_condition(name, condition, executor_input):
            skip(name, f"condition false: {condition}", {"inputs": executor_input.get("inputs", {})})
            return None
        fingerprint = cache_fingerprint(executor_input, executor["container"], [m.get("constant", "") for m in mounts])
        if task.caching_options.enable_cache and fingerprint in cache:
            hit = cache[fingerprint]
            done[name] = TaskRun(name, "cached", 0.0, executor_input, hit["outputs"], hit["parameters"], [], "")
            return None
        _mount(name, mounts, volumes or {})
        return component, executor["container"], executor_input, pod_dir, fingerprint

    def launch(name, component, container, executor_input, pod_dir):
        """The pod and the launcher's part; runs in a worker thread."""
        started = time.time()
        argv, log_path = _run_pod(name, container, executor_input, component, image_env, pod_dir, task_timeout_s)
        outputs, output_parameters = _collect_outputs(name, component, executor_input, run_id)
        return TaskRun(
            name, "executed", time.time() - started, executor_input, outputs, output_parameters, argv, log_path
        )

    # Like KFP, every task whose upstream tasks finished starts (up to `max_parallel` at once); the first failure
    # (a pod's, or a driver's: a condition that cannot be evaluated) lets the running ones finish and stops the run.
    running: Dict[Any, tuple] = {}
    failure: Optional[BaseException] = None
    with concurrent.futures.ThreadPoolExecutor(max_workers=max_parallel) as pool:
        while len(done) < len(order) and failure is None:
            started_any = settled_any = False
            for name in order:
                busy = {n for n, _ in running.values()}
                if name in done or name in busy or not upstream[name] <= set(done) or len(running) >= max_parallel:
                    continue
                try:
                    prepared = prepare(name)
                except HarnessError as exc:
                    failure = exc
                    break
                started_any = True
                settled_any = settled_any or prepared is None
                if prepared is not None:
                    component, container, executor_input, pod_dir, fingerprint = prepared
                    future = pool.submit(launch, name, component, container, executor_input, pod_dir)
                    running[future] = (name, fingerprint)
            if failure is not None:
                break
            if settled_any or not running:
                if not started_any:
                    raise HarnessError(f"no task can start; waiting: {sorted(set(order) - set(done))}")
                continue
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                name, fingerprint = running.pop(future)
                try:
                    done[name] = future.result()
                except BaseException as exc:  # noqa: B036 -- re-raised once the running tasks are done
                    failure = failure or exc
                    continue
                if spec.root.dag.tasks[name].caching_options.enable_cache:
                    cache[fingerprint] = {"outputs": done[name].outputs, "parameters": done[name].output_parameters}
                    _write_json(cache_path, cache)
        for future in concurrent.futures.as_completed(list(running)):
            name, _ = running.pop(future)
            try:
                done[name] = future.result()
            except BaseException as exc:  # noqa: B036
                failure = failure or exc
    if failure is not None:
        raise failure
    return Execution(run_id, run_root, parameters, order, done)


def _executor_input(spec, name, component, parameters, done, run_root, pod_dir) -> Dict[str, Any]:
    task = spec.root.dag.tasks[name]
    values: Dict[str, Any] = {}
    for key, definition in component.input_definitions.parameters.items():
        where = f"task {name} input parameter {key}"
        wiring = task.inputs.parameters.get(key)
        kind = wiring.WhichOneof("kind") if wiring is not None else None
        if kind == "runtime_value":
            value = json_format.MessageToDict(wiring.runtime_value.constant)
        elif kind == "component_input_parameter":
            if wiring.component_input_parameter not in parameters:
                raise HarnessError(
                    f"{where} reads run parameter {wiring.component_input_parameter}, which has no value"
                )
            value = parameters[wiring.component_input_parameter]
        elif kind == "task_output_parameter":
            producer = wiring.task_output_parameter
            value = done[producer.producer_task].output_parameters[producer.output_parameter_key]
        elif definition.HasField("default_value"):
            value = json_format.MessageToDict(definition.default_value)
        elif definition.is_optional:
            continue
        else:
            raise HarnessError(f"{where} has no value")
        values[key] = _check_type(where, value, definition.parameter_type)

    artifacts: Dict[str, Any] = {}
    for key in component.input_definitions.artifacts:
        wiring = task.inputs.artifacts.get(key)
        if wiring is None or not wiring.task_output_artifact.producer_task:
            raise HarnessError(f"task {name} input artifact {key} does not come from an upstream task")
        producer = wiring.task_output_artifact
        produced = done[producer.producer_task].outputs.get(producer.output_artifact_key)
        if produced is None:
            raise HarnessError(
                f"task {name} reads {producer.producer_task}.{producer.output_artifact_key}, never written"
            )
        artifacts[key] = {"artifacts": [produced]}

    outputs: Dict[str, Any] = {"artifacts": {}, "outputFile": os.path.join(pod_dir, "tmp", POD_OUTPUT_FILE)}
    for key, definition in component.output_definitions.artifacts.items():
        artifact = pipeline_spec_pb2.RuntimeArtifact(type=definition.artifact_type, uri=f"{run_root}/{name}/{key}")
        outputs["artifacts"][key] = {"artifacts": [json_format.MessageToDict(artifact)]}
    if component.output_definitions.parameters:
        outputs["parameters"] = {
            key: {"outputFile": os.path.join(pod_dir, "tmp", "kfp", "outputs", key)}
            for key in component.output_definitions.parameters
        }
    executor_input = {"inputs": {"parameterValues": values, "artifacts": artifacts}, "outputs": outputs}
    # Round trip through the proto: what the driver hands over is a valid ExecutorInput, ints typed as in KFP.
    message = json_format.ParseDict(executor_input, pipeline_spec_pb2.ExecutorInput())
    return executor_input_utils.executor_input_to_dict(message, component)


def _mount(task: str, mounts: List[Dict[str, Any]], volumes: Mapping[str, str]) -> None:
    for mount in mounts:
        claim, path = mount.get("constant", ""), mount.get("mountPath", "")
        if claim not in volumes:
            raise HarnessError(f"task {task} mounts PVC {claim!r} at {path}; pass volumes={{{claim!r}: folder}}")
        target = os.path.abspath(volumes[claim])
        os.makedirs(target, exist_ok=True)
        if os.path.islink(path) and os.path.realpath(path) == os.path.realpath(target):
            continue
        if os.path.lexists(path):
            raise HarnessError(f"task {task}: mount path {path} already exists and is not the volume {target}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(target, path)


def _run_pod(name, container, executor_input, component, image_env, pod_dir, timeout_s):
    workdir = os.path.join(pod_dir, "workdir")
    os.makedirs(workdir, exist_ok=True)
    os.makedirs(os.path.join(pod_dir, "tmp"), exist_ok=True)
    argv = placeholder_utils.replace_placeholders(
        full_command=list(container.get("command", [])) + list(container.get("args", [])),
        executor_input_dict=executor_input,
        pipeline_resource_name="harness",
        task_resource_name=name,
        pipeline_root=os.path.dirname(os.path.dirname(pod_dir)),
    )
    env = dict(image_env)
    env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
    program = shutil.which(argv[0], path=env.get("PATH", ""))
    if program is None:
        raise HarnessError(f"task {name}: {argv[0]!r} is not on the image's PATH {env.get('PATH')!r}")
    log_path = os.path.join(pod_dir, "log.txt")
    with open(log_path, "w") as log:
        try:
            result = subprocess.run(
                [program, *argv[1:]], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s
            )
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"task {name} ran longer than {timeout_s} s; log {log_path}") from exc
    if result.returncode != 0:
        raise TaskFailed(name, result.returncode, log_path)
    return argv, log_path


def _collect_outputs(name, component, executor_input, run_id):
    """The launcher's part: output artifacts as provisioned, updated with what the executor reported."""
    message = json_format.ParseDict(executor_input, pipeline_spec_pb2.ExecutorInput())
    reported = executor_output_utils.load_executor_output(message.outputs.output_file)
    undeclared = set(reported.artifacts) - set(component.output_definitions.artifacts)
    if undeclared:
        raise HarnessError(f"task {name} reported artifacts {sorted(undeclared)} its component does not declare")
    outputs = {}
    for key, provisioned in executor_input["outputs"]["artifacts"].items():
        artifact = dict(provisioned["artifacts"][0])
        if key in reported.artifacts and reported.artifacts[key].artifacts:
            report = json_format.MessageToDict(reported.artifacts[key].artifacts[0])
            if report.get("uri") and report["uri"] != artifact["uri"]:
                raise HarnessError(f"task {name} moved output {key} to {report['uri']} (provisioned {artifact['uri']})")
            artifact["metadata"] = report.get("metadata", {})
        # MLMD gives every recorded artifact an id; downstream executors see it as the artifact's name.
        artifact["name"] = f"{run_id}/{name}/{key}"
        outputs[key] = artifact
    parameters = {k: executor_output_utils.pb2_value_to_python(v) for k, v in reported.parameter_values.items()}
    return outputs, parameters


def _load_json(path: str) -> Dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, value: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)

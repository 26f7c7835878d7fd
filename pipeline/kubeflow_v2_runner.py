"""Compile the pipeline for Kubeflow Pipelines v2 (the open-source KFP 2.x backend).

TFX template style: `create_pipeline` (pipeline/pipeline.py) builds the one pipeline definition, TFX's
`KubeflowV2DagRunner` compiles it to a KFP pipeline spec (schema 2.1), and this module adds what TFX's compiler
does not express for open-source KFP before writing the package that `ftune submit` and the retraining CronJob
send to the KFP API:

  * the Trainer (only) gets CPU, memory and the GPU through TFX's own hook, `with_platform_config(ResourceSpec)`,
    applied by node id after `create_pipeline` returns, so the definition stays runner-agnostic;
  * Kubernetes settings go into KFP's platform spec, the second YAML document (`platforms: kubernetes:`) that the
    KFP compiler writes for kfp-kubernetes, keyed by executor label: the GPU pool's node selector and tolerations
    on the Trainer, and the serving PVC on the components whose settings name the serving directory (Pusher, the
    served-model baseline), unless models are pushed to gs:// or s3://;
  * defaults for the runtime parameters (TFX's YAML writer drops them, and KFP then demands every one per run);
  * caching off for the source components, which read folders outside the pipeline;
  * the pipeline root as the spec's `defaultPipelineRoot`;
  * a check that only container and importer executors remain: open-source KFP has no `resolver` executor.

Every pod runs the project image with `python -m pipeline.kfp_executor --executor_class_path ...`: TFX's own
container entrypoint (kubeflow_v2_run_executor) with s3:// registered when the task names it, and the exit code kept
(pipeline/kfp_executor.py); the image installs the project, so the executors and module functions (`components.*`)
import by path. With an s3:// path, Beam's worker processes import tensorflow_io too (`--beam_plugins`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from pipeline import object_stores
from pipeline.configs import KUBEFLOW_BEAM_ARGS, ConfigError, KubeflowConfig, PipelineConfig
from serving import sidecars
from trainer.settings import run_parameter_types

log = logging.getLogger("ftune")

# What users change per run, as KFP run parameters: name -> (config section, field, type). The compiled
# defaults are the configured values. The Trainer's share is the one table of what its component accepts as a run
# parameter (trainer/settings.py RUN_PARAMETER_FIELDS); data_root feeds ImageExampleGen, accuracy_floor the Evaluator.
RUNTIME_KNOBS: Dict[str, Tuple[str, str, type]] = {
    "data_root": ("data", "data_root", str),
    **{name: ("trainer", name, kind) for name, kind in run_parameter_types().items()},
    "accuracy_floor": ("eval", "accuracy_floor", float),
}
# A run parameter that is no setting: 1 trains even when the change check finds nothing new (`ftune run --force`).
FORCE_PARAMETER = "force"
RUN_PARAMETERS = (*RUNTIME_KNOBS, FORCE_PARAMETER)
# The pods' command (pipeline/kfp_executor.py): TFX's container entrypoint, with s3:// and the exit code handled.
POD_COMMAND = ["python", "-m", "pipeline.kfp_executor"]
# Push destinations TFX writes to directly (no volume); anything else is a path on the serving PVC.
REMOTE_PUSH_SCHEMES = ("gs://", "s3://")
# Executor kinds that open-source KFP runs. TFX's Resolver nodes compile to `resolver`, which it rejects.
SUPPORTED_EXECUTORS = ("container", "importer")
# TFX reads and writes artifacts at their URIs itself (tf.io.gfile / Beam); it cannot use KFP's minio:// default.
_UNUSABLE_ROOT_SCHEMES = ("minio://",)
_MEMORY_UNITS = {
    "": 1,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


class KubeflowCompileError(ValueError):
    """The compiled spec would not run on open-source KFP (the message says which task and why)."""


# --- the entry point ---------------------------------------------------------------------------------------------


def compile_pipeline(
    config: PipelineConfig,
    output_path: str,
    image: Optional[str] = None,
    pipeline_root: Optional[str] = None,
    data_root: Optional[str] = None,
    beam_args: Optional[Sequence[str]] = None,
) -> str:
    """Compiles the pipeline to a KFP package (YAML, or JSON by extension); returns `output_path`.

    Args:
      config: the typed configuration; not modified.
      output_path: `*.yaml`/`*.yml` (pipeline spec + Kubernetes platform spec) or `*.json` (pipeline spec only,
        so only when no Kubernetes settings are needed).
      image: container image for every step (default: config.kubeflow.image).
      pipeline_root: artifact root the pods write to, gs:// (default: config.pipeline_root).
      data_root: image folder as the pods see it (default: config.data.data_root); also the default of the
        `data_root` run parameter.
      beam_args: Beam pipeline args for the Beam-based components (default: config.beam_args, else
        configs.KUBEFLOW_BEAM_ARGS: a fixed number of workers, as 0 would count the node's cores, not the pod's
        CPU share).
    """
    config = kubeflow_config(config, image=image, pipeline_root=pipeline_root, data_root=data_root)
    pipeline = build_pipeline(config, beam_args)
    spec = compile_spec(pipeline, config.kubeflow.image)
    finish_spec(spec, pipeline, config)
    write_package(spec, platform_spec(spec, config), output_path)
    log.info("compiled %d tasks to %s", len(spec.root.dag.tasks), output_path)
    return output_path


# --- configuration checks ----------------------------------------------------------------------------------------


def kubeflow_config(
    config: PipelineConfig,
    image: Optional[str] = None,
    pipeline_root: Optional[str] = None,
    data_root: Optional[str] = None,
) -> PipelineConfig:
    """A validated copy of `config` with the overrides applied and the serving directory placed on the PVC."""
    config = copy.deepcopy(config)
    if image:
        config.kubeflow.image = image
    if pipeline_root:
        config.pipeline_root = pipeline_root
    if data_root:
        config.data.data_root = data_root
    config.validate()
    _check_pipeline_root(config.pipeline_root)
    if not config.data.data_root:
        raise ConfigError(
            "data.data_root (--data-root) is required for Kubeflow: the pods read the images from "
            "there (sample data is generated for local runs only)"
        )
    if "://" not in config.data.data_root and not os.path.isabs(config.data.data_root):
        raise ConfigError(
            f"data.data_root (--data-root) must be an absolute path in the pods or a URI for "
            f"Kubeflow, got {config.data.data_root!r}"
        )
    if not config.kubeflow.image:
        raise ConfigError("kubeflow.image (--image) is required for Kubeflow")
    if ":" not in config.kubeflow.image.rsplit("/", 1)[-1] or config.kubeflow.image.endswith(":latest"):
        log.warning(
            "kubeflow.image %s has no fixed tag: pods of one run may pull different images", config.kubeflow.image
        )
    if not uses_remote_push(config):
        _place_serving_dir_on_volume(config)
    return config


def _check_pipeline_root(root: str) -> None:
    if "://" not in root or root.startswith(_UNUSABLE_ROOT_SCHEMES):
        raise ConfigError(
            f"pipeline_root (--pipeline-root) must be a gs:// or s3:// URI (MinIO: s3://) for Kubeflow, got "
            f"{root!r}: TFX components read and write their artifacts at that URI themselves"
        )


def uses_remote_push(config: PipelineConfig) -> bool:
    """True when the Pusher writes to gs:// or s3://, so no serving volume is mounted anywhere."""
    return config.push.serving_dir.startswith(REMOTE_PUSH_SCHEMES)


def _place_serving_dir_on_volume(config: PipelineConfig) -> None:
    """Models go to the PVC that TF Serving reads: push.serving_dir defaults to the mount path, and must be below
    it (a path elsewhere would be inside the pod and vanish with it)."""
    k = config.kubeflow
    mount = k.serving_mount_path.rstrip("/") or "/"
    if not k.serving_pvc:
        raise ConfigError("kubeflow.serving_pvc is empty, so push.serving_dir must be a gs:// or s3:// URI")
    if not config.push.serving_dir:
        config.push.serving_dir = mount
    elif not _is_under(config.push.serving_dir, mount):
        raise ConfigError(
            f"push.serving_dir {config.push.serving_dir!r} must be below kubeflow.serving_mount_path "
            f"{mount!r} (where the PVC {k.serving_pvc!r} is mounted) or a gs:// / s3:// URI"
        )


def _is_under(path: str, root: str) -> bool:
    path, root = os.path.normpath(path), os.path.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve_split_mode(config: PipelineConfig) -> str:
    """An explicit data.split_mode, or "auto" resolved by looking at the folder when this machine can see it.

    The layout is fixed at compile time; a remote folder cannot be inspected here, and guessing "hash" for a
    pre-split folder would silently train on the classes "train" and "validation"."""
    data = config.data
    if data.split_mode != "auto":
        return data.split_mode
    if not os.path.isdir(data.data_root):
        raise ConfigError(
            f"data.split_mode is 'auto' but {data.data_root} is not visible from this machine: set "
            "--set data.split_mode=hash (class folders at the top) or presplit (train/ + validation/)"
        )
    from components.image_example_gen import resolve_split_mode as resolve

    return resolve(data.data_root, "auto", data.train_dir, data.eval_dir)


# --- building and compiling ----------------------------------------------------------------------------------------


def runtime_parameters(config: PipelineConfig) -> Dict[str, Any]:
    """{name: RuntimeParameter} for RUN_PARAMETERS: the RUNTIME_KNOBS defaulting to the configured values, and
    `force` defaulting to 0."""
    from tfx.orchestration.data_types import RuntimeParameter

    params = {}
    for name, (section, field, ptype) in RUNTIME_KNOBS.items():
        value = getattr(getattr(config, section), field)
        params[name] = RuntimeParameter(name=name, ptype=ptype, default=ptype(value))
    params[FORCE_PARAMETER] = RuntimeParameter(name=FORCE_PARAMETER, ptype=int, default=0)
    return params


def build_pipeline(config: PipelineConfig, beam_args: Optional[Sequence[str]] = None):
    """create_pipeline's pipeline for Kubeflow (`config` from kubeflow_config), Trainer resources attached. The
    training profile is resolved by the Trainer pod's GPUs (kubeflow.gpu_count) before the run parameters take
    their defaults from the trainer settings."""
    from pipeline.pipeline import create_pipeline, resolve_profile
    from trainer.profiles import Hardware

    config, choice = resolve_profile(config, Hardware(config.kubeflow.gpu_count, "kubeflow.gpu_count"))
    pipeline = create_pipeline(
        config,
        data_root=config.data.data_root,
        split_mode=resolve_split_mode(config),
        stop_after="push",
        enable_cache=True,
        metadata_connection_config=None,  # KFP brings its own MLMD
        beam_pipeline_args=object_stores.beam_plugin_args(
            config.storage_paths().values(), list(beam_args or config.beam_args or KUBEFLOW_BEAM_ARGS)
        ),
        runtime_parameters=runtime_parameters(config),
        profile_choice=choice,
    )
    request_trainer_resources(pipeline, config.kubeflow)
    return pipeline


def find_node(pipeline, node_id: str):
    for node in pipeline.components:
        if node.id == node_id:
            return node
    raise KubeflowCompileError(
        f"create_pipeline returned no node with id {node_id!r} (nodes: {', '.join(n.id for n in pipeline.components)})"
    )


def request_trainer_resources(pipeline, kubeflow: KubeflowConfig) -> None:
    """CPU/memory limits and the GPU on the Trainer task; the other tasks keep the cluster's defaults.

    Only limits are set: Kubernetes then requests the same amounts (Guaranteed QoS for the training pod), and older
    KFP backends that know no request fields still read the spec."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    resources = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec(
        cpu_limit=float(kubeflow.trainer_cpu),
        memory_limit=memory_gb(kubeflow.trainer_memory),
    )
    if kubeflow.gpu_count > 0:
        # Open-source KFP uses the type verbatim as the Kubernetes resource name, e.g. nvidia.com/gpu.
        resources.accelerator.type = kubeflow.gpu_type
        resources.accelerator.count = kubeflow.gpu_count
    find_node(pipeline, sidecars.TRAINER).with_platform_config(resources)


def memory_gb(quantity: str) -> float:
    """A Kubernetes memory quantity ("16Gi", "512M") in the decimal GB that ResourceSpec.memory_limit holds."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTPE]i|[kMGTPE])?\s*", str(quantity))
    if not match:
        raise ConfigError(f"kubeflow.trainer_memory must be a Kubernetes quantity like 16Gi, got {quantity!r}")
    return float(match.group(1)) * _MEMORY_UNITS[match.group(2) or ""] / 1e9


def compile_spec(pipeline, image: str):
    """TFX's KubeflowV2DagRunner, schema 2.1, in memory; returns the PipelineSpec proto."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    from tfx.orchestration.kubeflow.v2.kubeflow_v2_dag_runner import KubeflowV2DagRunner, KubeflowV2DagRunnerConfig

    runner = KubeflowV2DagRunner(
        config=KubeflowV2DagRunnerConfig(
            default_image=image, default_commands=list(POD_COMMAND), use_pipeline_spec_2_1=True
        )
    )
    job = runner.run(pipeline, write_out=False)
    return json_format.ParseDict(job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())


# --- post-processing of the compiled spec --------------------------------------------------------------------------


def finish_spec(spec, pipeline, config: PipelineConfig) -> None:
    check_executors(spec)
    set_parameter_defaults(spec, pipeline)
    disable_cache_for_sources(spec)
    set_s3_endpoint(spec, config.kubeflow.s3_endpoint)
    spec.default_pipeline_root = config.pipeline_root


def set_s3_endpoint(spec, endpoint: str) -> None:
    """AWS_ENDPOINT_URL in every container (pipeline/object_stores.py derives TensorFlow's S3_ENDPOINT from it)."""
    if not endpoint:
        return
    for executor in spec.deployment_spec.fields["executors"].struct_value.fields.values():
        container = executor.struct_value.fields.get("container")
        if container is not None:
            env = container.struct_value.get_or_create_list("env")
            env.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})


def executor_kinds(spec) -> Dict[str, List[str]]:
    """{executor label: the executor kinds it has (container, importer, resolver, ...)}."""
    from google.protobuf import json_format

    executors = json_format.MessageToDict(spec.deployment_spec).get("executors", {})
    return {label: sorted(body) for label, body in executors.items()}


def check_executors(spec) -> None:
    """Fails when a task needs an executor kind open-source KFP does not run (TFX Resolvers compile to one)."""
    for label, kinds in executor_kinds(spec).items():
        unsupported = [k for k in kinds if k not in SUPPORTED_EXECUTORS]
        if unsupported or not kinds:
            raise KubeflowCompileError(
                f"executor {label} is {'/'.join(unsupported) or 'empty'}; open-source Kubeflow Pipelines runs only "
                f"{' and '.join(SUPPORTED_EXECUTORS)} executors (replace Resolver nodes with a component)"
            )


def set_parameter_defaults(spec, pipeline) -> None:
    """Gives every pipeline parameter its RuntimeParameter's default and marks it optional.

    TFX keeps the defaults only in the PipelineJob's runtimeConfig, which its YAML output drops; without them KFP
    would require every parameter at submission."""
    from tfx.orchestration.data_types import RuntimeParameter

    defaults = {}
    for node in pipeline.components:
        for value in node.exec_properties.values():
            if isinstance(value, RuntimeParameter):
                defaults[value.name] = value.default
    for name, parameter in spec.root.input_definitions.parameters.items():
        if defaults.get(name) is None:
            raise KubeflowCompileError(f"run parameter {name!r} has no default")
        parameter.default_value.CopyFrom(_proto_value(defaults[name]))
        parameter.is_optional = True


def _proto_value(value: Any):
    from google.protobuf import struct_pb2

    result = struct_pb2.Value()
    if isinstance(value, bool):
        result.bool_value = value
    elif isinstance(value, (int, float)):
        result.number_value = value
    else:
        result.string_value = str(value)
    return result


# Tasks that read folders outside the pipeline (the data, the serving volume), which change between runs while
# their settings stay the same.
SOURCE_NODES = (sidecars.CHANGE_CHECK, sidecars.EXAMPLE_GEN, sidecars.SERVED_MODEL_BASELINE)


def disable_cache_for_sources(spec) -> None:
    """The change check, ImageExampleGen and the served-model baseline read folders that change between runs while
    their settings stay the same, so a KFP cache hit would replay last week's decision, data or served model. (TFX's
    file-fingerprint driver, which would notice, runs only on Vertex AI.) Their tasks are named by node id: under
    the change check's Cond every guarded task has the decision as an input artifact."""
    for name, task in spec.root.dag.tasks.items():
        if name in SOURCE_NODES:
            task.caching_options.enable_cache = False


# --- the Kubernetes platform spec -----------------------------------------------------------------------------------


def executor_label(spec, task_name: str) -> str:
    return spec.components[spec.root.dag.tasks[task_name].component_ref.name].executor_label


def gpu_tolerations(kubeflow: KubeflowConfig) -> List[Dict[str, Any]]:
    """kubeflow.gpu_tolerations, copied (the default tolerates the GPU pool's usual taint)."""
    return [dict(t) for t in kubeflow.gpu_tolerations]


def trainer_kubernetes_config(kubeflow: KubeflowConfig) -> Dict[str, Any]:
    """Node selector and tolerations of the GPU pool (nothing when no GPU is requested)."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s

    if kubeflow.gpu_count <= 0:
        return {}
    config = k8s.KubernetesExecutorConfig()
    config.node_selector.labels.update(kubeflow.gpu_node_selector)
    result = json_format.MessageToDict(config)
    tolerations = gpu_tolerations(kubeflow)
    if tolerations:
        # KubernetesExecutorConfig.tolerations (field 12, KFP backend >= 2.1); the pinned kfp-kubernetes 1.0.0 proto
        # predates it, so it is written as the JSON the newer proto defines.
        result["tolerations"] = tolerations
    return result


def needs_serving_volume(spec, task_name: str, serving_model_dir: str) -> bool:
    """True when one of the task's settings names the serving model directory (the Pusher's push destination, the
    baseline's serving_model_dir): the data-driven form of "mounted where it is needed and nowhere else"."""
    task = spec.root.dag.tasks[task_name]
    for parameter in task.inputs.parameters.values():
        constant = parameter.runtime_value.constant
        if constant.WhichOneof("kind") == "string_value" and serving_model_dir in constant.string_value:
            return True
    return False


def volume_kubernetes_config(config: PipelineConfig) -> Dict[str, Any]:
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s

    mount = k8s.PvcMount(constant=config.kubeflow.serving_pvc, mount_path=config.kubeflow.serving_mount_path)
    return json_format.MessageToDict(k8s.KubernetesExecutorConfig(pvc_mount=[mount]))


def s3_credentials_kubernetes_config(secret: str) -> Dict[str, Any]:
    """The S3 keys from `secret` (KFP's MinIO secret layout: accesskey, secretkey) as the AWS variables."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s

    keys = [("accesskey", "AWS_ACCESS_KEY_ID"), ("secretkey", "AWS_SECRET_ACCESS_KEY")]
    as_env = k8s.SecretAsEnv(
        secret_name=secret,
        key_to_env=[k8s.SecretAsEnv.SecretKeyToEnvMap(secret_key=k, env_var=v) for k, v in keys],
    )
    return json_format.MessageToDict(k8s.KubernetesExecutorConfig(secret_as_env=[as_env]))


def platform_spec(spec, config: PipelineConfig):
    """The `platforms: kubernetes:` document, built with the KFP compiler's own helpers."""
    from kfp.compiler import pipeline_spec_builder as builder
    from kfp.pipeline_spec import pipeline_spec_pb2

    result = pipeline_spec_pb2.PlatformSpec()
    for task_name in sorted(spec.root.dag.tasks):
        task_config: Dict[str, Any] = {}
        if task_name == sidecars.TRAINER:
            task_config.update(trainer_kubernetes_config(config.kubeflow))
        if not uses_remote_push(config) and needs_serving_volume(spec, task_name, config.serving_model_dir):
            task_config.update(volume_kubernetes_config(config))
        if config.kubeflow.s3_credentials_secret:
            task_config.update(s3_credentials_kubernetes_config(config.kubeflow.s3_credentials_secret))
        if task_config:
            builder.merge_platform_specs(
                result,
                builder.platform_config_to_platform_spec({"kubernetes": task_config}, executor_label(spec, task_name)),
            )
    return result


# --- reading and writing packages ----------------------------------------------------------------------------------


def write_package(spec, platform, output_path: str) -> None:
    """Writes like the KFP compiler: YAML with the platform spec as a second document, or JSON (spec only)."""
    from kfp.compiler import pipeline_spec_builder
    from tfx import version

    if output_path.endswith(".json") and platform.platforms:
        raise ConfigError(
            f"{output_path}: Kubernetes settings (GPU node selector, serving volume) need a .yaml "
            "package; KFP's JSON format has no place for them"
        )
    if not output_path.endswith((".json", ".yaml", ".yml")):
        raise ConfigError(f"{output_path}: the package must end with .yaml (or .json)")
    directory = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(directory, exist_ok=True)
    description = f"ftune: compiled from pipeline.pipeline.create_pipeline with TFX {version.__version__}"
    pipeline_spec_builder.write_pipeline_spec_to_file(spec, description, platform, output_path)


def read_package(path: str):
    """(PipelineSpec, PlatformSpec) from a package written by write_package (or the KFP compiler)."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    with open(path) as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    if not documents:
        raise ValueError(f"{path} holds no pipeline spec")
    spec = json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec())
    platform = pipeline_spec_pb2.PlatformSpec()
    for document in documents[1:]:
        json_format.ParseDict(document, platform)
    return spec, platform


def kubernetes_executor_configs(platform) -> Dict[str, Dict[str, Any]]:
    """{executor label: its Kubernetes executor config as a dict} from a PlatformSpec."""
    from google.protobuf import json_format

    if "kubernetes" not in platform.platforms:
        return {}
    deployment = json_format.MessageToDict(platform.platforms["kubernetes"].deployment_spec)
    return json.loads(json.dumps(deployment.get("executors", {})))

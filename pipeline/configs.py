"""The one typed configuration of the product, composed of the sections each layer owns.

Each layer owns the typed settings it reads, with their defaults and checks: `trainer/settings.py` (`trainer:`),
`components/settings.py` (`data:`, `eval:`), `serving/settings.py` (`push:`); the Kubeflow section and the
top-level keys are here. The CLI (`ftune ... --config FILE --set key=value`), the local runner and the Kubeflow
compiler all start from `PipelineConfig`; no other module carries its own magic constants.

Overrides use dotted keys, e.g. `--set trainer.phase1_epochs=3 --set data.eval_fraction=0.25`. Values are
parsed according to the field's declared type, and an unknown key or a badly typed value is an error that names
the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Set

import yaml

from components.settings import SPAN_SELECTIONS, SPLIT_MODES, DataConfig, EvalConfig, span_window
from serving.settings import MODEL_NAME, TFLITE_MODES, PushConfig
from trainer.settings import (
    BASE_MODEL_LAYERS,
    BASE_MODELS,
    CLASS_WEIGHTINGS,
    PHASE1_MODES,
    PHASE2_LR_SCHEDULES,
    PHASE2_MODES,
    WARM_START_MODES,
    ConfigError,
    TrainerConfig,
    check,
)

# The sections and their names, re-exported: callers above the components read every setting from here.
__all__ = [
    "BASE_MODEL_LAYERS",
    "BASE_MODELS",
    "CLASS_WEIGHTINGS",
    "PHASE1_MODES",
    "PHASE2_LR_SCHEDULES",
    "PHASE2_MODES",
    "SPAN_SELECTIONS",
    "SPLIT_MODES",
    "TFLITE_MODES",
    "WARM_START_MODES",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "KubeflowConfig",
    "PipelineConfig",
    "PushConfig",
    "TrainerConfig",
    "load_config",
    "set_value",
    "span_window",
]

PIPELINE_NAME = "ftune"

# Beam arguments used when `beam_args` is empty. Locally: Beam's FnApiRunner in the pipeline's own process
# (`in_memory`). Multi-process mode starts fresh worker processes for every Beam component, each importing
# TensorFlow and TFX again: measured on cats vs dogs (3000 images, 2-core machine, one invocation, the same
# settings), ImageExampleGen + StatisticsGen + Transform + Evaluator took 116 s in multi_processing mode and 60 s
# in memory (multi_threading: 56 s, within noise of in_memory); the work itself (decoding, TF ops) still uses
# both cores through TensorFlow's own threads. Inside a Kubeflow pod: 4 worker processes, whose CPU request the
# spec sets (not measured there). The runner is named because Beam 2.74's default "DirectRunner" first tries its
# Prism runner, which downloads a binary from github.com on every Beam step: a hang where egress is dropped, a
# different runner where it is allowed.
LOCAL_BEAM_ARGS = ("--runner=FnApiRunner", "--direct_running_mode=in_memory")
KUBEFLOW_BEAM_ARGS = ("--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=4")


@dataclasses.dataclass
class KubeflowConfig:
    """Compilation to a Kubeflow Pipelines v2 spec."""

    # Container image every pipeline step runs (built from the Dockerfile); `ftune compile --image` sets it.
    image: str = "ghcr.io/example/ftune:latest"
    # Kubernetes resource name of the GPU the Trainer requests (KFP uses it verbatim).
    gpu_type: str = "nvidia.com/gpu"
    # GPUs requested for the Trainer pod (only the Trainer); 0 for none, which also drops the node selector and
    # tolerations.
    gpu_count: int = 1
    # CPU limit of the Trainer pod (Kubernetes requests the same: Guaranteed QoS).
    trainer_cpu: float = 4.0
    # Memory limit of the Trainer pod, a Kubernetes quantity such as 16Gi.
    trainer_memory: str = "16Gi"
    # Node selector of the GPU pool, applied to the Trainer pod.
    gpu_node_selector: Dict[str, str] = dataclasses.field(
        default_factory=lambda: {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    )
    # Tolerations for the GPU pool's taints (key, operator, value, effect, tolerationSeconds); [] for none.
    gpu_tolerations: List[Dict[str, Any]] = dataclasses.field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    # Name of the PersistentVolumeClaim the Pusher writes to (and TF Serving reads from); empty for gs:// / s3://.
    serving_pvc: str = "ftune-models"
    # Where that claim is mounted in the tasks that name the serving folder; push.serving_dir must be below it.
    serving_mount_path: str = "/models"
    # S3 endpoint of s3:// paths in every pod (AWS_ENDPOINT_URL), e.g. KFP's MinIO http://minio-service.kubeflow:9000;
    # empty: AWS S3 itself (or whatever the image sets).
    s3_endpoint: str = ""
    # Secret in the run's namespace holding the S3 keys as `accesskey` and `secretkey` (KFP's own MinIO secret is
    # mlpipeline-minio-artifact), given to every pod as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; empty: none (IRSA,
    # an instance role).
    s3_credentials_secret: str = ""


@dataclasses.dataclass
class PipelineConfig:
    # The TFX pipeline's name (its MLMD context, the compiled KFP pipeline): letters, digits, '_', '.' or '-'.
    pipeline_name: str = PIPELINE_NAME
    # Artifacts, MLMD database, sample data and (by default) the serving directory live under here. A gs:// or
    # s3:// URI keeps the artifacts (and the default serving directory) in the bucket; what must be a local file
    # (the MLMD database, the run lock, sample data, the report) then goes to state_dir.
    pipeline_root: str = "outputs"
    # This machine's own files when pipeline_root is a bucket URI; empty: ~/.cache/ftune/state/<scheme>/<bucket path>.
    state_dir: str = ""
    # Seconds a run goes on while the S3 endpoint of its buckets does not answer (checked every 10 s) before it stops
    # with exit 6; TensorFlow's S3 client would otherwise retry for ever. Also the Kubeflow pods' limit.
    object_store_timeout_s: float = 120.0
    # Beam pipeline args for the Beam-based components, e.g. ["--runner=DataflowRunner", ...]. Empty: Beam's
    # FnApiRunner inside the `ftune run` process (LOCAL_BEAM_ARGS), or 4 worker processes in a Kubeflow pod.
    beam_args: List[str] = dataclasses.field(default_factory=list)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    push: PushConfig = dataclasses.field(default_factory=PushConfig)
    kubeflow: KubeflowConfig = dataclasses.field(default_factory=KubeflowConfig)

    def __post_init__(self) -> None:
        # Not a setting (no field: not in to_dict, the records or the change check): the dotted keys the config
        # file and the overrides wrote, filled by load_config. A training profile keeps a value the user wrote even
        # where it equals the default (`trainer.profile=best` with `trainer.augmentation=basic`: basic).
        self.written_keys: FrozenSet[str] = frozenset()

    # --- derived paths -------------------------------------------------------------------------------------
    @property
    def local_root(self) -> str:
        """The folder for files that must be local (MLMD's SQLite database, the run lock, sample data, the report,
        review.csv): the pipeline root, or state_dir when the pipeline root is a gs:// / s3:// URI."""
        if "://" not in self.pipeline_root:
            return self.pipeline_root
        if self.state_dir:
            return self.state_dir
        scheme, rest = self.pipeline_root.split("://", 1)
        return os.path.join(os.path.expanduser("~"), ".cache", "ftune", "state", scheme, rest.strip("/"))

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.local_root, "metadata.sqlite")

    @property
    def sample_data_dir(self) -> str:
        return os.path.join(self.local_root, "sample_data")

    @property
    def serving_dir(self) -> str:
        return self.push.serving_dir or os.path.join(self.pipeline_root, "serving")

    @property
    def serving_model_dir(self) -> str:
        return os.path.join(self.serving_dir, self.push.model_name)

    def storage_paths(self) -> Dict[str, str]:
        """{setting: path} of every place a run reads or writes that may be a bucket URI (gs://, s3://)."""
        return {
            "pipeline_root": self.pipeline_root,
            "data.data_root": self.data.data_root,
            "data.label_fixes": self.data.label_fixes,
            "push.serving_dir": self.serving_dir,
        }

    def absolute_paths(self) -> PipelineConfig:
        """Makes local paths absolute (MLMD stores artifact URIs as given; relative ones break from another cwd).
        URIs with a scheme (gs://, s3://) are left alone. Returns self."""

        def absolute(path: str) -> str:
            return path if not path or "://" in path else os.path.abspath(path)

        self.pipeline_root = absolute(self.pipeline_root)
        self.state_dir = absolute(self.state_dir)
        self.data.data_root = absolute(self.data.data_root)
        self.data.label_fixes = absolute(self.data.label_fixes)
        self.push.serving_dir = absolute(self.push.serving_dir)
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> PipelineConfig:
        """Checks every value when the settings are loaded, so that a wrong one fails before ingestion instead
        of deep inside a component. The message names the key, what it allows, and the value given. Returns self."""
        _check_finite(self)
        d, p = self.data, self.push
        check(
            self.pipeline_name,
            bool(MODEL_NAME.match(self.pipeline_name)),
            "pipeline_name",
            "letters, digits, '_', '.' or '-'",
        )
        check(self.pipeline_root, bool(self.pipeline_root), "pipeline_root", "a non-empty path")
        check(self.object_store_timeout_s, self.object_store_timeout_s > 0, "object_store_timeout_s", "positive")
        for section in (self.data, self.trainer, self.eval, self.push):
            section.validate()
        check(
            p.serving_dir,
            not _is_inside(p.serving_dir, d.data_root),
            "push.serving_dir",
            f"outside data.data_root={d.data_root!r} (pushed models would be ingested as images next run)",
        )
        k = self.kubeflow
        check(k.gpu_count, k.gpu_count >= 0, "kubeflow.gpu_count", "non-negative")
        check(k.trainer_cpu, k.trainer_cpu > 0, "kubeflow.trainer_cpu", "positive")
        return self


def _is_inside(path: str, folder: str) -> bool:
    if not path or not folder or "://" in path or "://" in folder:
        return False
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_finite(config: Any, prefix: str = "") -> None:
    """NaN and infinity parse as floats (`float("inf")`) but are never a meaningful setting."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{prefix}{field.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config value {prefix}{field.name} must be a finite number; got {value!r}")


# --- loading and overriding -----------------------------------------------------------------------------------


def load_config(config_file: Optional[str] = None, overrides: Iterable[str] = ()) -> PipelineConfig:
    """Defaults, then a YAML/JSON file, then `key=value` overrides (in that order of precedence). The keys the
    file and the overrides wrote are in `written_keys`."""
    config = PipelineConfig()
    written: Set[str] = set()
    if config_file:
        try:
            with open(config_file) as f:
                raw = yaml.safe_load(f) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {config_file} is not valid YAML/JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {config_file} must hold a mapping at the top level")
        _merge(config, raw, prefix="", source=config_file, written=written)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        set_value(config, key.strip(), value.strip())
        written.add(key.strip())
    config.written_keys = frozenset(written)
    return config.validate()


def set_value(config: PipelineConfig, dotted_key: str, text: str) -> None:
    """Sets `dotted_key` (e.g. `trainer.learning_rate`) from its text form, typed by the field declaration."""
    target: Any = config
    parts = dotted_key.split(".")
    for part in parts[:-1]:
        field = _field(target, part, dotted_key)
        target = getattr(target, field.name)
        if not dataclasses.is_dataclass(target):
            raise ConfigError(f"unknown config key {dotted_key!r}")
    field = _field(target, parts[-1], dotted_key)
    if dataclasses.is_dataclass(getattr(target, field.name)):
        raise ConfigError(f"config key {dotted_key!r} is a section; set one of its fields")
    setattr(target, field.name, _parse(field, text, dotted_key))


def _field(obj: Any, name: str, dotted_key: str) -> dataclasses.Field:
    for f in dataclasses.fields(obj):
        if f.name == name:
            return f
    known = ", ".join(f.name for f in dataclasses.fields(obj))
    raise ConfigError(f"unknown config key {dotted_key!r} (known here: {known})")


def _parse(field: dataclasses.Field, text: str, key: str) -> Any:
    kind = str(field.type)
    try:
        if kind == "bool":
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "str":
            return text
        # Lists and dicts: JSON (or YAML) literal, e.g. --set beam_args='["--direct_num_workers=2"]'
        value = yaml.safe_load(text)
        expected = list if kind.startswith("List") else dict
        if not isinstance(value, expected):
            raise ValueError(text)
        return value
    except ValueError as exc:
        raise ConfigError(f"config value for {key} must be of type {kind}, got {text!r}") from exc


def _merge(obj: Any, raw: Dict[str, Any], prefix: str, source: str, written: Set[str]) -> None:
    for name, value in raw.items():
        key = f"{prefix}{name}"
        field = _field(obj, name, key)
        current = getattr(obj, field.name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} must be a mapping")
            _merge(current, value, prefix=f"{key}.", source=source, written=written)
            continue
        if isinstance(value, (list, dict)):
            set_value_raw(obj, field, value, key)
        else:
            setattr(obj, field.name, _parse(field, str(value), key))
        written.add(key)


def set_value_raw(obj: Any, field: dataclasses.Field, value: Any, key: str) -> None:
    _parse(field, json.dumps(value), key)  # type check only
    setattr(obj, field.name, value)

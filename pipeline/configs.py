"""The one typed configuration of the product.

Every knob a user can turn lives here, with its default. The CLI (`ftune ... --config FILE --set key=value`),
the local runner and the Kubeflow compiler all start from `PipelineConfig`; no other module carries its own
magic constants.

Overrides use dotted keys, e.g. `--set trainer.phase1_epochs=3 --set data.eval_fraction=0.25`. Values are
parsed according to the field's declared type, and an unknown key or a badly typed value is an error that names
the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Dict, Iterable, List, Optional

import yaml

PIPELINE_NAME = "ftune"

# The `keras.applications` bases the trainer can build, with the number of layers each has without its top
# (include_top=False), so that `trainer.fine_tune_at` is checked when the settings are loaded, before any
# component runs. trainer/model.py maps the same names to constructors; a test keeps the two in step.
BASE_MODEL_LAYERS: Dict[str, int] = {
    "mobilenet_v2": 154,
    "efficientnet_b0": 237,
    "xception": 132,
    "resnet50": 175,
}
PHASE1_MODES = ("cached_features", "end_to_end")
PHASE2_MODES = ("cached_prefix", "end_to_end")
PHASE2_LR_SCHEDULES = ("constant", "cosine")
CLASS_WEIGHTINGS = ("auto", "on", "off")
SPLIT_MODES = ("auto", "hash", "presplit")
# data.spans: every span folder, the newest one, or a rolling window of the newest N (written as the number N).
SPAN_SELECTIONS = ("all", "latest")
WARM_START_MODES = ("auto", "off")
TFLITE_MODES = ("off", "float16", "int8")
# Beam arguments used when `beam_args` is empty: Beam's local FnApiRunner in multi-process mode, on every local
# core (0 = all) or on 4 worker processes inside a Kubeflow pod, whose CPU request the spec sets. The runner is
# named because Beam 2.74's default "DirectRunner" first tries its Prism runner, which downloads a binary from
# github.com on every Beam step: a hang where egress is dropped, a different runner where it is allowed.
LOCAL_BEAM_ARGS = ("--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=0")
KUBEFLOW_BEAM_ARGS = ("--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=4")
# A model name becomes a folder under the serving directory and a TF Serving model name.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key."""


@dataclasses.dataclass
class DataConfig:
    """Image-folder ingestion (ExampleGen)."""

    # Root folder: either `<root>/<class>/**/<image>` (split by hash) or `<root>/<train_dir>/<class>/...`
    # plus `<root>/<eval_dir>/<class>/...` (pre-split). Empty: generate sample data under the pipeline root.
    data_root: str = ""
    # "auto" picks "presplit" when both split folders exist under data_root, else "hash".
    split_mode: str = "auto"
    train_dir: str = "train"
    eval_dir: str = "validation"
    # Hash mode: share of images assigned to the eval split, decided by a hash of the relative path.
    eval_fraction: float = 0.2
    # The run fails (after writing the quarantine report) when more than this share of files is quarantined.
    max_quarantine_fraction: float = 0.1
    # Files whose header claims more pixels than this are quarantined before decoding (decompression bombs).
    max_image_pixels: int = 50_000_000
    # Which spans to read when data_root holds span folders (`span-1/`, `span-2/`, ...; each laid out like a plain
    # data_root): "all", "latest", or a rolling window of the newest N spans written as N (e.g. "3"). Without
    # span folders this setting has no effect.
    spans: str = "all"
    # Files larger than this many bytes are quarantined from their size, without being read into memory.
    max_file_bytes: int = 100_000_000
    # Sample data generated when data_root is empty.
    sample_classes: int = 3
    sample_per_class: int = 60
    sample_seed: int = 0


@dataclasses.dataclass
class TrainerConfig:
    """Freeze-then-fine-tune transfer learning (Transform + Trainer)."""

    # keras.applications base, one of BASE_MODEL_LAYERS: mobilenet_v2 | efficientnet_b0 | xception | resnet50
    base_model: str = "mobilenet_v2"
    # "imagenet", a local weights file path, "none", or "" to resolve: FTUNE_WEIGHTS env var, then "imagenet".
    weights: str = ""
    image_size: int = 160
    batch_size: int = 32
    # Phase 1: base frozen, new head trained (early stopping on the eval split).
    phase1_epochs: int = 10
    learning_rate: float = 1e-3
    # Phase 2: top of the base unfrozen, model recompiled with learning_rate * fine_tune_lr_factor.
    phase2_epochs: int = 8
    fine_tune_lr_factor: float = 0.1
    # Layer index (>= 1) from which the base is unfrozen, or a fraction of its depth (< 1). 100 of MobileNetV2's
    # 154 layers is the TF tutorial's choice.
    fine_tune_at: float = 100
    early_stopping_patience: int = 3
    dropout: float = 0.2
    augment: bool = True
    rotation_factor: float = 0.2
    seed: int = 42
    # Speed levers (trainer/fine_tune.py). The frozen part of the base computes the same output for an image in
    # every epoch, so it can be computed once (for the image and its horizontal flip) and cached:
    #   phase1_mode: "cached_features" trains the head on cached pooled features; "end_to_end" runs the base
    #                every epoch (keeps on-the-fly rotation augmentation).
    #   phase2_mode: "cached_prefix" caches the activations below the unfrozen block; "end_to_end" does not.
    phase1_mode: str = "cached_features"
    phase2_mode: str = "cached_prefix"
    # Versions of each training image kept in the caches (the image, its flip, and rotated variants when
    # rotation_factor > 0): cached modes approximate on-the-fly augmentation with these.
    cache_variants: int = 4
    # Phase-2 learning rate: "constant" (lr * fine_tune_lr_factor) or "cosine" (one epoch of warm-up to that
    # value, then cosine decay to 0 over the phase). cosine, 8 epochs: measured on cats vs dogs over 3 seeds,
    # 0.977-0.980 against 0.974-0.976 for constant (benchmarks/README.md, "Levers").
    phase2_lr_schedule: str = "cosine"
    # Upper bound on the in-memory feature caches; above it the caches spill to files under the Trainer's
    # working directory (same training, read back from disk) instead of growing the process's memory.
    cache_max_mb: int = 2048
    # Class weights (n / (classes * count) per class) in both phases: "on", "off", or "auto" = on when the
    # largest training class has more than `imbalance_ratio` times the examples of the smallest.
    class_weighting: str = "auto"
    imbalance_ratio: float = 1.5
    jit_compile: bool = False
    # On GPU nodes: float16 compute with float32 logits (no effect on CPU).
    mixed_precision: bool = False
    # Eval images written as TF Serving warmup requests into the exported model.
    warmup_requests: int = 4
    # "auto": when the served model has the same labels, base model and image size, start from its weights (head
    # and fine-tuned layers) and train warm_phase1_epochs + warm_phase2_epochs; otherwise (or with "off") start
    # from the pretrained base with phase1_epochs + phase2_epochs.
    warm_start: str = "auto"
    warm_phase1_epochs: int = 2
    warm_phase2_epochs: int = 3


@dataclasses.dataclass
class EvalConfig:
    """The Evaluator's blessing gate."""

    # Absolute floor on eval accuracy.
    accuracy_floor: float = 0.6
    # A candidate may be at most this much less accurate than the served model (0 = must not regress at all).
    max_accuracy_drop: float = 0.0
    # Per class (the eval images whose true class is c): recall must be at least this floor ...
    class_recall_floor: float = 0.5
    # ... and at most this much below the served model's recall on the same class (same label vocabulary only).
    max_class_recall_drop: float = 0.1
    # Classes with fewer eval images than this are reported, not gated (a handful of images is noise).
    min_class_examples: int = 10
    # The TFLite copy (push.tflite) is pushed only if its eval accuracy is at most this much below the SavedModel's.
    max_tflite_accuracy_drop: float = 0.01


@dataclasses.dataclass
class PushConfig:
    """Where blessed models go, in TF Serving's `<base>/<model>/<version>/` layout."""

    # Empty: `<pipeline_root>/serving`.
    serving_dir: str = ""
    model_name: str = "image_classifier"
    # Number of versions kept after a push (older ones are deleted); 0 keeps all.
    keep_versions: int = 5
    # A TFLite copy written beside the pushed SavedModel (`<version>/model.tflite`), gated on
    # eval.max_tflite_accuracy_drop: "off", "float16" (float16 weights) or "int8" (post-training quantisation
    # calibrated on training images; float32 input and output).
    tflite: str = "off"


@dataclasses.dataclass
class KubeflowConfig:
    """Compilation to a Kubeflow Pipelines v2 spec."""

    image: str = "ghcr.io/example/ftune:latest"
    gpu_type: str = "nvidia.com/gpu"
    gpu_count: int = 1
    trainer_cpu: float = 4.0
    trainer_memory: str = "16Gi"
    gpu_node_selector: Dict[str, str] = dataclasses.field(
        default_factory=lambda: {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    )
    # Tolerations for the GPU pool's taints (key, operator, value, effect, tolerationSeconds); [] for none.
    gpu_tolerations: List[Dict[str, Any]] = dataclasses.field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    # Name of the PersistentVolumeClaim the Pusher writes to (and TF Serving reads from); empty for gs:// / s3://.
    serving_pvc: str = "ftune-models"
    serving_mount_path: str = "/models"


@dataclasses.dataclass
class PipelineConfig:
    pipeline_name: str = PIPELINE_NAME
    # Artifacts, MLMD database, sample data and (by default) the serving directory live under here.
    pipeline_root: str = "outputs"
    # Extra Beam pipeline args, e.g. ["--runner=DataflowRunner", ...]. Empty: DirectRunner on all cores.
    beam_args: List[str] = dataclasses.field(default_factory=list)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    push: PushConfig = dataclasses.field(default_factory=PushConfig)
    kubeflow: KubeflowConfig = dataclasses.field(default_factory=KubeflowConfig)

    # --- derived paths -------------------------------------------------------------------------------------
    @property
    def metadata_path(self) -> str:
        return os.path.join(self.pipeline_root, "metadata.sqlite")

    @property
    def sample_data_dir(self) -> str:
        return os.path.join(self.pipeline_root, "sample_data")

    @property
    def serving_dir(self) -> str:
        return self.push.serving_dir or os.path.join(self.pipeline_root, "serving")

    @property
    def serving_model_dir(self) -> str:
        return os.path.join(self.serving_dir, self.push.model_name)

    def absolute_paths(self) -> PipelineConfig:
        """Makes local paths absolute (MLMD stores artifact URIs as given; relative ones break from another cwd).
        URIs with a scheme (gs://, s3://) are left alone. Returns self."""

        def absolute(path: str) -> str:
            return path if not path or "://" in path else os.path.abspath(path)

        self.pipeline_root = absolute(self.pipeline_root)
        self.data.data_root = absolute(self.data.data_root)
        self.push.serving_dir = absolute(self.push.serving_dir)
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> PipelineConfig:
        """Checks every value when the settings are loaded, so that a wrong one fails before ingestion instead
        of deep inside a component. The message names the key, what it allows, and the value given. Returns self."""
        _check_finite(self)
        d, t, e, p = self.data, self.trainer, self.eval, self.push
        _check(
            self.pipeline_name,
            bool(_MODEL_NAME.match(self.pipeline_name)),
            "pipeline_name",
            "letters, digits, '_', '.' or '-'",
        )
        _check(self.pipeline_root, bool(self.pipeline_root), "pipeline_root", "a non-empty path")
        _check(d.split_mode, d.split_mode in SPLIT_MODES, "data.split_mode", _one_of(SPLIT_MODES))
        _check(d.eval_fraction, 0.0 < d.eval_fraction < 1.0, "data.eval_fraction", "between 0 and 1 (exclusive)")
        _check(
            d.max_quarantine_fraction,
            0.0 <= d.max_quarantine_fraction <= 1.0,
            "data.max_quarantine_fraction",
            "between 0 and 1",
        )
        _check(d.max_image_pixels, d.max_image_pixels > 0, "data.max_image_pixels", "positive")
        _check(
            d.spans,
            span_window(d.spans) != 0,
            "data.spans",
            "all, latest, or a whole number N >= 1 (the newest N spans)",
        )
        _check(d.max_file_bytes, d.max_file_bytes > 0, "data.max_file_bytes", "positive")
        _check(d.sample_classes, d.sample_classes >= 2, "data.sample_classes", "at least 2")
        _check(d.sample_per_class, d.sample_per_class >= 1, "data.sample_per_class", "at least 1")
        _check(t.base_model, t.base_model in BASE_MODEL_LAYERS, "trainer.base_model", _one_of(BASE_MODEL_LAYERS))
        _check(t.image_size, t.image_size >= 32, "trainer.image_size", "at least 32")
        _check(t.batch_size, t.batch_size >= 1, "trainer.batch_size", "at least 1")
        _check(t.phase1_epochs, t.phase1_epochs >= 0, "trainer.phase1_epochs", "non-negative")
        _check(t.phase2_epochs, t.phase2_epochs >= 0, "trainer.phase2_epochs", "non-negative")
        _check(t.learning_rate, t.learning_rate > 0, "trainer.learning_rate", "positive")
        _check(t.fine_tune_lr_factor, 0 < t.fine_tune_lr_factor <= 1, "trainer.fine_tune_lr_factor", "in (0, 1]")
        _check_fine_tune_at(t)
        _check(
            t.early_stopping_patience, t.early_stopping_patience >= 0, "trainer.early_stopping_patience", "non-negative"
        )
        _check(t.dropout, 0 <= t.dropout < 1, "trainer.dropout", "in [0, 1)")
        _check(t.rotation_factor, 0 <= t.rotation_factor <= 1, "trainer.rotation_factor", "in [0, 1]")
        _check(t.phase1_mode, t.phase1_mode in PHASE1_MODES, "trainer.phase1_mode", _one_of(PHASE1_MODES))
        _check(t.phase2_mode, t.phase2_mode in PHASE2_MODES, "trainer.phase2_mode", _one_of(PHASE2_MODES))
        _check(
            t.phase2_lr_schedule,
            t.phase2_lr_schedule in PHASE2_LR_SCHEDULES,
            "trainer.phase2_lr_schedule",
            _one_of(PHASE2_LR_SCHEDULES),
        )
        _check(t.cache_variants, t.cache_variants >= 1, "trainer.cache_variants", "at least 1")
        _check(t.cache_max_mb, t.cache_max_mb >= 0, "trainer.cache_max_mb", "non-negative")
        _check(
            t.class_weighting,
            t.class_weighting in CLASS_WEIGHTINGS,
            "trainer.class_weighting",
            _one_of(CLASS_WEIGHTINGS),
        )
        _check(t.imbalance_ratio, t.imbalance_ratio >= 1, "trainer.imbalance_ratio", "at least 1")
        _check(t.warmup_requests, t.warmup_requests >= 0, "trainer.warmup_requests", "non-negative")
        _check(t.warm_start, t.warm_start in WARM_START_MODES, "trainer.warm_start", _one_of(WARM_START_MODES))
        _check(t.warm_phase1_epochs, t.warm_phase1_epochs >= 0, "trainer.warm_phase1_epochs", "non-negative")
        _check(t.warm_phase2_epochs, t.warm_phase2_epochs >= 0, "trainer.warm_phase2_epochs", "non-negative")
        _check(e.accuracy_floor, 0 <= e.accuracy_floor <= 1, "eval.accuracy_floor", "in [0, 1]")
        _check(e.max_accuracy_drop, 0 <= e.max_accuracy_drop <= 1, "eval.max_accuracy_drop", "in [0, 1]")
        _check(e.class_recall_floor, 0 <= e.class_recall_floor <= 1, "eval.class_recall_floor", "in [0, 1]")
        _check(e.max_class_recall_drop, 0 <= e.max_class_recall_drop <= 1, "eval.max_class_recall_drop", "in [0, 1]")
        _check(e.min_class_examples, e.min_class_examples >= 1, "eval.min_class_examples", "at least 1")
        _check(
            p.model_name,
            bool(_MODEL_NAME.match(p.model_name)),
            "push.model_name",
            "a folder name: letters, digits, '_', '.' or '-' (no '/' and not starting with '.')",
        )
        _check(p.keep_versions, p.keep_versions >= 0, "push.keep_versions", "non-negative")
        _check(p.tflite, p.tflite in TFLITE_MODES, "push.tflite", _one_of(TFLITE_MODES))
        _check(
            e.max_tflite_accuracy_drop,
            0 <= e.max_tflite_accuracy_drop <= 1,
            "eval.max_tflite_accuracy_drop",
            "in [0, 1]",
        )
        _check(
            p.serving_dir,
            not _is_inside(p.serving_dir, d.data_root),
            "push.serving_dir",
            f"outside data.data_root={d.data_root!r} (pushed models would be ingested as images next run)",
        )
        k = self.kubeflow
        _check(k.gpu_count, k.gpu_count >= 0, "kubeflow.gpu_count", "non-negative")
        _check(k.trainer_cpu, k.trainer_cpu > 0, "kubeflow.trainer_cpu", "positive")
        return self


def span_window(spans: str) -> Optional[int]:
    """data.spans as a number of newest spans to read: None for "all", 1 for "latest", N for "N", and 0 when the
    value is none of these (validate() rejects it)."""
    text = str(spans).strip().lower()
    if text == "all":
        return None
    if text == "latest":
        return 1
    if text.isdigit() and int(text) >= 1:
        return int(text)
    return 0


def _is_inside(path: str, folder: str) -> bool:
    if not path or not folder or "://" in path or "://" in folder:
        return False
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _one_of(allowed: Iterable[str]) -> str:
    return "one of " + ", ".join(allowed)


def _check(value: Any, ok: bool, key: str, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config value {key} must be {expected}; got {value!r}")


def _check_finite(config: Any, prefix: str = "") -> None:
    """NaN and infinity parse as floats (`float("inf")`) but are never a meaningful setting."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{prefix}{field.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config value {prefix}{field.name} must be a finite number; got {value!r}")


def _check_fine_tune_at(t: TrainerConfig) -> None:
    """`fine_tune_at` is a whole layer index inside the chosen base, or a fraction (< 1) of its depth."""
    layers = BASE_MODEL_LAYERS.get(t.base_model, 0)
    value = t.fine_tune_at
    if 0 < value < 1:
        return
    _check(
        value,
        value >= 1 and float(value).is_integer(),
        "trainer.fine_tune_at",
        "a whole layer index >= 1 or a fraction in (0, 1)",
    )
    _check(
        value,
        value < layers,
        "trainer.fine_tune_at",
        f"below the {layers} layers of trainer.base_model={t.base_model} (or a fraction in (0, 1))",
    )


# --- loading and overriding -----------------------------------------------------------------------------------


def load_config(config_file: Optional[str] = None, overrides: Iterable[str] = ()) -> PipelineConfig:
    """Defaults, then a YAML/JSON file, then `key=value` overrides (in that order of precedence)."""
    config = PipelineConfig()
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
        _merge(config, raw, prefix="", source=config_file)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        set_value(config, key.strip(), value.strip())
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


def _merge(obj: Any, raw: Dict[str, Any], prefix: str, source: str) -> None:
    for name, value in raw.items():
        key = f"{prefix}{name}"
        field = _field(obj, name, key)
        current = getattr(obj, field.name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} must be a mapping")
            _merge(current, value, prefix=f"{key}.", source=source)
        elif isinstance(value, (list, dict)):
            set_value_raw(obj, field, value, key)
        else:
            setattr(obj, field.name, _parse(field, str(value), key))


def set_value_raw(obj: Any, field: dataclasses.Field, value: Any, key: str) -> None:
    _parse(field, json.dumps(value), key)  # type check only
    setattr(obj, field.name, value)

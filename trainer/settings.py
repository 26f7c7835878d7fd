"""The Trainer's typed settings (the `trainer:` section), their checks, and the settings error every layer raises.

The bottom of the layers: it imports nothing of the project and no TensorFlow, so the CLI can load and check
settings in a fraction of a second. `pipeline/configs.py` composes this section with the others.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Iterable, List, NamedTuple, Optional


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key."""


def check(value: Any, ok: bool, key: str, expected: str) -> None:
    """Raises ConfigError naming `key`, what it allows and the value given, unless `ok`."""
    if not ok:
        raise ConfigError(f"config value {key} must be {expected}; got {value!r}")


def one_of(allowed: Iterable[str]) -> str:
    return "one of " + ", ".join(allowed)


class BaseModel(NamedTuple):
    """A `keras.applications` base: its constructor and preprocessing module there, and its depth without the
    top (include_top=False), so that `trainer.fine_tune_at` is checked when the settings load."""

    constructor: str
    preprocess_module: str
    layers: int


# The one list of bases the trainer can build (trainer/model.py resolves the names in keras.applications).
BASE_MODELS: Dict[str, BaseModel] = {
    # Scales to [-1, 1].
    "mobilenet_v2": BaseModel("MobileNetV2", "mobilenet_v2", 154),
    # Identity: Keras' EfficientNet rescales and normalises inside the model itself.
    "efficientnet_b0": BaseModel("EfficientNetB0", "efficientnet", 237),
    # Scales to [-1, 1].
    "xception": BaseModel("Xception", "xception", 132),
    # "caffe": RGB -> BGR, then subtracts the ImageNet channel means.
    "resnet50": BaseModel("ResNet50", "resnet50", 175),
}
BASE_MODEL_LAYERS: Dict[str, int] = {name: base.layers for name, base in BASE_MODELS.items()}
PHASE1_MODES = ("cached_features", "end_to_end")
PHASE2_MODES = ("cached_prefix", "end_to_end")
PHASE2_LR_SCHEDULES = ("constant", "cosine")
CLASS_WEIGHTINGS = ("auto", "on", "off")
WARM_START_MODES = ("auto", "off")
AUGMENTATIONS = ("basic", "strong")
# trainer.profile's values (trainer/profiles.py resolves "auto" by the Trainer's hardware).
PROFILE_SETTINGS = ("auto", "fast", "best")
# The trainer settings a Kubeflow run may override as run parameters (the one list: the Trainer component
# accepts them, the Kubeflow compiler declares them). A run that warm-starts from the served model trains the
# warm_* epochs instead of phase1/phase2_epochs, so those are parameters too.
RUN_PARAMETER_FIELDS = ("phase1_epochs", "phase2_epochs", "warm_phase1_epochs", "warm_phase2_epochs", "learning_rate")
# trainer.weights' keywords (trainer/weights.py): Keras' ImageNet download, and random initialisation. Any other
# non-empty value is a weights file.
IMAGENET = "imagenet"
NO_WEIGHTS = "none"
WEIGHTS_ENV_VAR = "FTUNE_WEIGHTS"


def resolve_weights(setting: str) -> Optional[str]:
    """Turns the `trainer.weights` setting into what `keras.applications` accepts.

    Returns "imagenet", an existing local file path, or None (random initialisation).
    """
    setting = (setting or "").strip()
    if not setting:
        from_env = os.environ.get(WEIGHTS_ENV_VAR, "").strip()
        if from_env:
            return _existing_file(from_env, source=f"the environment variable {WEIGHTS_ENV_VAR}")
        return IMAGENET
    if setting.lower() == IMAGENET:
        return IMAGENET
    if setting.lower() == NO_WEIGHTS:
        return None
    return _existing_file(setting, source="the config value trainer.weights")


def _existing_file(path: str, source: str) -> str:
    expanded = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(expanded):
        raise ConfigError(
            f"weights file {path!r} (from {source}) does not exist; trainer.weights must be an existing "
            f"weights file, 'imagenet', 'none', or empty (then {WEIGHTS_ENV_VAR} or 'imagenet' is used)"
        )
    return expanded


@dataclasses.dataclass
class TrainerConfig:
    """Freeze-then-fine-tune transfer learning (Transform + Trainer)."""

    # The recipe (trainer/profiles.py): "fast" (the CPU recipe: these defaults), "best" (224 px, phase 2 end to end
    # on freshly augmented images, deeper unfreeze, longer, float16 on GPU: 3-6x the time on a CPU), or "auto" = the
    # profile for the Trainer's hardware (fast for now with or without a GPU: best measured below fast on
    # TrashNet). A profile sets only the settings left at their defaults.
    profile: str = "auto"
    # keras.applications base, one of BASE_MODEL_LAYERS: mobilenet_v2, efficientnet_b0, xception or resnet50.
    base_model: str = "mobilenet_v2"
    # "imagenet", a local weights file path, "none", or "" to resolve: FTUNE_WEIGHTS env var, then "imagenet".
    weights: str = ""
    # Images are resized to image_size x image_size pixels (bilinear, aspect ratio not kept) in Transform, in
    # training and inside the serving signature; the TFLite copy's input size too.
    image_size: int = 160
    # Global batch size (split across the GPUs under MirroredStrategy): raise it, and learning_rate, with the GPUs.
    batch_size: int = 32
    # Phase 1: base frozen, new head trained (early stopping on the eval split).
    phase1_epochs: int = 10
    # Adam's learning rate in phase 1; phase 2 uses learning_rate * fine_tune_lr_factor.
    learning_rate: float = 1e-3
    # Phase 2: top of the base unfrozen, model recompiled with learning_rate * fine_tune_lr_factor.
    phase2_epochs: int = 8
    # Phase 2's learning rate as a share of learning_rate. The guides' "about 10x lower" (0.1) suits a model trained
    # end to end; the cached-prefix phase 2 trains only the top of the base and measured better at 0.3 (TrashNet,
    # 3 seeds: +1.0 point of mean accuracy, every seed up; 1.0 lost 7 points; docs/benchmarks.md, issue 33).
    fine_tune_lr_factor: float = 0.3
    # Layer index (>= 1) from which the base is unfrozen, or a fraction of its depth (< 1). 100 of MobileNetV2's
    # 154 layers is the TF tutorial's choice.
    fine_tune_at: float = 100
    # Epochs without a better eval loss before a phase stops; the best epoch's weights are restored.
    early_stopping_patience: int = 3
    # Dropout rate before the new classification head.
    dropout: float = 0.2
    # Label smoothing of the cross-entropy in both phases (0 = none).
    label_smoothing: float = 0.0
    # The exported model averages each image's probabilities with its mirror image's (serving/export.py): one
    # more model call per request.
    test_time_flip: bool = False
    # Training-time augmentation: random horizontal flips, plus rotations when rotation_factor > 0.
    augment: bool = True
    # Random rotation range as a fraction of a full turn (Keras' RandomRotation factor); 0 for none.
    rotation_factor: float = 0.2
    # "basic": random flips and rotations; "strong": also random zoom-in crops (up to 40 % of the side), brightness
    # and contrast (+-20 %). On the cached path the cached versions of each image are drawn with these layers.
    augmentation: str = "basic"
    # Seed of the random initialisation, augmentation, dropout and batch order.
    seed: int = 42
    # Speed levers (trainer/fine_tune.py). The frozen part of the base computes the same output for an image in
    # every epoch, so it can be computed once (for the image and its horizontal flip) and cached.
    # phase1_mode: "cached_features" trains the head on cached pooled features; "end_to_end" runs the base every
    # epoch (keeps on-the-fly rotation augmentation).
    phase1_mode: str = "cached_features"
    # phase2_mode: "cached_prefix" caches the activations below the unfrozen block; "end_to_end" does not.
    phase2_mode: str = "cached_prefix"
    # Versions of each training image kept in the caches (the image, its flip, and rotated variants when
    # rotation_factor > 0): cached modes approximate on-the-fly augmentation with these.
    cache_variants: int = 4
    # Phase-2 learning rate: "constant" (lr * fine_tune_lr_factor) or "cosine" (one epoch of warm-up to that
    # value, then cosine decay to 0 over the phase). cosine, 8 epochs: measured on cats vs dogs over 3 seeds,
    # 0.977-0.980 against 0.974-0.976 for constant (docs/benchmarks.md, "Levers").
    phase2_lr_schedule: str = "cosine"
    # Upper bound on the in-memory feature caches; above it the caches spill to files under the Trainer's
    # working directory (same training, read back from disk) instead of growing the process's memory.
    cache_max_mb: int = 2048
    # Class weights (n / (classes * count) per class) in both phases: "on", "off", or "auto" = on when the
    # largest training class has more than `imbalance_ratio` times the examples of the smallest.
    class_weighting: str = "auto"
    # Largest over smallest training class count above which class_weighting=auto weights the classes.
    imbalance_ratio: float = 1.5
    # XLA compilation of the training step; off by default: on CPUs it ran more than ten times slower.
    jit_compile: bool = False
    # On GPU nodes: float16 compute with float32 logits (no effect on CPU).
    mixed_precision: bool = False
    # Eval images written as TF Serving warmup requests into the exported model.
    warmup_requests: int = 4
    # "auto": when the served model has the same labels, base model and image size, start from its weights (head
    # and fine-tuned layers) and train warm_phase1_epochs + warm_phase2_epochs; otherwise (or with "off") start
    # from the pretrained base with phase1_epochs + phase2_epochs.
    warm_start: str = "auto"
    # Phase-1 epochs of a run that warm-starts from the served model (instead of phase1_epochs).
    warm_phase1_epochs: int = 2
    # Phase-2 epochs of a run that warm-starts from the served model (instead of phase2_epochs).
    warm_phase2_epochs: int = 3
    # Phase 2's learning-rate share of a run that warm-starts (instead of fine_tune_lr_factor): the served model's
    # fine-tuned layers only need a nudge, and warm starts were measured at 0.1 (benchmarks/warm_start.py).
    warm_fine_tune_lr_factor: float = 0.1
    # The check of the training data (components/data_findings.py, trainer/label_issues.py): suspected label errors
    # (confident learning with `label_issue_folds` out-of-sample heads) and, per class of a new span, the distance
    # from the served version's training data, in units of its within-class spread; above `drift_threshold` the
    # summary says the span looks different (clean sample spans measured below 0.12, swapped folders above 0.6).
    label_issues: bool = True
    # Out-of-sample heads (folds) that score each training image for the label check; at least 2.
    label_issue_folds: int = 5
    # A new span's class whose distance from the served class is above this is named in the summary.
    drift_threshold: float = 0.35

    def validate(self) -> TrainerConfig:
        """Checks every `trainer.*` value (ranges, allowed values, `fine_tune_at` against the base's depth)."""
        t = self
        check(t.profile, t.profile in PROFILE_SETTINGS, "trainer.profile", one_of(PROFILE_SETTINGS))
        check(t.augmentation, t.augmentation in AUGMENTATIONS, "trainer.augmentation", one_of(AUGMENTATIONS))
        check(t.base_model, t.base_model in BASE_MODEL_LAYERS, "trainer.base_model", one_of(BASE_MODEL_LAYERS))
        check(t.image_size, t.image_size >= 32, "trainer.image_size", "at least 32")
        check(t.batch_size, t.batch_size >= 1, "trainer.batch_size", "at least 1")
        check(t.phase1_epochs, t.phase1_epochs >= 0, "trainer.phase1_epochs", "non-negative")
        check(t.phase2_epochs, t.phase2_epochs >= 0, "trainer.phase2_epochs", "non-negative")
        check(t.learning_rate, t.learning_rate > 0, "trainer.learning_rate", "positive")
        check(t.fine_tune_lr_factor, 0 < t.fine_tune_lr_factor <= 1, "trainer.fine_tune_lr_factor", "in (0, 1]")
        check(
            t.warm_fine_tune_lr_factor,
            0 < t.warm_fine_tune_lr_factor <= 1,
            "trainer.warm_fine_tune_lr_factor",
            "in (0, 1]",
        )
        _check_fine_tune_at(t)
        check(
            t.early_stopping_patience, t.early_stopping_patience >= 0, "trainer.early_stopping_patience", "non-negative"
        )
        check(t.dropout, 0 <= t.dropout < 1, "trainer.dropout", "in [0, 1)")
        check(t.label_smoothing, 0 <= t.label_smoothing < 1, "trainer.label_smoothing", "in [0, 1)")
        check(t.rotation_factor, 0 <= t.rotation_factor <= 1, "trainer.rotation_factor", "in [0, 1]")
        check(t.phase1_mode, t.phase1_mode in PHASE1_MODES, "trainer.phase1_mode", one_of(PHASE1_MODES))
        check(t.phase2_mode, t.phase2_mode in PHASE2_MODES, "trainer.phase2_mode", one_of(PHASE2_MODES))
        check(
            t.phase2_lr_schedule,
            t.phase2_lr_schedule in PHASE2_LR_SCHEDULES,
            "trainer.phase2_lr_schedule",
            one_of(PHASE2_LR_SCHEDULES),
        )
        check(t.cache_variants, t.cache_variants >= 1, "trainer.cache_variants", "at least 1")
        check(t.cache_max_mb, t.cache_max_mb >= 0, "trainer.cache_max_mb", "non-negative")
        check(
            t.class_weighting,
            t.class_weighting in CLASS_WEIGHTINGS,
            "trainer.class_weighting",
            one_of(CLASS_WEIGHTINGS),
        )
        check(t.imbalance_ratio, t.imbalance_ratio >= 1, "trainer.imbalance_ratio", "at least 1")
        check(t.warmup_requests, t.warmup_requests >= 0, "trainer.warmup_requests", "non-negative")
        check(t.warm_start, t.warm_start in WARM_START_MODES, "trainer.warm_start", one_of(WARM_START_MODES))
        check(t.warm_phase1_epochs, t.warm_phase1_epochs >= 0, "trainer.warm_phase1_epochs", "non-negative")
        check(t.warm_phase2_epochs, t.warm_phase2_epochs >= 0, "trainer.warm_phase2_epochs", "non-negative")
        check(t.label_issue_folds, t.label_issue_folds >= 2, "trainer.label_issue_folds", "at least 2")
        check(t.drift_threshold, t.drift_threshold > 0, "trainer.drift_threshold", "positive")
        return self

    def reads_images_every_epoch(self) -> bool:
        """True when a phase trains end to end on the images rather than on the feature caches: only then is
        the transformed data read more than once (the caches are built in one pass)."""
        phase1 = self.phase1_mode != "cached_features" and self.phase1_epochs > 0
        phase2 = self.phase2_mode != "cached_prefix" and self.phase2_epochs > 0
        return phase1 or phase2

    def caches_pooled_features(self) -> bool:
        """True when phase 1 trains on cached pooled features (the default): the caches then hold the pretrained
        base's pooled output of every un-augmented training image (version 0), which the check of the training
        data can read instead of running the base once more (on a cold start, when the base is still the
        pretrained one)."""
        return self.phase1_mode == "cached_features" and self.phase1_epochs > 0

    def fine_tune_layer(self) -> int:
        """The base layer index from which phase 2 unfreezes: `fine_tune_at` itself, or that fraction of the
        base's depth (validate() has checked it)."""
        layers = BASE_MODELS[self.base_model].layers
        value = float(self.fine_tune_at)
        if 0 < value < 1:
            return min(max(1, int(round(value * layers))), layers - 1)
        return int(value)


def non_default_settings(cfg: TrainerConfig) -> Dict[str, Any]:
    """{field: value} of the fields of `cfg` whose value differs from TrainerConfig's default, in declaration
    order."""
    defaults = TrainerConfig()
    return {
        field.name: getattr(cfg, field.name)
        for field in dataclasses.fields(TrainerConfig)
        if getattr(cfg, field.name) != getattr(defaults, field.name)
    }


def settings_lines(cfg: TrainerConfig) -> List[str]:
    """What the Trainer logs of its settings: one `name=value` line per field that differs from the default
    (`trainer.` keys of `ftune config`), instead of the whole TrainerConfig repr on one line."""
    changed = non_default_settings(cfg)
    if not changed:
        return ["trainer settings: all defaults"]
    return ["trainer settings other than the defaults:"] + [f"  {name}={value!r}" for name, value in changed.items()]


def _check_fine_tune_at(t: TrainerConfig) -> None:
    """`fine_tune_at` is a whole layer index inside the chosen base, or a fraction (< 1) of its depth."""
    layers = BASE_MODEL_LAYERS.get(t.base_model, 0)
    value = t.fine_tune_at
    if 0 < value < 1:
        return
    check(
        value,
        value >= 1 and float(value).is_integer(),
        "trainer.fine_tune_at",
        "a whole layer index >= 1 or a fraction in (0, 1)",
    )
    check(
        value,
        value < layers,
        "trainer.fine_tune_at",
        f"below the {layers} layers of trainer.base_model={t.base_model} (or a fraction in (0, 1))",
    )


def run_parameter_types() -> Dict[str, type]:
    """{field: int or float} for RUN_PARAMETER_FIELDS, from the TrainerConfig declarations."""
    kinds = {"int": int, "float": float, "str": str}
    declared = {field.name: str(field.type) for field in dataclasses.fields(TrainerConfig)}
    return {name: kinds[declared[name]] for name in RUN_PARAMETER_FIELDS}

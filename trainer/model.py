"""The transfer-learning model: a pretrained `keras.applications` base under a new classification head.

Follows the Keras "Transfer learning & fine-tuning" guide:

    image [0, 255] -> augmentation (training only) -> base-specific scaling -> base(training=False)
                   -> GlobalAveragePooling2D -> Dropout -> Dense logits

It is a plain functional Keras 3 model (input image -> logits), so the exporter can wrap it in a tf.Module.
The layers have fixed names (see the LAYER_* constants) so the training code can find them.
"""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional, Tuple

import keras

from trainer.settings import BASE_MODELS, BaseModel, ConfigError, TrainerConfig
from trainer.weights import build_base, resolve_weights

LAYER_INPUT = "image"
LAYER_FLIP = "augment_flip"
LAYER_ROTATION = "augment_rotation"
LAYER_ZOOM = "augment_zoom"
LAYER_BRIGHTNESS = "augment_brightness"
LAYER_CONTRAST = "augment_contrast"
# The augmentation layers in the order the model applies them (the feature caches draw their versions with them).
AUGMENTATION_LAYERS = (LAYER_FLIP, LAYER_ROTATION, LAYER_ZOOM, LAYER_BRIGHTNESS, LAYER_CONTRAST)
# trainer.augmentation=strong: zoom in by up to this share of the side (a random crop of 36-100 % of the area,
# resized back), and brightness / contrast by up to this factor.
STRONG_ZOOM = 0.4
STRONG_COLOUR = 0.2
LAYER_PREPROCESS = "preprocess"
LAYER_BASE = "base"
LAYER_POOL = "pool"
LAYER_DROPOUT = "dropout"
LAYER_LOGITS = "logits"


class BaseSpec(NamedTuple):
    """A `keras.applications` constructor and the matching `preprocess_input` (pixels in [0, 255] in)."""

    constructor: Callable[..., keras.Model]
    preprocess_input: Callable


def _base_spec(base: BaseModel) -> BaseSpec:
    applications = keras.applications
    preprocess_input = getattr(applications, base.preprocess_module).preprocess_input
    return BaseSpec(getattr(applications, base.constructor), preprocess_input)


# The constructors of trainer/settings.py's one list of bases.
BASES: Dict[str, BaseSpec] = {name: _base_spec(base) for name, base in BASE_MODELS.items()}


def get_base_spec(name: str) -> BaseSpec:
    try:
        return BASES[name]
    except KeyError:
        allowed = ", ".join(BASES)
        raise ConfigError(f"config value trainer.base_model must be one of {allowed}; got {name!r}") from None


@keras.saving.register_keras_serializable(package="ftune")
class BasePreprocess(keras.layers.Layer):
    """Applies the base's own `preprocess_input` (e.g. [0, 255] -> [-1, 1] for MobileNetV2).

    It lives inside the model, next to the base, so that serving clients send raw pixels and can never pair a
    base with the wrong scaling.
    """

    def __init__(self, base_model: str, **kwargs):
        super().__init__(**kwargs)
        self.base_model = base_model
        self._preprocess = get_base_spec(base_model).preprocess_input

    def call(self, images):
        return self._preprocess(images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "base_model": self.base_model}


@keras.saving.register_keras_serializable(package="ftune")
class TrainingOnly(keras.layers.Wrapper):
    """Runs the wrapped layer in training only and is a plain identity otherwise.

    Keras' random preprocessing layers are identities at inference too, but a traced inference call still
    captures their seed-generator state, which `tf.saved_model.save` cannot reach from a tf.Module
    ("captures tensor ... seed_generator_state ... not reachable from root"). Not calling them at all at
    inference keeps the served graph free of them.
    """

    def call(self, inputs, training=None):
        if training:
            return self.layer(inputs, training=True)
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def num_logits(num_classes: int) -> int:
    """One logit (sigmoid) for two classes, one per class (softmax) otherwise."""
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    return 1 if num_classes == 2 else num_classes


def build_model(
    cfg: TrainerConfig,
    num_classes: int,
    base_override: Optional[keras.Model] = None,
) -> Tuple[keras.Model, keras.Model]:
    """Builds (model, base) for `cfg`; `base` is the nested base model (layer "base" of `model`).

    `base_override`: a pre-built headless base (a Keras model taking S x S x 3 images scaled by the
    preprocessing of `cfg.base_model`) used instead of the `keras.applications` one; for tests.
    The base is returned frozen (phase 1 state).
    """
    spec = get_base_spec(cfg.base_model)
    size = int(cfg.image_size)
    if base_override is None:
        base = build_base(spec.constructor, (size, size, 3), resolve_weights(cfg.weights), name=LAYER_BASE)
    else:
        base = base_override
        base.name = LAYER_BASE
    base.trainable = False

    inputs = keras.Input(shape=(size, size, 3), dtype="float32", name=LAYER_INPUT)
    x = _augmentation(inputs, cfg)
    x = BasePreprocess(cfg.base_model, name=LAYER_PREPROCESS)(x)
    # training=False keeps the base's BatchNormalization layers in inference mode: they normalise with their
    # stored ImageNet statistics and never update them, also after the top of the base is unfrozen for
    # fine-tuning. Otherwise the first fine-tuning steps would replace those statistics with ones from small
    # batches of new data and wreck what the base has learnt.
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name=LAYER_POOL)(x)
    x = keras.layers.Dropout(cfg.dropout, seed=cfg.seed, name=LAYER_DROPOUT)(x)
    # float32 logits even under a mixed-precision policy: the loss and the exported scores need the range.
    outputs = keras.layers.Dense(num_logits(num_classes), dtype="float32", name=LAYER_LOGITS)(x)
    model = keras.Model(inputs, outputs, name=f"ftune_{cfg.base_model}")
    return model, base


def _augmentation(x, cfg: TrainerConfig):
    """Random horizontal flips and rotations, and with `augmentation=strong` zoom-in crops, brightness and
    contrast; in training only (identity otherwise). Pixels stay in [0, 255]."""
    if not cfg.augment:
        return x
    # One wrapper per layer: wrapping a keras.Sequential of them brings the export problem back.
    x = TrainingOnly(keras.layers.RandomFlip("horizontal", seed=cfg.seed), name=LAYER_FLIP)(x)
    if cfg.rotation_factor > 0:
        x = TrainingOnly(keras.layers.RandomRotation(cfg.rotation_factor, seed=cfg.seed), name=LAYER_ROTATION)(x)
    if cfg.augmentation == "strong":
        # A negative zoom factor zooms in: the random-resized-crop of the ImageNet recipes, kept square.
        zoom = keras.layers.RandomZoom((-STRONG_ZOOM, 0.0), seed=cfg.seed)
        x = TrainingOnly(zoom, name=LAYER_ZOOM)(x)
        brightness = keras.layers.RandomBrightness(STRONG_COLOUR, value_range=(0, 255), seed=cfg.seed)
        x = TrainingOnly(brightness, name=LAYER_BRIGHTNESS)(x)
        contrast = keras.layers.RandomContrast(STRONG_COLOUR, value_range=(0, 255), seed=cfg.seed)
        x = TrainingOnly(contrast, name=LAYER_CONTRAST)(x)
    return x

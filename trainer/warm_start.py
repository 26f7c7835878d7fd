"""Warm start: begin training from the served model's weights instead of the pretrained base.

Vertex AutoML calls this "train from the previous model". It is only sound when the new model has the very same
shape and meaning as the served one: the same label vocabulary (same classes in the same label-id order), the same
`keras.applications` base and the same image size. Then the served model's base (ImageNet weights plus the layers
it fine-tuned) and its head are copied into the freshly built model, and training runs the shorter
`warm_phase1_epochs` / `warm_phase2_epochs` at `warm_fine_tune_lr_factor`. In every other case training starts
cold and the reason says why.

The served model's Keras form is the Keras copy the Trainer writes into the SavedModel's `assets.extra/`
(serving/sidecars.py `keras_model_path`): TF Serving ignores that folder, and the SavedModel's traced functions
cannot be turned back into a trainable Keras model. The Trainer component reads the served model's labels and
that path and passes them in: nothing here opens the files components hand each other.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import keras
import tensorflow as tf

from trainer.model import LAYER_BASE, LAYER_LOGITS, LAYER_PREPROCESS
from trainer.settings import TrainerConfig


def served_model_shape(keras_model: keras.Model) -> Tuple[str, int]:
    """(base model name, image size) of a model built by trainer/model.py."""
    base_model = keras_model.get_layer(LAYER_PREPROCESS).base_model
    return base_model, int(keras_model.inputs[0].shape[1])


def cold_reason(
    cfg: TrainerConfig,
    class_names: List[str],
    served_version: Optional[int],
    served_labels: Optional[List[str]],
    served_keras_path: Optional[str],
) -> Tuple[Optional[str], Optional[keras.Model]]:
    """(why training must start cold, None) or (None, the served Keras model to start from)."""
    if cfg.warm_start == "off":
        return "trainer.warm_start=off", None
    if served_version is None:
        return "nothing is served yet", None
    if served_labels is None or not served_keras_path or not tf.io.gfile.exists(served_keras_path):
        return f"served version {served_version} has no Keras weights (assets.extra/model.keras)", None
    if served_labels != list(class_names):
        added = sorted(set(class_names) - set(served_labels))
        removed = sorted(set(served_labels) - set(class_names))
        if added or removed:
            change = "; ".join(
                part
                for part in (
                    f"classes added: {', '.join(added)}" if added else "",
                    f"classes removed: {', '.join(removed)}" if removed else "",
                )
                if part
            )
        else:
            change = "the label order differs"
        return f"the labels changed since served version {served_version} ({change})", None
    served = keras.saving.load_model(served_keras_path, compile=False)
    base_model, image_size = served_model_shape(served)
    if base_model != cfg.base_model:
        return f"served version {served_version} uses base {base_model}, this run {cfg.base_model}", None
    if image_size != int(cfg.image_size):
        return f"served version {served_version} uses image size {image_size}, this run {cfg.image_size}", None
    return None, served


def copy_weights(served: keras.Model, model: keras.Model) -> None:
    """The served model's base (pretrained and fine-tuned layers) and head weights into `model`."""
    for name in (LAYER_BASE, LAYER_LOGITS):
        source, target = served.get_layer(name).get_weights(), model.get_layer(name)
        shapes = [w.shape for w in target.get_weights()]
        if [w.shape for w in source] != shapes:
            raise ValueError(f"layer {name!r} of the served model has other weight shapes than the new model's")
        target.set_weights(source)


def warm_config(cfg: TrainerConfig) -> TrainerConfig:
    """The settings a warm-started run trains with: its own (shorter) epoch counts and phase-2 learning-rate share."""
    return dataclasses.replace(
        cfg,
        phase1_epochs=cfg.warm_phase1_epochs,
        phase2_epochs=cfg.warm_phase2_epochs,
        fine_tune_lr_factor=cfg.warm_fine_tune_lr_factor,
    )


def describe(served_version: Optional[int], reason: Optional[str]) -> Dict[str, Any]:
    """What the run record's `warm_start` key holds: {"from_version": N or None, "reason": "..."}."""
    if reason is None:
        return {"from_version": served_version, "reason": f"warm start from served version {served_version}"}
    return {"from_version": None, "reason": f"cold start: {reason}"}

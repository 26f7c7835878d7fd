"""Sub-models that share the full model's layers, for the cached training modes (trainer/fine_tune.py).

Each is a functional Keras model built from the layer objects of the model `build_model` returns: training one
trains those very layers, so the full model (image -> logits) carries the result without any copying.

- `extractor`: image -> the frozen base's pooled output and/or its activation at a cut (what the feature caches
  store, trainer/feature_cache.py);
- `head_model`: pooled features -> Dropout -> Dense logits (phase 1 on cached features);
- `top_model`: the activation at the cut -> the base layers above it -> pooling, Dropout, Dense (phase 2 on the
  cached prefix). The cut is `choose_prefix_cut`'s: the highest layer index <= fine_tune_at where exactly one
  tensor crosses (a block boundary in MobileNetV2: residual connections cross the boundaries inside a block).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import keras

from trainer.model import LAYER_DROPOUT, LAYER_LOGITS, LAYER_POOL, LAYER_PREPROCESS

# The names of the activations the extractor returns (and the feature caches keep).
POOLED = "pooled"  # the pooled base output (phase 1)
PREFIX = "prefix"  # the activation at the cut (phase 2)


class PrefixCut:
    """Where the base is cut for phase2_mode="cached_prefix": layers [0, index) form the cached prefix."""

    def __init__(self, index: int, tensor, layer_name: str):
        self.index = index
        self.tensor = tensor  # the one KerasTensor that crosses the cut (output of layer index - 1)
        self.layer_name = layer_name  # the first layer above the cut

    def __repr__(self) -> str:
        return f"PrefixCut(index={self.index}, layer={self.layer_name!r}, shape={tuple(self.tensor.shape)})"


def choose_prefix_cut(base: keras.Model, fine_tune_at: int) -> PrefixCut:
    """The highest cut at or below layer `fine_tune_at` that exactly one tensor crosses.

    In MobileNetV2 a residual `Add` inside a block consumes the block's input, so cutting inside such a block
    would need two cached tensors (the second one often 6x wider: the expanded activation). Cutting at the
    block boundary caches only the narrow block input; the few frozen layers between the cut and
    `fine_tune_at` are then recomputed each step (cheap) but not trained.
    """
    for index in range(fine_tune_at, 0, -1):
        crossing = _tensors_crossing(base, index)
        if len(crossing) == 1:
            return PrefixCut(index, crossing[0], base.layers[index].name)
    raise ValueError(f"base {base.name} has no single-tensor cut at or below layer {fine_tune_at}")


def _tensors_crossing(base: keras.Model, cut: int) -> List[Any]:
    """Tensors produced by layers [0, cut) of `base` and consumed by layers [cut, ...) on the way to its output."""
    position = {id(layer): i for i, layer in enumerate(base.layers)}
    crossing, seen, stack = {}, set(), list(base.outputs)
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        operation, node_index, _ = tensor._keras_history
        producer = position[id(operation)]
        if producer < cut:
            crossing[id(tensor)] = (producer, tensor)
        else:
            stack.extend(operation._inbound_nodes[node_index].input_tensors)
    return [tensor for _, tensor in sorted(crossing.values(), key=lambda item: item[0])]


def extractor(model: keras.Model, base: keras.Model, names: Sequence[str], cut: Optional[PrefixCut]) -> keras.Model:
    """image [0, 255] -> {POOLED: ..., PREFIX: ...} (the `names` asked for): the full model's preprocessing and
    frozen base, in inference mode. PREFIX needs `cut`."""
    images = keras.Input(shape=model.input_shape[1:], name="image")
    x = model.get_layer(LAYER_PREPROCESS)(images)
    outputs = {}
    base_outputs = [cut.tensor] if PREFIX in names else []
    base_outputs.append(base.output)
    values = keras.Model(base.input, base_outputs, name="base_multi")(x, training=False)
    if PREFIX in names:
        outputs[PREFIX] = values[0]
    if POOLED in names:
        outputs[POOLED] = model.get_layer(LAYER_POOL)(values[-1])
    return keras.Model(images, outputs, name="extractor")


def head_model(model: keras.Model, feature_shape: Tuple[int, ...]) -> keras.Model:
    """Pooled base features -> the full model's own Dropout and Dense layers (same objects, same weights)."""
    features = keras.Input(shape=feature_shape, name="pooled_features")
    x = model.get_layer(LAYER_DROPOUT)(features)
    outputs = model.get_layer(LAYER_LOGITS)(x)
    return keras.Model(features, outputs, name="head")


def top_model(model: keras.Model, base: keras.Model, cut: PrefixCut) -> keras.Model:
    """Cached prefix activation -> base layers above the cut -> the full model's pooling, Dropout and Dense."""
    # A functional model from an intermediate tensor re-uses (shares) the base's own layer objects.
    base_top = keras.Model(cut.tensor, base.output, name="base_top")
    prefix = keras.Input(shape=tuple(cut.tensor.shape[1:]), name="prefix_activation")
    x = base_top(prefix, training=False)  # inference-mode BatchNormalization, as in build_model
    x = model.get_layer(LAYER_POOL)(x)
    x = model.get_layer(LAYER_DROPOUT)(x)
    outputs = model.get_layer(LAYER_LOGITS)(x)
    return keras.Model(prefix, outputs, name="top")

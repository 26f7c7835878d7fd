"""Freeze-then-fine-tune training, as in the Keras "Transfer learning & fine-tuning" guide.

Phase 1: the base is frozen and only the new head (Dropout + Dense logits) learns.
Phase 2: the top of the base (from layer `fine_tune_at` on, BatchNormalization excluded) is unfrozen and the
         whole model is trained further at a lower learning rate.

Two speed levers, each computing exactly what the end-to-end model computes for the weights it trains:

- phase1_mode="cached_features": while the base is frozen and runs in inference mode, its pooled output for
  an image never changes, so it is computed once per version of each training image (see below) and once per
  eval image; the head (the SAME Dropout and Dense layer objects as in the full model) then trains on those
  vectors.
- phase2_mode="cached_prefix": the layers below the unfrozen part are frozen and in inference mode too, so
  their output for an image is also constant. The base is cut at the highest layer index <= fine_tune_at
  where exactly one tensor crosses the cut (a block boundary in MobileNetV2: residual connections cross
  the boundaries inside a block), that activation is cached per image version, and only the sub-model above
  the cut (sharing the base's layer objects) trains.

Augmentation in cached modes: random augmentation would change the cached activations every epoch, so a
fixed set of versions of each training image is cached instead (`cache_variants`: the image, its horizontal
flip, then draws of the model's own flip + rotation layers), and every epoch trains each example on one
version drawn at random. On cats-vs-dogs (160 px, 3 seeds each) 4 versions instead of 2 lowered the best eval
loss a little but not clearly the eval accuracy (about 97.5% either way), for 2x the cache and extraction time.

Memory: the caches stay in memory up to `cache_max_mb`; above it they are written to files (a temporary folder
under the Trainer's working directory, removed after training) and read back per batch: the same batches and
the same training, with memory that no longer grows with the data set.

Class imbalance: `class_weighting` ("auto" above `imbalance_ratio`) weights the loss of both phases per class.

Whatever the modes, the trained layers are the layers of the full model, which stays the normal end-to-end
model (image -> logits).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from trainer.model import (
    LAYER_DROPOUT,
    LAYER_FLIP,
    LAYER_LOGITS,
    LAYER_POOL,
    LAYER_PREPROCESS,
    LAYER_ROTATION,
    num_logits,
)
from trainer.settings import ConfigError, TrainerConfig

log = logging.getLogger(__name__)


# --- freezing ---------------------------------------------------------------------------------------------


def resolve_fine_tune_at(base: keras.Model, fine_tune_at: float) -> int:
    """The first unfrozen layer index: `fine_tune_at` itself (>= 1) or that fraction (< 1) of the layers."""
    n = len(base.layers)
    if fine_tune_at <= 0:
        raise ConfigError(f"config value trainer.fine_tune_at must be > 0, got {fine_tune_at}")
    if fine_tune_at < 1:
        index = int(round(fine_tune_at * n))
    elif float(fine_tune_at).is_integer():
        index = int(fine_tune_at)
    else:
        raise ConfigError(
            f"config value trainer.fine_tune_at must be a whole layer index >= 1 or a fraction < 1, got {fine_tune_at}"
        )
    if not 1 <= index < n:
        raise ConfigError(
            f"config value trainer.fine_tune_at={fine_tune_at} selects layer {index}, but the base has "
            f"{n} layers: use an index in [1, {n - 1}] or a fraction in (0, 1)"
        )
    return index


def freeze_base(base: keras.Model) -> int:
    """Freezes the whole base; returns the number of base layers whose weights train (0)."""
    base.trainable = False
    return _count_trainable_layers(base)


def unfreeze_top(base: keras.Model, fine_tune_at: float) -> int:
    """Unfreezes the layers from `fine_tune_at` on, except BatchNormalization layers.

    Returns the number of base layers whose weights will train. BatchNormalization layers stay frozen: their
    gamma/beta keep their pretrained values and (with the base called in inference mode, see model.py) their
    moving statistics are never updated.
    """
    start = resolve_fine_tune_at(base, fine_tune_at)
    base.trainable = True  # recursive: sets every layer; the loop below then freezes what must stay frozen
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= start and not isinstance(layer, keras.layers.BatchNormalization)
    return _count_trainable_layers(base)


def _count_trainable_layers(base: keras.Model) -> int:
    return sum(1 for layer in base.layers if layer.trainable_weights)


# --- compiling --------------------------------------------------------------------------------------------


def compile_model(model: keras.Model, learning_rate: float, num_classes: int, jit_compile: bool = False) -> None:
    """Adam + cross-entropy on logits + an accuracy metric that is correct on logits (named "accuracy").

    jit_compile defaults to False: Keras 3's "auto" turns XLA on, which on CPU runs these convolutional
    models more than ten times slower than TensorFlow's default kernels (measured: 16 vs 277 images/s).
    """
    if num_logits(num_classes) == 1:
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        # The output is a logit, not a probability: logit > 0 is the same decision as sigmoid > 0.5, so the
        # threshold must be 0 (the default 0.5 would count logits in (0, 0.5] as class 0).
        metric = keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        # argmax is the same on logits and on probabilities.
        metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=loss,
        metrics=[metric],
        jit_compile=jit_compile,
    )


def optimizer_learning_rate(model: keras.Model) -> float:
    """The learning rate of the optimizer the model is compiled with (a schedule's peak value)."""
    schedule = getattr(model.optimizer, "_learning_rate", None)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        peak = getattr(schedule, "warmup_target", None)
        return float(peak if peak is not None else schedule.initial_learning_rate)
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


# --- the two phases ---------------------------------------------------------------------------------------


def train_two_phase(
    model: keras.Model,
    base: keras.Model,
    train_ds: tf.data.Dataset,
    eval_ds: Optional[tf.data.Dataset],
    cfg: TrainerConfig,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
    work_dir: Optional[str] = None,
) -> Dict[str, Any]:
    """Phase 1 (frozen base, new head) then phase 2 (top of the base unfrozen, lower learning rate).

    `train_ds` / `eval_ds`: batched (image float32 [S, S, 3] in [0, 255], integer label). `model` and `base`
    come from `build_model`; they are trained in place and `model` ends compiled for its phase-2 state.
    `callbacks` are passed to every `fit`; in cached modes they see the model being fitted there (the head,
    or the sub-model above the cut), not `model`. `work_dir`: where feature caches over `cfg.cache_max_mb`
    spill to (a temporary folder inside it, removed at the end; default: the system's temporary folder).

    Returns a JSON-serialisable history (see `_History.as_dict`).
    """
    # The settings were validated when they were loaded (pipeline.configs); they are read here as they are.
    num_classes = _num_classes(model)
    lr1 = float(cfg.learning_rate)
    history = _History(lr1, lr1 * float(cfg.fine_tune_lr_factor))
    started = time.perf_counter()

    # Feature caches, computed in one pass over the data for whichever cached modes are on. Above
    # cache_max_mb they spill to files under `work_dir` (removed when training ends).
    cut = None
    if cfg.phase2_mode == "cached_prefix" and cfg.phase2_epochs > 0:
        cut = choose_prefix_cut(base, resolve_fine_tune_at(base, cfg.fine_tune_at))
    spill_dir = tempfile.TemporaryDirectory(prefix="ftune-feature-cache-", dir=work_dir)
    try:
        caches = _FeatureCaches.build(
            model,
            base,
            train_ds,
            eval_ds,
            pooled=cfg.phase1_mode == "cached_features" and cfg.phase1_epochs > 0,
            prefix=cut,
            variants=cache_variants(cfg),
            max_bytes=int(cfg.cache_max_mb) * 2**20,
            spill_dir=spill_dir.name,
        )
        history.cache_info(caches, cut, time.perf_counter() - started)
        labels = caches.train_labels
        if labels is None and cfg.class_weighting != "off":
            labels = _dataset_labels(train_ds)  # end-to-end modes: one pass to count the classes
        class_weight = None
        if labels is None:
            history.class_weighting = {"setting": cfg.class_weighting, "applied": False}
        else:
            history.class_weighting = class_weighting(labels, num_classes, cfg)
            if history.class_weighting["applied"]:
                class_weight = history.class_weighting["weights"]
        _train_phases(model, base, train_ds, eval_ds, cfg, callbacks, verbose, caches, cut, class_weight, history)
        caches.close()
    finally:
        spill_dir.cleanup()
    history.total_seconds = time.perf_counter() - started
    return history.as_dict()


def _train_phases(model, base, train_ds, eval_ds, cfg, callbacks, verbose, caches, cut, class_weight, history):
    """Both phases, on the caches where `caches` holds them (see `train_two_phase`); fills `history`."""
    phase1_mode, phase2_mode, jit_compile = cfg.phase1_mode, cfg.phase2_mode, cfg.jit_compile
    if cut is None:
        phase2_mode = "end_to_end"  # phase 2 off: nothing was cached for it
    num_classes = _num_classes(model)
    lr1, lr2 = history.learning_rates["phase1"], history.learning_rates["phase2"]
    run_phase2 = cfg.phase2_epochs > 0
    fitted = None  # the model the last `fit` trained: `model` itself, or a sub-model sharing its layers

    # Phase 1: base frozen, head trained at lr1.
    freeze_base(base)
    phase_start = time.perf_counter()
    if cfg.phase1_epochs > 0:
        if phase1_mode == "cached_features":
            fitted = _head_model(model, caches.feature_shape("pooled"))
            train_data, val_data = caches.batches("pooled", cfg), caches.eval_data("pooled", cfg)
        else:
            fitted, train_data, val_data = model, train_ds, eval_ds
        compile_model(fitted, lr1, num_classes, jit_compile)
        history.phase_lr(1, optimizer_learning_rate(fitted))
        progress = PhaseProgress("phase 1 (frozen base)", 0, cfg.phase1_epochs)
        fit_history = _fit(
            fitted, train_data, val_data, cfg, [*callbacks, progress], 0, cfg.phase1_epochs, verbose, class_weight
        )
        history.add_epochs(1, fit_history)
        history.final_accuracy(1, _evaluate(fitted, val_data, cfg))
    history.phase_done(1, phase1_mode, time.perf_counter() - phase_start)

    # Phase 2: top of the base unfrozen, recompiled at lr2.
    if run_phase2:
        phase_start = time.perf_counter()
        history.trainable_base_layers = unfreeze_top(base, cfg.fine_tune_at)
        if phase2_mode == "cached_prefix":
            fitted = _top_model(model, base, cut)
            train_data, val_data = caches.batches("prefix", cfg), caches.eval_data("prefix", cfg)
        else:
            fitted, train_data, val_data = model, train_ds, eval_ds
        # Recompile: a change of `trainable` only takes effect when the model is compiled again (the train
        # step is built for a fixed list of trainable variables), and the optimizer must start afresh at the
        # lower learning rate instead of carrying phase-1 moment estimates and learning rate.
        compile_model(fitted, _phase2_learning_rate(cfg, lr2, train_data), num_classes, jit_compile)
        history.phase_lr(2, optimizer_learning_rate(fitted))
        first_epoch = history.epochs_run
        label = f"phase 2 (fine-tuning from layer {resolve_fine_tune_at(base, cfg.fine_tune_at)})"
        progress = PhaseProgress(label, first_epoch, first_epoch + cfg.phase2_epochs)
        fit_history = _fit(
            fitted,
            train_data,
            val_data,
            cfg,
            [*callbacks, progress],
            first_epoch,
            first_epoch + cfg.phase2_epochs,
            verbose,
            class_weight,
        )
        history.add_epochs(2, fit_history)
        history.final_accuracy(2, _evaluate(fitted, val_data, cfg))
        history.phase_done(2, phase2_mode, time.perf_counter() - phase_start)

    if fitted is not model:
        # Cached modes trained sub-models that share `model`'s layers; compile `model` itself for the state
        # it is now in (so that evaluate works), with a fresh optimizer at the last phase's learning rate.
        compile_model(model, lr2 if run_phase2 else lr1, num_classes, jit_compile)


class PhaseProgress(keras.callbacks.Callback):
    """One log line per epoch: "Phase 1 (frozen base) epoch 3/10 [######....] loss .. accuracy .. val_accuracy ..,
    4.1 s/epoch, about 29 s left in this phase" (the estimate assumes early stopping does not cut the phase)."""

    BAR = 20

    def __init__(self, label: str, initial_epoch: int, epochs: int):
        super().__init__()
        self.label = label[0].upper() + label[1:]
        self.initial_epoch, self.epochs = initial_epoch, epochs
        self._started = self._epoch_started = 0.0

    def on_train_begin(self, logs=None):
        self._started = time.perf_counter()
        log.info(
            "%s: %d epoch(s), overall epochs %d-%d",
            self.label,
            self.epochs - self.initial_epoch,
            self.initial_epoch + 1,
            self.epochs,
        )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        done, total = epoch + 1 - self.initial_epoch, self.epochs - self.initial_epoch
        per_epoch = (time.perf_counter() - self._started) / max(done, 1)
        filled = int(self.BAR * done / max(total, 1))
        metrics = " ".join(
            f"{key} {float(value):.3f}"
            for key, value in sorted((logs or {}).items())
            if key in ("loss", "accuracy", "val_loss", "val_accuracy")
        )
        left = per_epoch * (total - done)
        log.info(
            "%s epoch %d/%d [%s%s] %s; %.1f s/epoch, %s",
            self.label,
            done,
            total,
            "#" * filled,
            "." * (self.BAR - filled),
            metrics,
            per_epoch,
            f"about {left:.0f} s left in this phase" if done < total else "phase done",
        )


def _phase2_learning_rate(cfg: TrainerConfig, lr2: float, train_data):
    """lr2 (`phase2_lr_schedule: constant`), or (`cosine`) a linear warm-up from 0 to lr2 over the first epoch
    followed by a cosine decay to 0 at the end of the phase-2 epochs."""
    if cfg.phase2_lr_schedule == "constant":
        return lr2
    steps = len(train_data) if isinstance(train_data, keras.utils.PyDataset) else int(train_data.cardinality())
    if steps <= 0:  # unknown length (e.g. a filtered dataset): no schedule to size
        log.warning("phase2_lr_schedule=cosine needs a dataset of known length; using a constant learning rate")
        return lr2
    # The warm-up: Adam's first steps move every unfrozen weight by about the full learning rate, whatever its
    # gradient, which can knock the pretrained features off for an epoch.
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps * max(cfg.phase2_epochs - 1, 1), warmup_target=lr2, warmup_steps=steps
    )


def _num_classes(model: keras.Model) -> int:
    units = model.get_layer(LAYER_LOGITS).units
    return 2 if units == 1 else units


def _fit(
    model, train_data, val_data, cfg, callbacks, initial_epoch, epochs, verbose, class_weight=None
) -> Dict[str, List[float]]:
    """One phase: `fit` with early stopping on the eval loss, restoring the best epoch's weights."""
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss" if val_data is not None else "loss",
        patience=cfg.early_stopping_patience,
        restore_best_weights=True,
    )
    kwargs = {}
    if isinstance(val_data, tuple):
        kwargs["validation_batch_size"] = cfg.batch_size
    result = model.fit(
        train_data,
        validation_data=val_data,
        epochs=epochs,
        initial_epoch=initial_epoch,
        callbacks=[*callbacks, early_stopping],
        verbose=verbose,
        class_weight=class_weight,
        **kwargs,
    )
    return result.history


def _evaluate(model, val_data, cfg) -> Optional[float]:
    if val_data is None:
        return None
    if isinstance(val_data, tuple):
        results = model.evaluate(*val_data, batch_size=cfg.batch_size, verbose=0, return_dict=True)
    else:
        results = model.evaluate(val_data, verbose=0, return_dict=True)
    return float(results["accuracy"])


class _History:
    """Collects what `train_two_phase` returns."""

    def __init__(self, lr1: float, lr2: float):
        self.metrics: Dict[str, List[float]] = {}
        self.phase: List[int] = []
        self.learning_rates = {"phase1": lr1, "phase2": lr2}
        self.optimizer_learning_rates: Dict[str, float] = {}
        self.modes: Dict[str, str] = {}
        self.seconds: Dict[str, float] = {}
        self.final_eval_accuracy: Dict[str, Optional[float]] = {}
        self.phase2_start_epoch: Optional[int] = None
        self.trainable_base_layers = 0
        self.cache: Dict[str, Any] = {}
        self.class_weighting: Dict[str, Any] = {}
        self.total_seconds = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.phase)

    def cache_info(self, caches: _FeatureCaches, cut: Optional[PrefixCut], seconds: float) -> None:
        self.cache = {"bytes": caches.nbytes(), "on_disk_bytes": caches.on_disk_bytes(), "seconds": seconds}
        if cut is not None:
            self.cache.update(cut_layer_index=cut.index, cut_layer_name=cut.layer_name)

    def phase_lr(self, phase: int, value: float) -> None:
        self.optimizer_learning_rates[f"phase{phase}"] = value

    def add_epochs(self, phase: int, fit_history: Dict[str, List[float]]) -> None:
        if phase == 2:
            self.phase2_start_epoch = self.epochs_run
        done = self.epochs_run
        count = len(next(iter(fit_history.values()), []))
        for key, values in fit_history.items():
            self.metrics.setdefault(key, [None] * done).extend(float(v) for v in values)
        for values in self.metrics.values():  # a key missing in this phase
            values.extend([None] * (done + count - len(values)))
        self.phase.extend([phase] * count)

    def final_accuracy(self, phase: int, value: Optional[float]) -> None:
        self.final_eval_accuracy[f"phase{phase}"] = value

    def phase_done(self, phase: int, mode: str, seconds: float) -> None:
        self.modes[f"phase{phase}"] = mode
        self.seconds[f"phase{phase}"] = seconds

    def as_dict(self) -> Dict[str, Any]:
        """Per-epoch lists (metrics, `epoch`, `phase`), then the per-run facts; plain JSON types only."""
        return {
            **self.metrics,
            "epoch": list(range(self.epochs_run)),
            "phase": list(self.phase),
            "phase2_start_epoch": self.phase2_start_epoch,
            "learning_rates": dict(self.learning_rates),
            "optimizer_learning_rates": dict(self.optimizer_learning_rates),
            "modes": dict(self.modes),
            "trainable_base_layers": int(self.trainable_base_layers),
            "final_accuracy": dict(self.final_eval_accuracy),  # on the eval split, after each phase
            "wall_seconds": {
                "feature_cache": float(self.cache.get("seconds", 0.0)),
                **{k: float(v) for k, v in self.seconds.items()},
                "total": float(self.total_seconds),
            },
            "cache": {k: v for k, v in self.cache.items() if k != "seconds"},
            # JSON keys are strings: the class index as text.
            "class_weighting": {
                **self.class_weighting,
                "weights": {str(k): v for k, v in self.class_weighting.get("weights", {}).items()},
            },
        }


# --- sub-models sharing the full model's layers -----------------------------------------------------------


def _head_model(model: keras.Model, feature_shape: Tuple[int, ...]) -> keras.Model:
    """Pooled base features -> the full model's own Dropout and Dense layers (same objects, same weights)."""
    features = keras.Input(shape=feature_shape, name="pooled_features")
    x = model.get_layer(LAYER_DROPOUT)(features)
    outputs = model.get_layer(LAYER_LOGITS)(x)
    return keras.Model(features, outputs, name="head")


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


def _top_model(model: keras.Model, base: keras.Model, cut: PrefixCut) -> keras.Model:
    """Cached prefix activation -> base layers above the cut -> the full model's pooling, Dropout and Dense."""
    # A functional model from an intermediate tensor re-uses (shares) the base's own layer objects.
    base_top = keras.Model(cut.tensor, base.output, name="base_top")
    prefix = keras.Input(shape=tuple(cut.tensor.shape[1:]), name="prefix_activation")
    x = base_top(prefix, training=False)  # inference-mode BatchNormalization, as in build_model
    x = model.get_layer(LAYER_POOL)(x)
    x = model.get_layer(LAYER_DROPOUT)(x)
    outputs = model.get_layer(LAYER_LOGITS)(x)
    return keras.Model(prefix, outputs, name="top")


# --- feature caches ---------------------------------------------------------------------------------------


def cache_variants(cfg: TrainerConfig) -> int:
    """How many versions of each training image the cached modes keep (see `_FeatureCaches`)."""
    if not cfg.augment:
        return 1
    wanted = int(cfg.cache_variants)
    if cfg.rotation_factor <= 0:
        return min(wanted, 2)  # the image and its flip are the only versions flip augmentation can produce
    return wanted


class _FeatureCaches:
    """Frozen-base activations of every training image in a few versions, and of every eval image.

    Training versions: 0 is the image, 1 its horizontal flip, 2.. random draws of the model's own augmentation
    layers (flip + rotation). `train[name]` is the list of per-version arrays, `eval[name]` one array; names:
    "pooled" (the pooled base output, phase 1) and "prefix" (the activation at the cut, phase 2). An array is
    a numpy array in memory or, once the caches would exceed their memory budget, a `_DiskArray` (same rows,
    read from a file on demand).
    """

    def __init__(self):
        self.train: Dict[str, List[Any]] = {}
        self.train_labels: Optional[np.ndarray] = None
        self.eval: Dict[str, Any] = {}
        self.eval_labels: Optional[np.ndarray] = None

    @classmethod
    def build(
        cls,
        model,
        base,
        train_ds,
        eval_ds,
        pooled: bool,
        prefix: Optional[PrefixCut],
        variants: int,
        max_bytes: int,
        spill_dir: str,
    ):
        """One pass of the frozen base over the data. At most `max_bytes` stay in memory: when the next chunk
        would go over, every cache moves to files in `spill_dir` and the rest is written there."""
        caches = cls()
        names = [name for name, wanted in (("pooled", pooled), ("prefix", prefix is not None)) if wanted]
        if not names:
            return caches
        extractor = _extractor(model, base, names, prefix)
        budget = _SpillBudget(max_bytes, spill_dir)
        train, caches.train_labels = _run_extractor(
            extractor, train_ds, names, variants, _augmentation_layers(model), budget, "train"
        )
        evals = None
        if eval_ds is not None:
            evals, caches.eval_labels = _run_extractor(extractor, eval_ds, names, 1, [], budget, "eval")
        # Joined only now: a cache joined in memory before the eval pass could not spill any more.
        caches.train = {name: [writer.finish() for writer in writers] for name, writers in train.items()}
        if evals is not None:
            caches.eval = {name: writers[0].finish() for name, writers in evals.items()}
        return caches

    def _arrays(self):
        for name, arrays in self.train.items():
            yield f"train_{name}", arrays
        for name, array in self.eval.items():
            yield f"eval_{name}", [array]

    def nbytes(self) -> Dict[str, int]:
        sizes = {key: int(sum(a.nbytes for a in arrays)) for key, arrays in self._arrays()}
        sizes["total"] = sum(sizes.values())
        return sizes

    def on_disk_bytes(self) -> int:
        return int(sum(a.nbytes for _, arrays in self._arrays() for a in arrays if isinstance(a, _DiskArray)))

    def close(self) -> None:
        for _, arrays in self._arrays():
            for array in arrays:
                if isinstance(array, _DiskArray):
                    array.close()

    def feature_shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self.train[name][0].shape[1:])

    def batches(self, name: str, cfg: TrainerConfig) -> _CachedBatches:
        return _CachedBatches(self.train[name], self.train_labels, cfg.batch_size, cfg.seed)

    def eval_data(self, name: str, cfg: TrainerConfig):
        """(features, labels) in memory; batches read in order when the eval cache is on disk; None: no eval."""
        if name not in self.eval:
            return None
        if isinstance(self.eval[name], _DiskArray):
            return _OrderedBatches(self.eval[name], self.eval_labels, cfg.batch_size)
        return self.eval[name], self.eval_labels


class _SpillBudget:
    """The memory budget of the feature caches being written; over it, all of them move to files."""

    def __init__(self, max_bytes: int, directory: str):
        self.max_bytes, self.directory = int(max_bytes), directory
        self.in_memory = 0
        self.spilling = False
        self.writers: List[_ArrayWriter] = []

    def writer(self, tag: str) -> _ArrayWriter:
        writer = _ArrayWriter(self, os.path.join(self.directory, f"{tag}.bin"))
        self.writers.append(writer)
        if self.spilling:
            writer.spill()
        return writer

    def reserve(self, nbytes: int) -> None:
        if self.spilling:
            return
        if self.in_memory + nbytes <= self.max_bytes:
            self.in_memory += nbytes
            return
        log.warning(
            "the feature caches go over trainer.cache_max_mb=%d; writing them to %s",
            self.max_bytes // 2**20,
            self.directory,
        )
        self.spilling = True
        for writer in self.writers:
            writer.spill()
        self.in_memory = 0


class _ArrayWriter:
    """Rows of one cache, appended chunk by chunk: kept in memory, or (after `spill`) appended to a raw file."""

    def __init__(self, budget: _SpillBudget, path: str):
        self._budget, self.path = budget, path
        self._chunks: List[np.ndarray] = []
        self._file = None
        self._rows = 0
        self._row_shape: Tuple[int, ...] = ()
        self._dtype = np.dtype("float32")

    def append(self, chunk: np.ndarray) -> None:
        self._rows += len(chunk)
        self._row_shape, self._dtype = tuple(chunk.shape[1:]), chunk.dtype
        self._budget.reserve(chunk.nbytes)  # may spill this writer too
        if self._file is not None:
            np.ascontiguousarray(chunk).tofile(self._file)
        else:
            self._chunks.append(chunk)

    def spill(self) -> None:
        if self._file is None:
            self._file = open(self.path, "wb")
            for chunk in self._chunks:
                np.ascontiguousarray(chunk).tofile(self._file)
            self._chunks = []

    def finish(self):
        """The rows written: a numpy array, or a `_DiskArray` over the file."""
        if self._file is None:
            array = np.concatenate(self._chunks)
            self._chunks = []
            return array
        self._file.close()
        return _DiskArray(self.path, self._rows, self._row_shape, self._dtype)


class _DiskArray:
    """A C-order array of `rows` rows stored raw in a file, rows read on demand with `os.pread`.

    Not memory-mapped on purpose: pages of a mapping that were read count towards the process's resident
    memory; rows read with pread live only in the OS page cache, which the kernel reclaims as it needs to."""

    def __init__(self, path: str, rows: int, row_shape: Tuple[int, ...], dtype):
        self.path = path
        self.shape = (int(rows),) + tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self._row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd: Optional[int] = os.open(path, os.O_RDONLY)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self._row_bytes

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.shape[0])
            if step == 1:
                count = max(stop - start, 0)
                data = os.pread(self._fd, count * self._row_bytes, start * self._row_bytes)
                return np.frombuffer(data, self.dtype).reshape((count,) + self.shape[1:]).copy()
            index = np.arange(start, stop, step)
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows),) + self.shape[1:], self.dtype)
        flat = out.reshape(len(rows), self._row_bytes // self.dtype.itemsize)
        for i, row in enumerate(rows):
            data = os.pread(self._fd, self._row_bytes, int(row) * self._row_bytes)
            flat[i] = np.frombuffer(data, self.dtype)
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()


def _augmentation_layers(model: keras.Model) -> List[keras.layers.Layer]:
    names = {layer.name for layer in model.layers}
    return [model.get_layer(name) for name in (LAYER_FLIP, LAYER_ROTATION) if name in names]


def _extractor(model, base, names: List[str], cut: Optional[PrefixCut]) -> keras.Model:
    """image [0, 255] -> {"pooled": ..., "prefix": ...}: the full model's preprocessing and frozen base."""
    images = keras.Input(shape=model.input_shape[1:], name="image")
    x = model.get_layer(LAYER_PREPROCESS)(images)
    outputs = {}
    base_outputs = [cut.tensor] if "prefix" in names else []
    base_outputs.append(base.output)
    values = keras.Model(base.input, base_outputs, name="base_multi")(x, training=False)
    if "prefix" in names:
        outputs["prefix"] = values[0]
    if "pooled" in names:
        outputs["pooled"] = model.get_layer(LAYER_POOL)(values[-1])
    return keras.Model(images, outputs, name="extractor")


def _run_extractor(
    extractor, dataset, names, variants: int, augment: List[keras.layers.Layer], budget: _SpillBudget, split: str
):
    """Per name, a list of `variants` writers (one per version of the images, see `_FeatureCaches`), and labels."""

    @tf.function(reduce_retracing=True)
    def extract(images):
        versions = [images, tf.reverse(images, axis=[2])][:variants]  # axis 2 is the width
        for _ in range(variants - len(versions)):
            augmented = images
            for layer in augment:
                augmented = layer(augmented, training=True)
            versions.append(augmented)
        # One base call per version: on 2 CPU cores a batch of 32 runs faster than one of 128.
        return [extractor(version, training=False) for version in versions]

    writers = {name: [budget.writer(f"{split}_{name}_{v}") for v in range(variants)] for name in names}
    labels = []
    for images, batch_labels in dataset:
        for version, values in enumerate(extract(images)):
            for name in names:
                writers[name][version].append(values[name].numpy())
        labels.append(np.asarray(batch_labels).reshape(-1))
    return writers, np.concatenate(labels).astype(np.int32)


class _CachedBatches(keras.utils.PyDataset):
    """Shuffled batches of cached activations. For every example and epoch one of its cached versions is drawn
    at random: the cached counterpart of the random augmentation layers."""

    def __init__(self, versions: List[np.ndarray], labels: np.ndarray, batch_size: int, seed: int):
        super().__init__()
        self._versions, self._labels = versions, labels
        self._batch_size = int(batch_size)
        self._rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self._labels) / self._batch_size)

    def __getitem__(self, index: int):
        rows = self._order[index * self._batch_size : (index + 1) * self._batch_size]
        chosen = self._version[rows]
        x = np.empty((len(rows),) + self._versions[0].shape[1:], dtype=self._versions[0].dtype)
        for version, array in enumerate(self._versions):
            picked = chosen == version
            x[picked] = array[rows[picked]]
        return x, self._labels[rows]

    def on_epoch_end(self) -> None:
        n = len(self._labels)
        self._order = self._rng.permutation(n)
        self._version = self._rng.integers(0, len(self._versions), n)


class _OrderedBatches(keras.utils.PyDataset):
    """Batches of an on-disk eval cache, in order."""

    def __init__(self, features: _DiskArray, labels: np.ndarray, batch_size: int):
        super().__init__()
        self._features, self._labels, self._batch_size = features, labels, int(batch_size)

    def __len__(self) -> int:
        return math.ceil(len(self._labels) / self._batch_size)

    def __getitem__(self, index: int):
        rows = slice(index * self._batch_size, (index + 1) * self._batch_size)
        return self._features[rows], self._labels[rows]


# --- class imbalance --------------------------------------------------------------------------------------


def class_weighting(labels: np.ndarray, num_classes: int, cfg: TrainerConfig) -> Dict[str, Any]:
    """Whether both phases weight the loss per class, and with what (recorded in the training history).

    Weights are n / (classes * count): a class with half the average count weighs 2. `auto` turns them on when
    the largest class has more than `cfg.imbalance_ratio` times the training examples of the smallest one.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64).reshape(-1), minlength=num_classes)[:num_classes]
    present = counts[counts > 0]
    ratio = float(present.max() / present.min()) if len(present) else 1.0
    applied = {"on": True, "off": False}.get(cfg.class_weighting, ratio > float(cfg.imbalance_ratio))
    total = float(counts.sum())
    weights = {i: (total / (num_classes * float(c)) if c else 1.0) for i, c in enumerate(counts)}
    return {
        "setting": cfg.class_weighting,
        "imbalance_ratio": round(ratio, 4),
        "threshold": float(cfg.imbalance_ratio),
        "applied": bool(applied),
        "class_counts": [int(c) for c in counts],
        "weights": {int(i): float(w) for i, w in weights.items()},
    }


def _dataset_labels(dataset: tf.data.Dataset) -> np.ndarray:
    """The labels of a batched (image, label) dataset: one pass over it (end-to-end modes only)."""
    labels = [np.asarray(y).reshape(-1) for y in dataset.map(lambda x, y: y)]
    return np.concatenate(labels) if labels else np.zeros(0, np.int64)

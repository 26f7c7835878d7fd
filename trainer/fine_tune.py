"""Freeze-then-fine-tune training, as in the Keras "Transfer learning & fine-tuning" guide.

Phase 1: the base is frozen and only the new head (Dropout + Dense logits) learns.
Phase 2: the top of the base (from layer `fine_tune_at` on, BatchNormalization excluded) is unfrozen and the
         whole model is trained further at a lower learning rate.

One function runs a phase (`_run_phase`); what differs between the two is data (`_Phase`): the model fitted and
the part of the base that trains, the data it is fed, the learning rate (or schedule) and the epochs.

Two speed levers, each computing exactly what the end-to-end model computes for the weights it trains:

- phase1_mode="cached_features": while the base is frozen and runs in inference mode, its pooled output for
  an image never changes, so it is computed once per version of each training image and once per eval image;
  the head (the SAME Dropout and Dense layer objects as in the full model) then trains on those vectors.
- phase2_mode="cached_prefix": the layers below the unfrozen part are frozen and in inference mode too, so
  their output for an image is also constant. The base is cut at a block boundary at or below fine_tune_at
  (trainer/sub_models.py `choose_prefix_cut`), that activation is cached per image version, and only the
  sub-model above the cut (sharing the base's layer objects) trains.

The caches (versions of each image standing in for random augmentation, spilling to files above
`cache_max_mb`) are trainer/feature_cache.py; class weights (`class_weighting`) are trainer/class_weights.py; the
returned record is trainer/training_history.py.

Whatever the modes, the trained layers are the layers of the full model, which stays the normal end-to-end
model (image -> logits).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from trainer import eval_predictions
from trainer.class_weights import training_class_weights
from trainer.eval_predictions import EvalPredictions
from trainer.feature_cache import FeatureCaches, cache_variants
from trainer.model import LAYER_LOGITS, num_logits
from trainer.settings import TrainerConfig
from trainer.sub_models import POOLED, PREFIX, PrefixCut, choose_prefix_cut, head_model, top_model
from trainer.training_history import TrainingHistory

log = logging.getLogger(__name__)


# --- freezing ---------------------------------------------------------------------------------------------


def freeze_base(base: keras.Model) -> int:
    """Freezes the whole base; returns the number of base layers whose weights train (0)."""
    base.trainable = False
    return _count_trainable_layers(base)


def unfreeze_top(base: keras.Model, start: int) -> int:
    """Unfreezes the layers from index `start` on (`TrainerConfig.fine_tune_layer()`), except BatchNormalization.

    Returns the number of base layers whose weights will train. BatchNormalization layers stay frozen: their
    gamma/beta keep their pretrained values and (with the base called in inference mode, see model.py) their
    moving statistics are never updated.
    """
    base.trainable = True  # recursive: sets every layer; the loop below then freezes what must stay frozen
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= start and not isinstance(layer, keras.layers.BatchNormalization)
    return _count_trainable_layers(base)


def _count_trainable_layers(base: keras.Model) -> int:
    return sum(1 for layer in base.layers if layer.trainable_weights)


def _fine_tune_layer(cfg: TrainerConfig, base: keras.Model) -> int:
    """`cfg.fine_tune_layer()`. The settings checked it against BASE_MODELS' layer counts, which a test keeps equal
    to the real bases'; this guard only fires if the base built here has fewer layers than that."""
    start = cfg.fine_tune_layer()
    if not 1 <= start < len(base.layers):
        raise ValueError(f"trainer.fine_tune_at selects layer {start}; base {base.name} has {len(base.layers)} layers")
    return start


# --- compiling --------------------------------------------------------------------------------------------


def compile_model(
    model: keras.Model, learning_rate: float, num_classes: int, jit_compile: bool = False, label_smoothing: float = 0.0
) -> None:
    """Adam + cross-entropy on logits + an accuracy metric that is correct on logits (named "accuracy").

    jit_compile defaults to False: Keras 3's "auto" turns XLA on, which on CPU runs these convolutional
    models more than ten times slower than TensorFlow's default kernels (measured: 16 vs 277 images/s).
    label_smoothing (`trainer.label_smoothing`): the targets become (1 - s) on the given class and s spread over
    all classes, which keeps the head from growing over-confident on the few examples of a small data set.
    """
    if num_logits(num_classes) == 1:
        loss = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=label_smoothing)
        # The output is a logit, not a probability: logit > 0 is the same decision as sigmoid > 0.5, so the
        # threshold must be 0 (the default 0.5 would count logits in (0, 0.5] as class 0).
        metric = keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)
    else:
        loss = (
            SparseSmoothedCrossentropy(num_classes, label_smoothing)
            if label_smoothing > 0
            else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        # argmax is the same on logits and on probabilities.
        metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=loss,
        metrics=[metric],
        jit_compile=jit_compile,
    )


@keras.saving.register_keras_serializable(package="ftune")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy on logits against integer labels with label smoothing: Keras 3's sparse loss has no
    `label_smoothing`, so the labels are one-hot encoded first. Per-example losses, so class weights still apply."""

    def __init__(self, num_classes: int, label_smoothing: float, name: str = "sparse_smoothed_crossentropy", **kw):
        super().__init__(name=name, **kw)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        one_hot = keras.ops.one_hot(labels, self.num_classes)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=True, label_smoothing=self.label_smoothing
        )

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes, "label_smoothing": self.label_smoothing}


def optimizer_learning_rate(model: keras.Model) -> float:
    """The learning rate of the optimizer the model is compiled with (a schedule's peak value)."""
    schedule = getattr(model.optimizer, "_learning_rate", None)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        peak = getattr(schedule, "warmup_target", None)
        return float(peak if peak is not None else schedule.initial_learning_rate)
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


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
    cache_train_ds: Optional[tf.data.Dataset] = None,
    on_pooled_features: Optional[Callable[[np.ndarray, np.ndarray, List[str]], None]] = None,
    named_eval_ds: Optional[tf.data.Dataset] = None,
    on_eval_predictions: Optional[Callable[[EvalPredictions], None]] = None,
) -> Dict[str, Any]:
    """Phase 1 (frozen base, new head) then phase 2 (top of the base unfrozen, lower learning rate).

    `train_ds` / `eval_ds`: batched (image float32 [S, S, 3] in [0, 255], integer label). `model` and `base`
    come from `build_model`; they are trained in place and `model` ends compiled for its phase-2 state.
    `callbacks` are passed to every `fit`; in cached modes they see the model being fitted there (the head,
    or the sub-model above the cut), not `model`. `work_dir`: where feature caches over `cfg.cache_max_mb`
    spill to (a temporary folder inside it, removed at the end; default: the system's temporary folder).
    `cache_train_ds`: the training data the caches are built from, when not `train_ds` (the caches shuffle per
    epoch themselves, so it may be in file order); batches of (images, labels, file names) let
    `on_pooled_features(features, labels, file_names)` be called once the caches exist, with the pooled
    features of the un-augmented training images (only when POOLED is cached: `cfg.caches_pooled_features()`).
    Those are the features of the base as it is when this is called: the pretrained one unless weights were
    copied in before (a warm start).
    `named_eval_ds`: the eval data as batches of (images, labels, file names) in file order; the eval caches are
    built from it instead of `eval_ds`, and once training ends `on_eval_predictions` gets the trained model's
    class probabilities for every eval image (trainer/eval_predictions.py), from the eval cache when the last
    phase trained on caches, else from a pass of the full model over it.

    Returns a JSON-serialisable history (see `TrainingHistory.as_dict`).
    """
    # The settings were validated when they were loaded (pipeline.configs); they are read here as they are.
    num_classes = _num_classes(model)
    lr1 = float(cfg.learning_rate)
    history = TrainingHistory(lr1, lr1 * float(cfg.fine_tune_lr_factor))
    started = time.perf_counter()
    fine_tune_layer = _fine_tune_layer(cfg, base)

    # Feature caches, computed in one pass over the data for whichever cached modes are on. Above
    # cache_max_mb they spill to files under `work_dir` (removed when training ends).
    cut = None
    if cfg.phase2_mode == "cached_prefix" and cfg.phase2_epochs > 0:
        cut = choose_prefix_cut(base, fine_tune_layer)
    spill_dir = tempfile.TemporaryDirectory(prefix="ftune-feature-cache-", dir=work_dir)
    try:
        caches = FeatureCaches.build(
            model,
            base,
            cache_train_ds if cache_train_ds is not None else train_ds,
            named_eval_ds if named_eval_ds is not None else eval_ds,
            pooled=cfg.caches_pooled_features(),
            cut=cut,
            variants=cache_variants(cfg),
            max_bytes=int(cfg.cache_max_mb) * 2**20,
            spill_dir=spill_dir.name,
        )
        history.cache_info(caches, cut, time.perf_counter() - started)
        plain = caches.plain_pooled() if on_pooled_features is not None else None
        if plain is not None:
            on_pooled_features(*plain)
        history.class_weighting, class_weight = training_class_weights(caches.train_labels, train_ds, num_classes, cfg)
        run = _Run(
            model=model,
            base=base,
            train_ds=train_ds,
            eval_ds=eval_ds,
            cfg=cfg,
            callbacks=callbacks,
            verbose=verbose,
            fine_tune_layer=fine_tune_layer,
            cut=cut,
            caches=caches,
            class_weight=class_weight,
            history=history,
        )
        last = _train_phases(run)
        if on_eval_predictions is not None and named_eval_ds is not None:
            on_eval_predictions(_final_eval_predictions(run, last, named_eval_ds))
        caches.close()
    finally:
        spill_dir.cleanup()
    history.total_seconds = time.perf_counter() - started
    return history.as_dict()


@dataclasses.dataclass
class _Run:
    """What both phases of one `train_two_phase` call share."""

    model: keras.Model  # the full model (image -> logits)
    base: keras.Model
    train_ds: tf.data.Dataset
    eval_ds: Optional[tf.data.Dataset]
    cfg: TrainerConfig
    callbacks: Sequence[keras.callbacks.Callback]
    verbose: int
    fine_tune_layer: int  # the first base layer phase 2 unfreezes
    cut: Optional[PrefixCut]  # where phase 2's cached prefix ends; None: phase 2 is end to end (or does not run)
    caches: FeatureCaches
    class_weight: Optional[Dict[int, float]]  # None: the loss is not weighted per class
    history: TrainingHistory

    @property
    def num_classes(self) -> int:
        return _num_classes(self.model)


@dataclasses.dataclass
class _Phase:
    """What differs between the phases."""

    number: int  # 1 or 2
    mode: str  # as recorded in the history: "cached_features", "cached_prefix" or "end_to_end"
    label: str  # for the progress log
    fitted: keras.Model  # the full model, or a sub-model sharing its layers (cached modes)
    train_data: Any  # a tf.data.Dataset or cached batches
    val_data: Any  # a tf.data.Dataset, cached (features, labels) or batches; None: no eval split
    learning_rate: Any  # a float or phase 2's schedule
    epochs: int
    started: float  # time.perf_counter() when the phase began (the phase's wall seconds)


def _train_phases(run: _Run) -> Optional[_Phase]:
    """Phase 1, then phase 2 where it has epochs; leaves `run.model` compiled for its final state. Returns the
    last phase that trained (None: no epochs at all)."""
    cfg = run.cfg
    last = None  # its `fitted` is `run.model` itself, or a sub-model sharing its layers
    freeze_base(run.base)
    if cfg.phase1_epochs > 0:
        last = _run_phase(run, _phase1(run))
    else:
        run.history.phase_done(1, cfg.phase1_mode, 0.0)  # the record names phase 1's mode even with no epochs
    if cfg.phase2_epochs > 0:
        last = _run_phase(run, _phase2(run))
    if last is None or last.fitted is not run.model:
        # Cached modes trained sub-models that share the model's layers; compile the model itself for the state
        # it is now in (so that evaluate works), with a fresh optimizer at the last phase's learning rate.
        rate = run.history.learning_rates["phase2" if cfg.phase2_epochs > 0 else "phase1"]
        compile_model(run.model, rate, run.num_classes, cfg.jit_compile, cfg.label_smoothing)
    return last


def _phase1(run: _Run) -> _Phase:
    """The base frozen; the head trains at the learning rate, on cached pooled features or end to end."""
    started = time.perf_counter()
    cfg = run.cfg
    if cfg.phase1_mode == "cached_features":
        fitted = head_model(run.model, run.caches.feature_shape(POOLED))
        train_data, val_data = run.caches.batches(POOLED, cfg), run.caches.eval_data(POOLED, cfg)
    else:
        fitted, train_data, val_data = run.model, run.train_ds, run.eval_ds
    return _Phase(
        number=1,
        mode=cfg.phase1_mode,
        label="phase 1 (frozen base)",
        fitted=fitted,
        train_data=train_data,
        val_data=val_data,
        learning_rate=run.history.learning_rates["phase1"],
        epochs=cfg.phase1_epochs,
        started=started,
    )


def _phase2(run: _Run) -> _Phase:
    """The top of the base unfrozen; trains at the lower learning rate, above the cached prefix or end to end."""
    started = time.perf_counter()
    cfg = run.cfg
    run.history.trainable_base_layers = unfreeze_top(run.base, run.fine_tune_layer)
    if run.cut is not None:
        mode, fitted = "cached_prefix", top_model(run.model, run.base, run.cut)
        train_data, val_data = run.caches.batches(PREFIX, cfg), run.caches.eval_data(PREFIX, cfg)
    else:
        mode, fitted, train_data, val_data = "end_to_end", run.model, run.train_ds, run.eval_ds
    return _Phase(
        number=2,
        mode=mode,
        label=f"phase 2 (fine-tuning from layer {run.fine_tune_layer})",
        fitted=fitted,
        train_data=train_data,
        val_data=val_data,
        learning_rate=_phase2_learning_rate(cfg, run.history.learning_rates["phase2"], train_data),
        epochs=cfg.phase2_epochs,
        started=started,
    )


def _run_phase(run: _Run, phase: _Phase) -> _Phase:
    """Compiles `phase.fitted` afresh, fits it for the phase's epochs and records the phase; returns the phase."""
    history = run.history
    # Compile afresh: a change of `trainable` only takes effect when the model is compiled again (the train step
    # is built for a fixed list of trainable variables), and phase 2's optimizer must start at the lower learning
    # rate instead of carrying phase-1 moment estimates and learning rate.
    compile_model(phase.fitted, phase.learning_rate, run.num_classes, run.cfg.jit_compile, run.cfg.label_smoothing)
    history.phase_lr(phase.number, optimizer_learning_rate(phase.fitted))
    first_epoch = history.epochs_run
    progress = PhaseProgress(phase.label, first_epoch, first_epoch + phase.epochs)
    history.add_epochs(phase.number, _fit(run, phase, first_epoch, [*run.callbacks, progress]))
    history.final_accuracy(phase.number, _evaluate(phase.fitted, phase.val_data, run.cfg))
    history.phase_done(phase.number, phase.mode, time.perf_counter() - phase.started)
    return phase


def _final_eval_predictions(run: _Run, last: Optional[_Phase], named_eval_ds: tf.data.Dataset) -> EvalPredictions:
    """The trained model's probabilities for every eval image: over the eval cache the last phase validated on
    (built from `named_eval_ds`, so its rows carry the file names), else the full model over `named_eval_ds`."""
    caches = run.caches
    if last is not None and last.fitted is not run.model and last.val_data is not None and caches.eval_names:
        return eval_predictions.from_cache(
            last.fitted, last.val_data, caches.eval_labels, caches.eval_names, run.num_classes, run.cfg.batch_size
        )
    return eval_predictions.from_images(run.model, named_eval_ds, run.num_classes)


def _fit(run: _Run, phase: _Phase, initial_epoch: int, callbacks: List[keras.callbacks.Callback]):
    """`fit` for the phase's epochs with early stopping on the eval loss, restoring the best epoch's weights;
    returns Keras' per-epoch metrics."""
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss" if phase.val_data is not None else "loss",
        patience=run.cfg.early_stopping_patience,
        restore_best_weights=True,
    )
    kwargs = {}
    if isinstance(phase.val_data, tuple):
        kwargs["validation_batch_size"] = run.cfg.batch_size
    result = phase.fitted.fit(
        phase.train_data,
        validation_data=phase.val_data,
        epochs=initial_epoch + phase.epochs,
        initial_epoch=initial_epoch,
        callbacks=[*callbacks, early_stopping],
        verbose=run.verbose,
        class_weight=run.class_weight,
        **kwargs,
    )
    return result.history


def _evaluate(model, val_data, cfg: TrainerConfig) -> Optional[float]:
    if val_data is None:
        return None
    if isinstance(val_data, tuple):
        results = model.evaluate(*val_data, batch_size=cfg.batch_size, verbose=0, return_dict=True)
    else:
        results = model.evaluate(val_data, verbose=0, return_dict=True)
    return float(results["accuracy"])


def _num_classes(model: keras.Model) -> int:
    units = model.get_layer(LAYER_LOGITS).units
    return 2 if units == 1 else units


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

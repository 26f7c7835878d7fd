"""The trainer core: model layout, weights resolution, freezing rules, recompilation, cached training modes.

Small inputs (32 px, MobileNetV2 with random weights) keep the freeze/recompile checks fast; one learnability
test uses the shared ImageNet MobileNetV2 weights at 96 px on generated images of two shapes.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import pretrained_weights_path

from pipeline.configs import BASE_MODEL_LAYERS, ConfigError, TrainerConfig, load_config
from trainer import eval_predictions
from trainer import weights as weights_mod
from trainer.class_weights import class_weighting
from trainer.feature_cache import CachedBatches, FeatureCaches
from trainer.fine_tune import (
    _phase2_learning_rate,
    compile_model,
    freeze_base,
    train_two_phase,
    unfreeze_top,
)
from trainer.model import BASES, build_model
from trainer.sub_models import choose_prefix_cut
from trainer.weights import WeightsUnavailableError, resolve_weights

CACHED = ("cached_features", "cached_prefix")
END_TO_END = ("end_to_end", "end_to_end")


def _config(**overrides) -> TrainerConfig:
    cfg = TrainerConfig(
        weights="none",
        image_size=32,
        batch_size=16,
        phase1_epochs=2,
        phase2_epochs=2,
        early_stopping_patience=10,
        fine_tune_at=100,
        phase2_lr_schedule="constant",  # lr2 from the first phase-2 step (the tests below check it)
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def _dataset(images, labels, batch_size=16):
    return tf.data.Dataset.from_tensor_slices((images.astype("float32"), labels.astype("int64"))).batch(batch_size)


def _random_data(n, size, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, size, size, 3)), rng.integers(0, 2, n)


def _tiny_base(size=32):
    """A small conv base (with BatchNormalization) for tests where the base's architecture does not matter."""
    images = keras.Input((size, size, 3))
    x = images
    for filters in (8, 16):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    return keras.Model(images, x)


def _snapshot(base):
    """Every base weight (trainable and not), per layer index."""
    return {i: [w.numpy().copy() for w in layer.weights] for i, layer in enumerate(base.layers) if layer.weights}


def _changed(before, after, index):
    return [not np.array_equal(a, b) for a, b in zip(before[index], after[index], strict=True)]


class _Recorder(keras.callbacks.Callback):
    """Per `fit`: the optimizer it runs with and the base weights at its start and end."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.fits = []

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        self.fits.append(
            {
                "optimizer": optimizer,
                "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
                "iterations": int(keras.ops.convert_to_numpy(optimizer.iterations)),
                "before": _snapshot(self.base),
            }
        )

    def on_train_end(self, logs=None):
        self.fits[-1]["after"] = _snapshot(self.base)


# --- weights -------------------------------------------------------------------------------------------------


def test_resolve_weights_settings(tmp_path, monkeypatch):
    weights_file = tmp_path / "w.h5"
    weights_file.write_bytes(b"x")
    monkeypatch.delenv("FTUNE_WEIGHTS", raising=False)
    assert resolve_weights("none") is None
    assert resolve_weights("imagenet") == "imagenet"
    assert resolve_weights("") == "imagenet"
    assert resolve_weights(str(weights_file)) == str(weights_file)
    monkeypatch.setenv("FTUNE_WEIGHTS", str(weights_file))
    assert resolve_weights("") == str(weights_file)
    assert resolve_weights("imagenet") == "imagenet"  # an explicit setting wins over the environment


def test_missing_weights_file_is_an_error_naming_path_and_setting(tmp_path, monkeypatch):
    missing = str(tmp_path / "nowhere.h5")
    with pytest.raises(ConfigError, match="trainer.weights") as raised:
        resolve_weights(missing)
    assert missing in str(raised.value)
    monkeypatch.setenv("FTUNE_WEIGHTS", missing)
    with pytest.raises(ConfigError, match="FTUNE_WEIGHTS") as raised:
        resolve_weights("")
    assert missing in str(raised.value)
    with pytest.raises(ConfigError, match="nowhere.h5"):
        build_model(_config(weights=missing), 2)


def test_failed_imagenet_download_is_a_clear_error_not_a_random_base(monkeypatch):
    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure on https://example.invalid/weights.h5: None -- no network")

    # keras.applications fetch their weights through this function; make it fail like an offline machine.
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", no_network)
    with pytest.raises(WeightsUnavailableError) as raised:
        build_model(_config(weights="imagenet"), 2)
    message = str(raised.value)
    assert "--weights" in message and "FTUNE_WEIGHTS" in message
    # A bad argument is reported as itself, not disguised as a download failure.
    with pytest.raises(ValueError) as raised:
        weights_mod.build_base(keras.applications.MobileNetV2, (32, 32, 1), "imagenet")
    assert not isinstance(raised.value, WeightsUnavailableError)


# --- model ----------------------------------------------------------------------------------------------------


def test_unknown_base_model_names_key_and_choices():
    with pytest.raises(ConfigError, match="trainer.base_model") as raised:
        build_model(_config(base_model="vgg16"), 2)
    for name in ("mobilenet_v2", "efficientnet_b0", "xception", "resnet50"):
        assert name in str(raised.value)


def test_transformed_images_stay_in_memory_only_for_end_to_end_phases():
    # The Trainer reads the transformed examples once to build the feature caches; a copy in memory pays only
    # when an end-to-end phase reads them every epoch (at 32k images it was 2.5 GB of the Trainer's peak).
    assert not TrainerConfig().reads_images_every_epoch()
    assert TrainerConfig(phase1_mode="end_to_end").reads_images_every_epoch()
    assert TrainerConfig(phase2_mode="end_to_end").reads_images_every_epoch()
    assert not TrainerConfig(phase2_mode="end_to_end", phase2_epochs=0).reads_images_every_epoch()


def test_model_layout_and_outputs():
    model, base = build_model(_config(), 2)
    names = [layer.name for layer in model.layers]
    assert names == ["image", "augment_flip", "augment_rotation", "preprocess", "base", "pool", "dropout", "logits"]
    assert model.get_layer("base") is base and not base.trainable
    assert model.input.dtype == "float32" and tuple(model.input.shape) == (None, 32, 32, 3)
    assert tuple(model.output.shape) == (None, 1)

    # MobileNetV2 scaling inside the model: [0, 255] -> [-1, 1].
    scaled = model.get_layer("preprocess")(np.array([[[[0.0, 127.5, 255.0]]]], dtype="float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scaled), [[[[-1.0, 0.0, 1.0]]]], atol=1e-6)

    # Augmentation is training-only: inference is deterministic.
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(model(images, training=False), model(images, training=False))
    flipped = keras.ops.convert_to_numpy(model.get_layer("augment_flip")(images, training=True))
    mirrored = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, images, strict=True)]
    assert any(mirrored) and all(m or np.array_equal(f, i) for m, f, i in zip(mirrored, flipped, images, strict=True))
    assert not np.allclose(model.get_layer("augment_rotation")(images, training=True), images)
    np.testing.assert_array_equal(model.get_layer("augment_rotation")(images, training=False), images)

    plain, _ = build_model(_config(augment=False), 5)
    assert [layer.name for layer in plain.layers][:2] == ["image", "preprocess"]
    assert tuple(plain.output.shape) == (None, 5)


def test_model_exports_with_tf_saved_model(tmp_path):
    """The exporter wraps the model in a tf.Module; the augmentation layers must not end up in that graph."""
    model, _ = build_model(_config(), 3, base_override=_tiny_base())

    class Serving(tf.Module):
        def __init__(self, keras_model):
            super().__init__()
            self.model = keras_model

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def serve(self, images):
            return {"logits": self.model(images, training=False)}

    module = Serving(model)
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.serve})
    images = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    served = tf.saved_model.load(str(tmp_path)).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["logits"].numpy(), model.predict(images, verbose=0), rtol=1e-5, atol=1e-5)


def test_logits_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model, _ = build_model(_config(augment=False), 3)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("logits").compute_dtype == "float32"
    assert model.output.dtype == "float32"


@pytest.mark.parametrize("name", sorted(BASES))
def test_each_base_builds_with_its_preprocessing(name):
    size = 75 if name == "xception" else 32  # Xception's minimum input size is 71
    model, base = build_model(_config(base_model=name, image_size=size, augment=False), 2)
    pixels = np.random.default_rng(1).uniform(0, 255, (1, 4, 4, 3)).astype("float32")
    expected = BASES[name].preprocess_input(pixels.copy())
    actual = keras.ops.convert_to_numpy(model.get_layer("preprocess")(pixels))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-4)
    assert tuple(model.output.shape) == (None, 1)


# --- freezing and compiling -----------------------------------------------------------------------------------


def test_fine_tune_at_as_index_and_fraction():
    _, base = build_model(_config(), 2)
    n = len(base.layers)
    assert n == 154  # MobileNetV2 as in the TF tutorial, where fine_tune_at=100
    assert _config(fine_tune_at=100).fine_tune_layer() == 100
    assert _config(fine_tune_at=0.5).fine_tune_layer() == 77
    assert _config(fine_tune_at=0.001).fine_tune_layer() == 1  # a fraction stays inside the base: at least layer 1

    by_index = unfreeze_top(base, 100)
    flags_by_index = [layer.trainable for layer in base.layers]
    by_fraction = unfreeze_top(base, _config(fine_tune_at=100 / n).fine_tune_layer())
    assert [layer.trainable for layer in base.layers] == flags_by_index and by_fraction == by_index

    for i, layer in enumerate(base.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        assert layer.trainable == (i >= 100 and not is_bn), (i, layer.name)
    expected = sum(
        1
        for i, layer in enumerate(base.layers)
        if i >= 100 and layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    )
    assert by_index == expected == 18

    assert freeze_base(base) == 0 and not base.trainable_weights
    for bad in (0, -1, 2.5, n, 1000):  # caught when the settings load, before any training
        with pytest.raises(ConfigError, match="trainer.fine_tune_at"):
            _config(fine_tune_at=bad).validate()


def test_accuracy_metrics_are_computed_on_logits():
    # An identity "model" whose outputs are the logits given as inputs.
    binary = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")])
    compile_model(binary, 1e-3, num_classes=2)
    logits = np.array([[-2.0], [-0.2], [0.2], [2.0]], dtype="float32")
    result = binary.evaluate(logits, np.array([0, 0, 1, 1]), verbose=0, return_dict=True)
    assert result["accuracy"] == 1.0  # a 0.5 threshold on logits would misclassify the logit 0.2

    multi = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, use_bias=False, kernel_initializer="identity")])
    compile_model(multi, 1e-3, num_classes=3)
    logits = np.array([[3.0, -1, 0], [0, 0.5, -2], [-1, -1, -0.5]], dtype="float32")
    result = multi.evaluate(logits, np.array([0, 1, 2]), verbose=0, return_dict=True)
    assert result["accuracy"] == 1.0


def test_label_smoothing_loss_matches_smoothed_targets_and_keeps_class_weights():
    # Identity "model": the inputs are the logits. With smoothing s over 3 classes the target of class 0 is
    # (1 - s + s/3, s/3, s/3); the loss is the cross-entropy against it.
    multi = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, use_bias=False, kernel_initializer="identity")])
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]], dtype="float32")
    labels = np.array([0, 2])
    smoothing = 0.1
    compile_model(multi, 1e-3, num_classes=3, label_smoothing=smoothing)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    targets = np.full((2, 3), smoothing / 3) + np.eye(3)[labels] * (1 - smoothing)
    per_example = -(targets * log_probs).sum(axis=1)
    result = multi.evaluate(logits, labels, verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(per_example.mean(), rel=1e-5)
    # Class weights are per-example weights: the loss must still be per example for them to apply.
    weighted = multi.evaluate(logits, labels, sample_weight=np.array([1.0, 3.0]), verbose=0, return_dict=True)
    assert weighted["loss"] == pytest.approx((per_example[0] + 3 * per_example[1]) / 2, rel=1e-5)
    with pytest.raises(ConfigError, match="trainer.label_smoothing"):
        _config(label_smoothing=1.0).validate()


def test_prefix_cut_is_at_a_block_boundary():
    _, base = build_model(_config(), 2)
    cut = choose_prefix_cut(base, 100)
    # Layer 100 lies inside block_11, whose residual Add consumes the block's input: the cut moves down to the
    # block boundary, where only block_10's output crosses.
    assert cut.index == 98 and cut.layer_name == "block_11_expand"
    assert tuple(cut.tensor.shape[1:]) == (2, 2, 96)
    assert choose_prefix_cut(base, 116).index == 116  # block_13 starts a block without a residual into it


# --- two-phase training ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("modes", [END_TO_END, CACHED], ids=["end_to_end", "cached"])
def test_two_phase_freezing_recompiling_and_history(modes):
    # Pretrained weights: in a random MobileNetV2 some ReLU6 layers saturate, so some unfrozen layers would get
    # no gradient at all and "only the unfrozen layers change" could not be told from "nothing trains".
    cfg = _config(
        weights=pretrained_weights_path(),
        phase1_mode=modes[0],
        phase2_mode=modes[1],
        learning_rate=1e-3,
        fine_tune_lr_factor=0.1,
        cache_variants=4,
    )
    keras.utils.set_random_seed(0)
    model, base = build_model(cfg, 2)
    images, labels = _random_data(32, 32, seed=0)
    train_ds, eval_ds = _dataset(images, labels), _dataset(images[:16], labels[:16])
    initial = _snapshot(base)
    head_initial = model.get_layer("logits").get_weights()[0].copy()
    recorder = _Recorder(base)

    history = train_two_phase(model, base, train_ds, eval_ds, cfg, callbacks=[recorder], verbose=0)

    assert len(recorder.fits) == 2
    phase1, phase2 = recorder.fits
    # Phase 1: every base weight, trainable or not, is bit-identical; the head did learn.
    for index in initial:
        assert not any(_changed(initial, phase1["after"], index)), base.layers[index].name
    assert not np.array_equal(model.get_layer("logits").get_weights()[0], head_initial)

    # Phase 2: only the unfrozen non-BatchNormalization layers changed; BN gamma/beta and moving statistics
    # never did (compared with the weights the model was built with).
    final = _snapshot(base)
    for index, layer in enumerate(base.layers):
        if not layer.weights:
            continue
        if index >= 100 and not isinstance(layer, keras.layers.BatchNormalization):
            assert all(_changed(phase2["before"], final, index)), f"{layer.name} did not train"
        else:
            assert not any(_changed(initial, final, index)), f"{layer.name} changed"

    # The phase-2 fit really ran on a freshly compiled model: a new optimizer, at the lower learning rate.
    assert phase1["learning_rate"] == pytest.approx(1e-3)
    assert phase2["learning_rate"] == pytest.approx(1e-4)
    assert phase2["optimizer"] is not phase1["optimizer"] and phase2["iterations"] == 0
    assert history["optimizer_learning_rates"] == pytest.approx({"phase1": 1e-3, "phase2": 1e-4})

    # The history: both phases' epochs, concatenated, and JSON-serialisable.
    assert history["phase"] == [1, 1, 2, 2] and history["epoch"] == [0, 1, 2, 3]
    assert history["phase2_start_epoch"] == 2
    assert len(history["loss"]) == len(history["val_accuracy"]) == 4
    assert history["modes"] == {"phase1": modes[0], "phase2": modes[1]}
    if modes == CACHED:
        # 4 cached versions per training image (image, flip, 2 random flip+rotation draws), 1 per eval image.
        sizes = history["cache"]["bytes"]
        assert sizes["train_pooled"] == 4 * 32 * 1280 * 4 and sizes["eval_pooled"] == 16 * 1280 * 4
        assert sizes["train_prefix"] == 4 * 32 * (2 * 2 * 96) * 4 and history["cache"]["cut_layer_index"] == 98
    assert set(history["final_accuracy"]) == {"phase1", "phase2"}
    assert set(history["wall_seconds"]) >= {"phase1", "phase2", "total"}
    json.loads(json.dumps(history))

    # Whatever the mode, the result is the end-to-end model (image -> logits), compiled and usable.
    assert tuple(model.input.shape) == (None, 32, 32, 3) and tuple(model.output.shape) == (None, 1)
    assert [layer.name for layer in model.layers][-4:] == ["base", "pool", "dropout", "logits"]
    # ... and it is the model that was trained: its accuracy on the eval images is the one the last phase ended
    # with (measured there on the sub-model being fitted). One of the 16 images may round differently.
    evaluated = model.evaluate(eval_ds, verbose=0, return_dict=True)["accuracy"]
    assert evaluated == pytest.approx(history["final_accuracy"]["phase2"], abs=1 / 16 + 1e-6)


def test_cosine_phase2_schedule_warms_up_to_lr2_then_decays():
    cfg = _config(phase2_epochs=5, phase2_lr_schedule="cosine")
    batches = CachedBatches([np.zeros((100, 4), "float32")], np.zeros(100, "int32"), batch_size=10, seed=0)
    schedule = _phase2_learning_rate(cfg, 1e-4, batches)  # 10 steps per epoch
    value = lambda step: float(keras.ops.convert_to_numpy(schedule(step)))  # noqa: E731
    assert value(0) == 0.0 and value(5) == pytest.approx(5e-5) and value(10) == pytest.approx(1e-4)
    assert value(30) == pytest.approx(5e-5, rel=1e-3) and value(50) == pytest.approx(0.0, abs=1e-9)
    assert _phase2_learning_rate(_config(phase2_lr_schedule="constant"), 1e-4, batches) == 1e-4
    with pytest.raises(ConfigError, match="trainer.phase2_lr_schedule must be one of constant, cosine; got 'step'"):
        load_config(overrides=["trainer.phase2_lr_schedule=step"])  # caught when the settings load


@pytest.mark.parametrize("name", sorted(BASES))
def test_settings_catalogue_matches_the_bases_the_trainer_builds(name):
    """configs.BASE_MODEL_LAYERS checks fine_tune_at before any component runs; it must match the real bases."""
    base = BASES[name].constructor(include_top=False, weights=None, input_shape=(96, 96, 3))
    assert len(base.layers) == BASE_MODEL_LAYERS[name]


# Both phases on the tiny base, cached modes, 2 versions per image (no random augmentation draws).
TINY_CACHED = dict(
    phase1_mode="cached_features", phase2_mode="cached_prefix", fine_tune_at=4, cache_variants=2, batch_size=8
)


def _tiny_run(seed=0, n=24, labels=None, work_dir=None, **overrides):
    """Both phases on the tiny base, cached modes, 2 versions per image (no random augmentation draws)."""
    cfg = _config(**{**TINY_CACHED, **overrides})
    keras.utils.set_random_seed(seed)
    model, base = build_model(cfg, 2, base_override=_tiny_base())
    images, random_labels = _random_data(n, 32, seed=1)
    labels = random_labels if labels is None else labels
    history = train_two_phase(
        model, base, _dataset(images, labels), _dataset(images, labels), cfg, verbose=0, work_dir=work_dir
    )
    return history, model


def test_over_budget_caches_spill_to_disk_and_train_the_same(tmp_path):
    in_memory, model_memory = _tiny_run()
    spilled, model_spilled = _tiny_run(cache_max_mb=0, work_dir=str(tmp_path))

    # Over the budget the cached modes stay on (no fall-back to end-to-end), reading the caches from disk ...
    assert spilled["modes"] == in_memory["modes"] == {"phase1": "cached_features", "phase2": "cached_prefix"}
    assert in_memory["cache"]["on_disk_bytes"] == 0
    assert spilled["cache"]["on_disk_bytes"] == spilled["cache"]["bytes"]["total"] > 0
    assert spilled["cache"]["bytes"] == in_memory["cache"]["bytes"]
    # ... and train to the same result: the same per-epoch losses and the same final weights.
    for key in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(spilled[key], in_memory[key], rtol=1e-4, atol=1e-5)
    for a, b in zip(model_spilled.get_weights(), model_memory.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The spill files lived in a temporary folder inside the given working directory, removed afterwards.
    assert list(tmp_path.iterdir()) == []


def test_the_caches_hand_over_the_untrained_bases_pooled_features_of_the_named_images():
    """run_fn's cold start: the caches are built from the training data in file order with file names, and the
    check of the training data gets the pooled features of the un-augmented images from them, computed by the base
    as it was before training (the pretrained one), not by a second pass."""
    from trainer.sub_models import POOLED, extractor

    cfg = _config(**TINY_CACHED)
    keras.utils.set_random_seed(0)
    model, base = build_model(cfg, 2, base_override=_tiny_base())
    images, labels = _random_data(20, 32, seed=1)
    names = [f"span-1/train/c{label}/{i:02d}.png" for i, label in enumerate(labels)]
    before = extractor(model, base, [POOLED], None)(images.astype("float32"), training=False)[POOLED].numpy()
    named = tf.data.Dataset.from_tensor_slices((images.astype("float32"), labels.astype("int64"), names)).batch(8)
    handed = []
    history = train_two_phase(
        model,
        base,
        _dataset(images, labels),
        _dataset(images, labels),
        cfg,
        verbose=0,
        cache_train_ds=named,
        on_pooled_features=lambda *plain: handed.append(plain),
    )
    ((features, got_labels, got_names),) = handed
    assert got_names == names and got_labels.tolist() == labels.tolist() and features.dtype == np.float32
    np.testing.assert_allclose(features, before, rtol=1e-5, atol=1e-5)
    after = extractor(model, base, [POOLED], None)(images.astype("float32"), training=False)[POOLED].numpy()
    assert not np.allclose(after, before)  # phase 2 changed the base: the features had to be taken before
    assert history["cache"]["bytes"]["train_pooled"] > 0

    # No pooled cache (phase 1 without epochs): nothing to hand over, the caller runs its own pass.
    handed.clear()
    no_phase1 = _config(**{**TINY_CACHED, "phase1_epochs": 0})
    model, base = build_model(no_phase1, 2, base_override=_tiny_base())
    train_two_phase(
        model, base, _dataset(images, labels), None, no_phase1, cache_train_ds=named, on_pooled_features=handed.append
    )
    assert handed == [] and not no_phase1.caches_pooled_features()


@pytest.mark.parametrize(
    "modes, budget_mb, source",
    [
        (CACHED, 2048, eval_predictions.FROM_EVAL_CACHE),
        (CACHED, 0, eval_predictions.FROM_EVAL_CACHE),  # the eval cache spilled to disk, read back in order
        (END_TO_END, 2048, eval_predictions.FROM_EVAL_IMAGES),
    ],
    ids=["cached", "cached_on_disk", "end_to_end"],
)
def test_the_eval_predictions_are_the_trained_models_own_by_file_name(tmp_path, modes, budget_mb, source):
    """What the run report shows instead of running the exported model once more: for every eval image, by file
    name and with its label, the probabilities the trained end-to-end model gives it. From the eval cache in the
    cached modes (the layers above the cut only), from the images end to end; the same numbers either way."""
    cfg = _config(**{**TINY_CACHED, "phase1_mode": modes[0], "phase2_mode": modes[1], "cache_max_mb": budget_mb})
    keras.utils.set_random_seed(0)
    model, base = build_model(cfg, 2, base_override=_tiny_base())
    images, labels = _random_data(20, 32, seed=2)
    names = [f"validation/c{label}/{i:02d}.png" for i, label in enumerate(labels)]
    named = tf.data.Dataset.from_tensor_slices((images.astype("float32"), labels.astype("int64"), names)).batch(8)
    recorded = []
    train_two_phase(
        model,
        base,
        _dataset(images, labels),
        _dataset(images, labels),
        cfg,
        work_dir=str(tmp_path),
        named_eval_ds=named,
        on_eval_predictions=recorded.append,
    )
    ((got,),) = [recorded]
    assert got.source == source and got.file_names == names and got.labels.tolist() == labels.tolist()
    score = 1 / (1 + np.exp(-model.predict(images.astype("float32"), verbose=0).reshape(-1)))
    np.testing.assert_allclose(got.probabilities, np.stack([1 - score, score], axis=1), atol=1e-5)
    record = got.as_dict(["c0", "c1"])
    assert json.loads(json.dumps(record))[eval_predictions.FILE_NAMES] == names


def test_phase1_without_epochs_goes_straight_to_fine_tuning():
    history, model = _tiny_run(phase1_epochs=0)
    assert history["phase"] == [2, 2] and history["phase2_start_epoch"] == 0
    # Phase 1 is recorded with its mode but trained nothing; phase 2 ran on the cached prefix at lr2.
    assert history["modes"] == {"phase1": "cached_features", "phase2": "cached_prefix"}
    assert history["optimizer_learning_rates"] == pytest.approx({"phase2": 1e-3 * 0.3})  # the defaults' lr2
    assert history["cache"]["bytes"].keys() == {"train_prefix", "eval_prefix", "total"}  # nothing pooled to cache
    # The full model ends compiled (at lr2) although only the sub-model above the cut was fitted.
    assert "accuracy" in model.evaluate(_dataset(*_random_data(8, 32, seed=3)), verbose=0, return_dict=True)


def test_fine_tune_layer_beyond_the_real_base_is_refused():
    # The settings check fine_tune_at against the table of bases; the tiny base here has 7 layers, not 154.
    with pytest.raises(ValueError, match="selects layer 10"):
        _tiny_run(fine_tune_at=10)


def test_feature_caches_keep_at_most_the_budget_in_memory(tmp_path):
    cfg = _config(fine_tune_at=4)
    model, base = build_model(cfg, 2, base_override=_tiny_base())
    cut = choose_prefix_cut(base, 4)
    images, labels = _random_data(24, 32, seed=2)
    train_ds, eval_ds = _dataset(images, labels, batch_size=8), _dataset(images[:8], labels[:8], batch_size=8)

    def build(max_bytes, folder):
        folder.mkdir()
        return FeatureCaches.build(
            model, base, train_ds, eval_ds, pooled=True, cut=cut, variants=2, max_bytes=max_bytes, spill_dir=str(folder)
        )

    reference = build(2**30, tmp_path / "all")
    total = reference.nbytes()["total"]
    assert reference.on_disk_bytes() == 0
    for budget in (0, total // 10, total // 2, total - 1):
        caches = build(budget, tmp_path / f"budget{budget}")
        in_memory = caches.nbytes()["total"] - caches.on_disk_bytes()
        assert in_memory <= budget and caches.on_disk_bytes() > 0
        assert sorted(p.name for p in (tmp_path / f"budget{budget}").iterdir()) == [
            "eval_pooled_0.bin",
            "eval_prefix_0.bin",
            *(f"train_{name}_{v}.bin" for name in ("pooled", "prefix") for v in (0, 1)),
        ]
        # The rows read back from disk are the ones kept in memory otherwise, by any index.
        for name in ("pooled", "prefix"):
            for version in (0, 1):
                for rows in (np.array([5, 0, 23, 5]), np.array([], dtype=np.int64)):  # no row: a batch may pick none
                    expected = reference.train[name][version][rows]
                    np.testing.assert_array_equal(caches.train[name][version][rows], expected)
            np.testing.assert_array_equal(caches.eval[name][2:7], reference.eval[name][2:7])
        np.testing.assert_array_equal(caches.train_labels, reference.train_labels)
        caches.close()


def test_class_weighting_auto_on_off():
    imbalanced = np.array([0] * 30 + [1] * 10 + [2] * 20)
    auto = class_weighting(imbalanced, 3, _config())
    assert auto["applied"] and auto["imbalance_ratio"] == 3.0 and auto["class_counts"] == [30, 10, 20]
    assert auto["weights"] == pytest.approx({0: 60 / 90, 1: 2.0, 2: 1.0})
    balanced = np.array([0, 1, 2] * 10)
    assert not class_weighting(balanced, 3, _config())["applied"]
    assert class_weighting(balanced, 3, _config(class_weighting="on"))["weights"] == pytest.approx({0: 1, 1: 1, 2: 1})
    assert not class_weighting(imbalanced, 3, _config(class_weighting="off"))["applied"]
    assert not class_weighting(imbalanced, 3, _config(imbalance_ratio=3.0))["applied"]  # "more than" the ratio
    with pytest.raises(ConfigError, match="trainer.class_weighting must be one of auto, on, off; got 'yes'"):
        load_config(overrides=["trainer.class_weighting=yes"])


@pytest.mark.parametrize("modes", [END_TO_END, CACHED], ids=["end_to_end", "cached"])
def test_imbalanced_training_data_gets_class_weights_recorded_in_the_history(modes):
    labels = np.array([0] * 18 + [1] * 6)
    one_fit = dict(phase1_mode=modes[0], phase2_mode=modes[1], phase1_epochs=1, phase2_epochs=0)
    auto, _ = _tiny_run(labels=labels, **one_fit)
    off, _ = _tiny_run(labels=labels, class_weighting="off", **one_fit)
    assert auto["class_weighting"] == {
        "setting": "auto",
        "imbalance_ratio": 3.0,
        "threshold": 1.5,
        "applied": True,
        "class_counts": [18, 6],
        "weights": {"0": pytest.approx(24 / 36), "1": pytest.approx(2.0)},
    }
    assert off["class_weighting"]["applied"] is False
    json.loads(json.dumps(auto))
    # The weights reach the training loss: same seed and data, a different first-epoch loss.
    assert auto["loss"][0] != pytest.approx(off["loss"][0], rel=1e-3)


def _shapes(n, size, seed):
    """Class 0: a filled disc, class 1: a filled square; random size, position, colours and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images, labels = [], []
    for i in range(n):
        label = i % 2
        background, colour = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        while np.abs(colour - background).sum() < 200:
            colour = rng.uniform(0, 255, 3)
        radius = rng.uniform(0.15, 0.3) * size
        cy, cx = rng.uniform(radius + 2, size - radius - 2, 2)
        if label == 0:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        else:
            mask = (np.abs(yy - cy) <= radius) & (np.abs(xx - cx) <= radius)
        image = np.where(mask[..., None], colour, background) + rng.normal(0, 10, (size, size, 3))
        images.append(np.clip(image, 0, 255))
        labels.append(label)
    return np.stack(images), np.array(labels)


@pytest.mark.slow
def test_cached_training_learns_with_pretrained_base_and_yields_the_full_model(tmp_path):
    # Adam at lr * 0.1 can knock the tiny phase-2 run off for an epoch; 0.01 keeps it stable for any seed tried.
    cfg = _config(
        weights=pretrained_weights_path(),
        image_size=96,
        phase1_mode="cached_features",
        phase2_mode="cached_prefix",
        learning_rate=3e-3,
        fine_tune_lr_factor=0.01,
        phase1_epochs=15,
        phase2_epochs=2,
        fine_tune_at=0.9,
        early_stopping_patience=15,
    )
    keras.utils.set_random_seed(0)
    model, base = build_model(cfg, 2)
    train_images, train_labels = _shapes(48, 96, seed=0)
    eval_images, eval_labels = _shapes(32, 96, seed=1)
    eval_ds = _dataset(eval_images, eval_labels)

    history = train_two_phase(model, base, _dataset(train_images, train_labels), eval_ds, cfg, verbose=0)

    assert history["final_accuracy"]["phase1"] >= 0.8, history
    assert history["final_accuracy"]["phase2"] >= 0.8, history
    # The full end-to-end model carries exactly what was trained on the cached activations: on the raw eval
    # images it reproduces the best phase-2 epoch's eval loss and the reported accuracy.
    full = model.evaluate(eval_ds, verbose=0, return_dict=True)
    phase2_val_loss = [v for v, p in zip(history["val_loss"], history["phase"], strict=True) if p == 2]
    assert full["loss"] == pytest.approx(min(phase2_val_loss), rel=1e-3, abs=1e-5)
    assert full["accuracy"] == pytest.approx(history["final_accuracy"]["phase2"])

    # ... and it saves and reloads as an ordinary Keras model (the sub-models used for training leave no trace).
    model.save(str(tmp_path / "model.keras"))
    reloaded = keras.models.load_model(str(tmp_path / "model.keras"))
    np.testing.assert_allclose(
        reloaded.predict(eval_images[:8], verbose=0), model.predict(eval_images[:8], verbose=0), rtol=1e-5, atol=1e-5
    )


def test_trainer_spills_caches_under_its_own_folders(tmp_path):
    from tfx.components.trainer.fn_args_utils import FnArgs

    from components.fine_tune_trainer import cache_spill_root

    run_dir = str(tmp_path / "model_run")
    assert cache_spill_root(FnArgs(working_dir=str(tmp_path / "work"), model_run_dir=run_dir)) == str(tmp_path / "work")
    assert cache_spill_root(FnArgs(model_run_dir=run_dir)) == run_dir and (tmp_path / "model_run").is_dir()
    assert cache_spill_root(FnArgs(model_run_dir="gs://bucket/run")) is None  # remote: the local temporary folder

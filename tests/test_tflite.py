"""TFLite for phones (push.tflite): the settings, the accuracy gate on a tiny Keras model, and the model.tflite the
shared small run (conftest.small_run, int8) pushed, checked against the served SavedModel on the eval images.
"""

import os

import numpy as np
import pytest
from conftest import eval_split_images, served_version_1

from pipeline.configs import ConfigError, load_config
from pipeline.reporting import report


def test_tflite_settings_are_checked():
    with pytest.raises(ConfigError, match="push.tflite must be one of off, float16, int8; got 'int4'"):
        load_config(None, ["push.tflite=int4"])
    with pytest.raises(ConfigError, match="eval.max_tflite_accuracy_drop must be in"):
        load_config(None, ["eval.max_tflite_accuracy_drop=2"])


@pytest.mark.parametrize("mode", ["float16", "int8"])
def test_tflite_gate_writes_the_model_only_within_the_allowed_drop(tmp_path, monkeypatch, mode):
    """The gate itself, on a tiny Keras model: accepted -> model.tflite beside saved_model.pb; a TFLite model that
    loses accuracy -> no file, and the record says why."""
    import keras
    import tensorflow as tf

    from serving import sidecars, tflite

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(3)])
    images = np.random.RandomState(0).uniform(0, 255, (24, 8, 8, 3)).astype(np.float32)
    labels = np.argmax(model.predict(images, verbose=0), axis=1)  # the Keras model is right on every image
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)

    accepted = tmp_path / "accepted"
    # int8 may flip a close call among 24 random images: room for a few.
    record = tflite.export_tflite(model, mode, 8, data, data, 0.25, str(accepted))
    assert record["accepted"] and record["saved_model_accuracy"] == 1.0 and record["eval_examples"] == 24
    assert record["accuracy_drop"] == pytest.approx(1.0 - record["tflite_accuracy"])
    assert (accepted / tflite.TFLITE_FILE).stat().st_size == record["size_bytes"]
    assert sidecars.read_tflite_record(str(accepted)) == record

    rejected = tmp_path / "rejected"
    original = tflite.tflite_logits
    monkeypatch.setattr(tflite, "tflite_logits", lambda flatbuffer, x: -original(flatbuffer, x))  # argmin: wrong
    record = tflite.export_tflite(model, mode, 8, data, data, 0.01, str(rejected))
    assert not record["accepted"] and record["accuracy_drop"] > 0.01 and record["file"] is None
    assert "more than eval.max_tflite_accuracy_drop=0.01" in record["reason"]
    assert not (rejected / tflite.TFLITE_FILE).exists() and sidecars.read_tflite_record(str(rejected)) == record


@pytest.mark.slow
def test_tflite_is_gated_on_its_accuracy_against_the_saved_model(small_run):
    import tensorflow as tf

    from serving.tflite import TFLITE_FILE, predicted_classes, tflite_logits
    from trainer.features import decode_and_resize

    config, _, data = small_run
    lite = data["tflite"]
    assert lite["accepted"] and lite["accuracy_drop"] <= 0.25 and lite["eval_examples"] > 0
    pushed = os.path.join(config.serving_model_dir, "1", TFLITE_FILE)
    assert lite["pushed_path"] == pushed and os.path.getsize(pushed) == lite["size_bytes"]
    # Recomputed here, independently: the interpreter on the eval split's images as documented (RGB, bilinear to
    # S x S, float32 in [0, 255]), and the served SavedModel on the same files.
    evals = eval_split_images(config)
    images = decode_and_resize(
        tf.constant([e[1] for e in evals]), config.trainer.image_size, config.data.max_image_pixels
    ).numpy()
    labels = np.array([e[2] for e in evals])
    with open(pushed, "rb") as f:
        lite_accuracy = float(np.mean(predicted_classes(tflite_logits(f.read(), images.astype(np.float32))) == labels))
    _, loaded = served_version_1(config)
    served = loaded.signatures["serving_default"](image_bytes=tf.constant([e[1] for e in evals]))
    saved_accuracy = float(np.mean(served["class_ids"].numpy() == labels))
    assert lite_accuracy == pytest.approx(lite["tflite_accuracy"])
    assert saved_accuracy == pytest.approx(lite["saved_model_accuracy"])
    assert saved_accuracy - lite_accuracy <= config.eval.max_tflite_accuracy_drop
    assert "tflite (int8)" in " ".join(report.summary_lines(data))

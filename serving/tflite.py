"""A TFLite copy of the trained model for phones and edge devices, gated like the SavedModel (`push.tflite`).

    export_tflite(model, mode, train_ds, eval_ds, max_drop, export_dir) -> record (dict)

Modes: "float16" (weights stored as float16, half the size, float compute) and "int8" (post-training full-integer
quantisation of weights and activations, calibrated on a representative dataset of training images; the model's
input and output stay float32). The converted model is scored with the TFLite interpreter on the eval split and
compared with the Keras model of the SavedModel on the same images; it is written as `model.tflite` into the
SavedModel folder (so the Pusher copies it beside the served version) only when its accuracy is at most
`max_drop` below. The record (size, both accuracies, the decision) goes to `assets.extra/` either way
(serving/sidecars.py: `write_tflite_record`, `read_tflite_record`).

The TFLite model's interface (unlike the SavedModel, no decoding inside):
    input   float32 [1, S, S, 3]: RGB pixels in [0, 255], the image resized to S x S (bilinear, aspect ratio not
            kept), S = trainer.image_size; the base's own preprocessing is inside the model
    output  float32 [1, C] logits (C classes; softmax gives probabilities) or, for 2 classes, [1, 1] with
            sigmoid(logit) = the probability of class 1; class names in `assets.extra/labels.txt`
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, Iterator, List

import numpy as np
import tensorflow as tf

from serving import sidecars

TFLITE_FILE = "model.tflite"
REPRESENTATIVE_IMAGES = 200
MAX_EVAL_IMAGES = 2000


def convert(model, mode: str, image_size: int, representative: List[np.ndarray]) -> bytes:
    """The Keras model as a TFLite flatbuffer with input [1, S, S, 3] float32 (see the module docstring)."""
    module = tf.Module()
    module.model = model
    module.model_variables = [getattr(v, "value", v) for v in model.variables]

    @tf.function(input_signature=[tf.TensorSpec([1, image_size, image_size, 3], tf.float32, name="image")])
    def serve(image):
        return {"logits": tf.cast(model(image, training=False), tf.float32)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":

        def samples() -> Iterator[List[np.ndarray]]:
            for image in representative:
                yield [image[None].astype(np.float32)]

        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    else:
        raise ValueError(f"unknown TFLite mode {mode!r}")
    return converter.convert()


def tflite_logits(flatbuffer: bytes, images: np.ndarray) -> np.ndarray:
    """Runs the TFLite interpreter on each image ([N, S, S, 3] float32) -> logits [N, C]."""
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    out = []
    for image in images:
        interpreter.set_tensor(input_index, image[None].astype(np.float32))
        interpreter.invoke()
        out.append(np.array(interpreter.get_tensor(output_index)[0]))
    return np.stack(out) if out else np.zeros((0, 1), np.float32)


def predicted_classes(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits)
    if logits.ndim == 1 or logits.shape[-1] == 1:  # 2 classes: one logit, class 1 when positive
        return (logits.reshape(-1) > 0).astype(np.int64)
    return np.argmax(logits, axis=-1)


def _collect(dataset: tf.data.Dataset, limit: int):
    images, labels = [], []
    count = 0
    for batch_images, batch_labels in dataset:
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy().reshape(-1))
        count += len(images[-1])
        if count >= limit:
            break
    if not images:
        return np.zeros((0, 1, 1, 3), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(images)[:limit], np.concatenate(labels)[:limit]


def export_tflite(
    model, mode: str, image_size: int, train_ds, eval_ds, max_drop: float, export_dir: str
) -> Dict[str, Any]:
    """Converts, evaluates against the Keras model on the eval images, writes `model.tflite` into export_dir when
    the accuracy drop is at most max_drop; writes and returns the record."""
    started = time.time()
    representative, _ = _collect(train_ds, REPRESENTATIVE_IMAGES)
    flatbuffer = convert(model, mode, image_size, list(representative))
    images, labels = _collect(eval_ds, MAX_EVAL_IMAGES)
    keras_pred = predicted_classes(model.predict(images, batch_size=32, verbose=0))
    lite_pred = predicted_classes(tflite_logits(flatbuffer, images))
    n = len(labels)
    saved_model_accuracy = float(np.mean(keras_pred == labels)) if n else None
    tflite_accuracy = float(np.mean(lite_pred == labels)) if n else None
    drop = None if n == 0 else saved_model_accuracy - tflite_accuracy
    accepted = drop is not None and drop <= max_drop + 1e-9
    tf.io.gfile.makedirs(export_dir)
    if accepted:
        with tf.io.gfile.GFile(os.path.join(export_dir, TFLITE_FILE), "wb") as f:
            f.write(flatbuffer)
        reason = (
            f"accuracy {tflite_accuracy:.4f} is at most {max_drop} below the SavedModel's {saved_model_accuracy:.4f}"
        )
    elif drop is None:
        reason = "no eval images to compare on"
    else:
        reason = (
            f"accuracy {tflite_accuracy:.4f} is {drop:.4f} below the SavedModel's {saved_model_accuracy:.4f}, "
            f"more than eval.max_tflite_accuracy_drop={max_drop}"
        )
    record = {
        "mode": mode,
        "file": TFLITE_FILE if accepted else None,
        "size_bytes": len(flatbuffer),
        "eval_examples": n,
        "tflite_accuracy": tflite_accuracy,
        "saved_model_accuracy": saved_model_accuracy,
        "accuracy_drop": drop,
        "max_accuracy_drop": max_drop,
        "agreement": float(np.mean(keras_pred == lite_pred)) if n else None,
        "accepted": accepted,
        "reason": reason,
        "input": f"float32 [1, {image_size}, {image_size}, 3] RGB in [0, 255], resized bilinear to "
        f"{image_size}x{image_size}",
        "seconds": round(time.time() - started, 1),
    }
    sidecars.write_tflite_record(export_dir, record)
    logging.info(
        "Trainer: TFLite %s %s: %.1f KB, accuracy %s vs SavedModel %s",
        mode,
        "accepted" if accepted else "NOT accepted",
        len(flatbuffer) / 1024,
        tflite_accuracy,
        saved_model_accuracy,
    )
    return record

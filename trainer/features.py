"""The examples' feature keys and the image codec shared by Transform, the Trainer and the exported model.

One decode/resize implementation serves training (inside Transform's `preprocessing_fn`) and serving (inside the
transform graph the exported signatures call), so there is no second copy of the preprocessing to drift. This
module sits in the model layer: it imports nothing from the TFX components above it.

Transform's output features:
  image_raw  string  the resized image as a serialized uint8 [S, S, 3] tensor (`tf.io.serialize_tensor`).
                     Why not float32: 160x160x3 floats are ~300 KB per example (and gzip-compressed by TFT), the
                     uint8 tensor is ~77 KB and decodes with a memcpy. Pixel values stay in [0, 255]; the
                     base-model-specific scaling (e.g. MobileNetV2's [-1, 1]) lives inside the Keras model, next to
                     the base it belongs to (Keras guide).
  label      int64   passed through.
  file_name  string  passed through (traceability; not a model input).
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

IMAGE_KEY = "image"
LABEL_KEY = "label"
CLASS_NAME_KEY = "class_name"
FILE_NAME_KEY = "file_name"
TRANSFORMED_IMAGE_KEY = "image_raw"
# TFT asset with entries `<label id>:<class name>`, so serving maps class ids to names without a side file.
CLASS_VOCAB_NAME = "class_names"


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """[batch] encoded images (JPEG/PNG/GIF/BMP) -> [batch, S, S, 3] uint8, RGB."""

    def one(encoded: tf.Tensor) -> tf.Tensor:
        # channels=3: grayscale is replicated, alpha dropped; 16-bit PNGs are scaled to 8 bits by TF.
        # expand_animations=False: a GIF yields its first frame as a 3-D image.
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        # Bilinear resize without keeping the aspect ratio: what the TF tutorial's image_dataset_from_directory does.
        image = tf.image.resize(image, [image_size, image_size], method="bilinear")
        return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

    return tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8))


def serialize_images(images: tf.Tensor) -> tf.Tensor:
    """[batch, S, S, 3] uint8 -> [batch] string (one serialized tensor each)."""
    return tf.map_fn(tf.io.serialize_tensor, images, fn_output_signature=tf.TensorSpec([], tf.string))


def parse_images(serialized: tf.Tensor, image_size: int) -> tf.Tensor:
    """Inverse of serialize_images, to float32 in [0, 255]: [batch] string -> [batch, S, S, 3]."""

    def one(blob: tf.Tensor) -> tf.Tensor:
        image = tf.io.parse_tensor(blob, out_type=tf.uint8)
        image.set_shape([image_size, image_size, 3])
        return image

    images = tf.map_fn(one, serialized, fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8))
    return tf.cast(images, tf.float32)


def read_class_names(tf_transform_output: tft.TFTransformOutput) -> list:
    """Class names ordered by label id, from the transform graph's `class_names` asset."""
    path = tf_transform_output.vocabulary_file_by_name(CLASS_VOCAB_NAME)
    by_id = {}
    with tf.io.gfile.GFile(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                label, _, name = line.partition(":")
                by_id[int(label)] = name
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError(f"label vocabulary {path} is not a contiguous 0..N-1 range: {sorted(by_id)}")
    return [by_id[i] for i in range(len(by_id))]

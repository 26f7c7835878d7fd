"""Transform module file: decode + resize, the same graph in training and inside the serving signature.

`preprocessing_fn` runs in TFT (Beam) to materialise the training data, and TFT saves it as the transform graph
that the exported model calls on raw request bytes. The codec itself lives in trainer/features.py; this file is
only the TFX module file that wires it into Transform. It also records the label vocabulary as a TFT asset
(`class_names`): entries `<label id>:<class name>`, so serving maps class ids to names without any side file.
"""

from typing import Any, Dict

import tensorflow as tf
import tensorflow_transform as tft

from trainer.features import (
    CLASS_NAME_KEY,
    CLASS_VOCAB_NAME,
    FILE_NAME_KEY,
    IMAGE_KEY,
    LABEL_KEY,
    TRANSFORMED_IMAGE_KEY,
    decode_and_resize,
    serialize_images,
)

# The pipeline always passes it (custom_config={"image_size": config.trainer.image_size}); no default here.
IMAGE_SIZE_KEY = "image_size"
# data.max_image_pixels: the same header limit as ingestion, inside the graph TF Serving runs.
MAX_IMAGE_PIXELS_KEY = "max_image_pixels"


def _flatten(tensor: tf.Tensor) -> tf.Tensor:
    # SchemaGen(infer_feature_shape=True) gives scalar features shape [1]: [batch, 1] -> [batch].
    return tf.reshape(tensor, [-1])


def preprocessing_fn(inputs: Dict[str, tf.Tensor], custom_config: Dict[str, Any]) -> Dict[str, tf.Tensor]:
    image_size = int(custom_config[IMAGE_SIZE_KEY])
    images = decode_and_resize(_flatten(inputs[IMAGE_KEY]), image_size, int(custom_config[MAX_IMAGE_PIXELS_KEY]))
    outputs = {TRANSFORMED_IMAGE_KEY: serialize_images(images)}
    if FILE_NAME_KEY in inputs:
        # Carried along (unused by the model) so an example stays traceable to its file, e.g. in skew checks.
        outputs[FILE_NAME_KEY] = _flatten(inputs[FILE_NAME_KEY])
    if LABEL_KEY in inputs:
        label = _flatten(inputs[LABEL_KEY])
        outputs[LABEL_KEY] = label
        # The vocabulary is the analyzer's side product (an asset of the transform graph); sorting by id is done
        # by whoever reads it (trainer). Every class has >= 1 training example, which ExampleGen guarantees.
        tagged = tf.strings.join([tf.strings.as_string(label), _flatten(inputs[CLASS_NAME_KEY])], separator=":")
        tft.vocabulary(tagged, vocab_filename=CLASS_VOCAB_NAME)
    return outputs

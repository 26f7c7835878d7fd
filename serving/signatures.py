"""Names of the exported model's interface: signatures, their input and outputs, extra files.

Kept free of TensorFlow imports so that the CLI, the report and clients (predict, the TF Serving REST client)
can name them without loading TF.
"""

SERVING_SIGNATURE = "serving_default"
TF_EXAMPLE_SIGNATURE = "serving_tf_example"
IMAGE_BYTES_INPUT = "image_bytes"
TF_EXAMPLES_INPUT = "examples"

OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_CLASS_IDS = "class_ids"
OUTPUT_CLASS_NAMES = "class_names"
# Two-class models only: the probability of class 1.
OUTPUT_SCORE = "score"

# Files TF Serving ignores for inference but serves with the version: `<version>/assets.extra/...`.
ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"

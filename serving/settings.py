"""The Pusher's typed settings (`push:`): where blessed models go, in TF Serving's layout. No TensorFlow here."""

from __future__ import annotations

import dataclasses
import re

from trainer.settings import check, one_of

TFLITE_MODES = ("off", "float16", "int8")
# A model name becomes a folder under the serving directory and a TF Serving model name.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass
class PushConfig:
    """Where blessed models go, in TF Serving's `<base>/<model>/<version>/` layout."""

    # Empty: `<pipeline_root>/serving`.
    serving_dir: str = ""
    # TF Serving's model name and the folder under serving_dir that holds the numbered versions.
    model_name: str = "image_classifier"
    # Number of versions kept after a push (older ones are deleted); 0 keeps all.
    keep_versions: int = 5
    # A TFLite copy written beside the pushed SavedModel (`<version>/model.tflite`), gated on
    # eval.max_tflite_accuracy_drop: "off", "float16" (float16 weights) or "int8" (post-training quantisation
    # calibrated on training images; float32 input and output).
    tflite: str = "off"

    def validate(self) -> PushConfig:
        p = self
        check(
            p.model_name,
            bool(MODEL_NAME.match(p.model_name)),
            "push.model_name",
            "a folder name: letters, digits, '_', '.' or '-' (no '/' and not starting with '.')",
        )
        check(p.keep_versions, p.keep_versions >= 0, "push.keep_versions", "non-negative")
        check(p.tflite, p.tflite in TFLITE_MODES, "push.tflite", one_of(TFLITE_MODES))
        return self

"""The trained model's class probabilities for every eval image, each named by its file.

The Trainer records them once training ends (components/fine_tune_trainer.py writes them, as
`eval_predictions.json` beside the training history: serving/sidecars.py), and the run report builds its confusion
matrix, precision/F1 and its grids of mistakes from them (pipeline/reporting/). Before, the report loaded the
exported SavedModel and ran it over the eval split once more after the Evaluator had: ~20 s of a 2-core machine for
1000 images at 160 px, paid by every `ftune run`.

Where they come from, the cheapest pass that computes them exactly:
- the eval cache of the last cached phase (the layers above the cut, or the head alone, run over the cached
  activations): the same layer objects and weights as the full model, and the cached part is frozen, so these are
  the full model's outputs;
- otherwise (end-to-end modes) the full model over the eval images.
The Evaluator runs the exported SavedModel over the same images; a test checks that its accuracy and each class's
recall agree with these (tests/test_report.py).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Dict, List, Sequence

import numpy as np

if TYPE_CHECKING:  # the report reads the keys below without loading TensorFlow
    import keras
    import tensorflow as tf

# Keys of eval_predictions.json (written by the Trainer, read by the report).
CLASS_NAMES = "class_names"
FILE_NAMES = "file_names"
LABELS = "labels"
PROBABILITIES = "probabilities"
SOURCE = "source"
# Values of SOURCE.
FROM_EVAL_CACHE = "the Trainer's final model over its cached eval activations"
FROM_EVAL_IMAGES = "the Trainer's final model over the eval images"


@dataclasses.dataclass
class EvalPredictions:
    file_names: List[str]
    labels: np.ndarray  # int64 [n]
    probabilities: np.ndarray  # float32 [n, classes]
    source: str  # FROM_EVAL_CACHE or FROM_EVAL_IMAGES

    def as_dict(self, class_names: Sequence[str]) -> Dict[str, Any]:
        """JSON-serialisable; probabilities rounded to 6 decimals (the file stays ~100 KB per 1000 images)."""
        return {
            SOURCE: self.source,
            CLASS_NAMES: list(class_names),
            FILE_NAMES: list(self.file_names),
            LABELS: [int(label) for label in self.labels],
            PROBABILITIES: np.round(self.probabilities.astype(np.float64), 6).tolist(),
        }


def probabilities(logits: np.ndarray, num_classes: int) -> np.ndarray:
    """[n, classes] from the model's logits: one sigmoid logit for two classes (as serving/export.py turns it into
    [1 - p, p]), a softmax otherwise."""
    logits = np.asarray(logits, dtype=np.float64)
    if num_classes == 2:
        score = 1.0 / (1.0 + np.exp(-logits.reshape(-1)))
        return np.stack([1.0 - score, score], axis=1).astype(np.float32)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


def from_cache(
    fitted: keras.Model, eval_data: Any, labels: np.ndarray, file_names: List[str], num_classes: int, batch_size: int
) -> EvalPredictions:
    """`fitted` (a sub-model sharing the full model's layers above the cache) over its eval data: (activations,
    labels) in memory or ordered batches read from disk, in the order of `file_names`."""
    inputs = eval_data[0] if isinstance(eval_data, tuple) else eval_data
    logits = fitted.predict(inputs, batch_size=batch_size if isinstance(eval_data, tuple) else None, verbose=0)
    return EvalPredictions(
        list(file_names), np.asarray(labels, np.int64), probabilities(logits, num_classes), FROM_EVAL_CACHE
    )


def from_images(model: keras.Model, named_batches: tf.data.Dataset, num_classes: int) -> EvalPredictions:
    """The full model over batches of (images, labels, file names)."""
    logits, labels, names = [], [], []
    for images, batch_labels, batch_names in named_batches:
        logits.append(np.asarray(model(images, training=False)))
        labels.append(np.asarray(batch_labels).reshape(-1))
        names.extend(n.decode("utf-8", "replace") for n in np.asarray(batch_names).reshape(-1))
    return EvalPredictions(
        names,
        np.concatenate(labels).astype(np.int64),
        probabilities(np.concatenate(logits), num_classes),
        FROM_EVAL_IMAGES,
    )

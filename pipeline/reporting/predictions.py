"""The report's own pass of the exported model over the eval split: what TFMA (the Evaluator) does not give.

The Evaluator's TFMA run gives the gated numbers (overall accuracy, each class's recall, example counts: gate.json);
the report takes those from there. It runs the model itself only for what TFMA cannot hand over: the confusion
matrix, the images for the grid figure, the most confident mistakes and least confident correct predictions, and
the precision and F1 computed from the same predictions (TFMA is not configured to compute them; see collect.py).

    predict_eval_split(signature, files, class_names, keep_images, split_size) -> (numbers, grid, (mistakes, unsure))
    per_class_metrics(matrix, class_names) -> {"per_class": ..., "macro": ...}   (also used by benchmarks/common.py)
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pipeline.reporting.figures import GRID_COLUMNS, GRID_ROWS

PREDICT_BATCH = 64
# The report's pass is capped for speed on big eval splits; the gated numbers come from TFMA over all of them.
MAX_PREDICT_EXAMPLES = 2000
# Most confident mistakes / least confident correct predictions shown (fastai's "top losses" view).
RANKED_IMAGES = 10


def predict_eval_split(
    signature: Callable[..., Dict[str, Any]],
    files: List[str],
    class_names: List[str],
    keep_images: bool,
    split_size: Optional[int],
):
    """(numbers, grid entries, (most confident mistakes, least confident correct)): `signature` (the exported
    model's serving_tf_example) over the first MAX_PREDICT_EXAMPLES records of the eval split's TFRecord files."""
    import tensorflow as tf

    tally = Tally(len(class_names), keep_images)
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(MAX_PREDICT_EXAMPLES)
    for batch in records.batch(PREDICT_BATCH).as_numpy_iterator():
        outputs = signature(examples=tf.constant(batch))
        tally.add(batch, outputs["class_ids"].numpy(), outputs["probabilities"].numpy())
    return tally.numbers(class_names, split_size), tally.grid(class_names), tally.ranked(class_names)


class Tally:
    """Confusion counts, plus the images for the grid: wrong predictions first, then right ones."""

    def __init__(self, num_classes: int, keep_images: bool):
        self.matrix = [[0] * num_classes for _ in range(num_classes)]
        self.keep_images = keep_images
        self.wrong: List[Dict[str, Any]] = []
        self.right: List[Dict[str, Any]] = []
        self.cells = GRID_COLUMNS * GRID_ROWS
        # (confidence, order, entry): the most confident wrong and the least confident right predictions.
        self.confident_wrong: List[Tuple[float, int, Dict[str, Any]]] = []
        self.unsure_right: List[Tuple[float, int, Dict[str, Any]]] = []
        self._seen = 0

    def add(self, serialized: Sequence[bytes], predicted: Sequence[int], probabilities=None) -> None:
        import tensorflow as tf

        for index, (record, pred) in enumerate(zip(serialized, predicted, strict=True)):
            feature = tf.train.Example.FromString(record).features.feature
            true, pred = int(feature["label"].int64_list.value[0]), int(pred)
            self.matrix[true][pred] += 1
            if probabilities is not None:
                self._rank(feature, true, pred, float(probabilities[index][pred]))
            bucket = self.wrong if true != pred else self.right
            if len(bucket) < self.cells:
                bucket.append(self._entry(feature, true, pred))

    def _entry(self, feature, true: int, pred: int) -> Dict[str, Any]:
        entry = {
            "file_name": feature["file_name"].bytes_list.value[0].decode("utf-8", "replace"),
            "true": true,
            "predicted": pred,
        }
        if self.keep_images:
            entry["image"] = feature["image"].bytes_list.value[0]
        return entry

    def _rank(self, feature, true: int, pred: int, confidence: float) -> None:
        self._seen += 1
        entry = {**self._entry(feature, true, pred), "probability": confidence}
        # heapq keeps the smallest first: most confident wrong -> key confidence; least confident right -> -conf.
        heap, key = (self.confident_wrong, confidence) if true != pred else (self.unsure_right, -confidence)
        item = (key, self._seen, entry)
        if len(heap) < RANKED_IMAGES:
            heapq.heappush(heap, item)
        elif item[:2] > heap[0][:2]:
            heapq.heapreplace(heap, item)

    def ranked(self, class_names: List[str]) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
        """(most confident mistakes, most confident first; least confident correct ones, least first)."""

        def named(items):
            ordered = [e for _, _, e in sorted(items, key=lambda t: t[:2], reverse=True)]
            return [_named(e, class_names) for e in ordered]

        return named(self.confident_wrong), named(self.unsure_right)

    def numbers(self, class_names: List[str], split_size: Optional[int]) -> Dict[str, Any]:
        total = sum(map(sum, self.matrix))
        correct = sum(self.matrix[i][i] for i in range(len(self.matrix)))
        wrong = [
            {"file_name": e["file_name"], "true": class_names[e["true"]], "predicted": class_names[e["predicted"]]}
            for e in self.wrong
        ]
        mistakes, unsure = self.ranked(class_names)
        return {
            "class_names": class_names,
            "confusion_matrix": self.matrix,  # rows: true class, columns: predicted class
            "total": total,
            "correct": correct,
            "accuracy": correct / total if total else None,
            "eval_split_size": split_size,
            "truncated": total >= MAX_PREDICT_EXAMPLES and (split_size is None or split_size > total),
            "max_examples": MAX_PREDICT_EXAMPLES,
            "wrong_examples": wrong,
            **per_class_metrics(self.matrix, class_names),
            "confident_mistakes": [_no_image(e) for e in mistakes],
            "unsure_correct": [_no_image(e) for e in unsure],
        }

    def grid(self, class_names: List[str]) -> List[Dict[str, Any]]:
        chosen = (self.wrong + self.right)[: self.cells]
        return [_named(e, class_names) for e in chosen]


def _named(entry: Dict[str, Any], class_names: List[str]) -> Dict[str, Any]:
    """The entry with class names in place of label ids."""
    return {**entry, "true": class_names[entry["true"]], "predicted": class_names[entry["predicted"]]}


def _no_image(entry: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "image"}


def per_class_metrics(matrix: List[List[int]], class_names: List[str]) -> Dict[str, Any]:
    """{"per_class": {class: {precision, recall, f1, support}}, "macro": {precision, recall, f1}} from a
    confusion matrix (rows true, columns predicted). A class never predicted has precision None (no
    prediction to be right about) and counts as 0 in the macro average, as scikit-learn's default does."""
    n = len(matrix)
    per_class: Dict[str, Dict[str, Any]] = {}
    for i in range(n):
        tp = matrix[i][i]
        predicted = sum(matrix[r][i] for r in range(n))
        actual = sum(matrix[i])
        precision = tp / predicted if predicted else None
        recall = tp / actual if actual else None
        p, r = precision or 0.0, recall or 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per_class[class_names[i]] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    present = [m for m in per_class.values() if m["support"]]

    def mean(key):
        return sum((m[key] or 0.0) for m in present) / len(present) if present else None

    return {"per_class": per_class, "macro": {key: mean(key) for key in ("precision", "recall", "f1")}}

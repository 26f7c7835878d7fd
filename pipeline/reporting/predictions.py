"""The eval split's predictions as the report shows them: what TFMA (the Evaluator) does not give.

The Evaluator's TFMA run gives the gated numbers (overall accuracy, each class's recall, example counts: gate.json);
the report takes those from there. For what TFMA cannot hand over -- the confusion matrix, the images for the grid
figure, the most confident mistakes and least confident correct predictions, and the precision and F1 computed from
the same predictions (TFMA is not configured to compute them; see collect.py) -- it reads the Trainer's record of
the trained model's probabilities for every eval image (eval_predictions.json, trainer/eval_predictions.py) rather
than loading the exported model and running it over the eval split a second time (~20 s of a 2-core machine per
1000 images at 160 px, in every `ftune run`). The images shown are read from ImageExampleGen's eval split.

    tally_eval_predictions(recorded, keep_images, images_of) -> (numbers, grid, (mistakes, unsure))
    per_class_metrics(matrix, class_names) -> {"per_class": ..., "macro": ...}   (also used by benchmarks/common.py)
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from pipeline.reporting.figures import GRID_COLUMNS, GRID_ROWS
from trainer import eval_predictions as recorded_keys

# Most confident mistakes / least confident correct predictions shown (fastai's "top losses" view).
RANKED_IMAGES = 10


def tally_eval_predictions(
    recorded: Dict[str, Any],
    keep_images: bool,
    images_of: Callable[[Iterable[str]], Dict[str, bytes]],
    split_size: Optional[int] = None,
):
    """(numbers, grid entries, (most confident mistakes, least confident correct)) from the Trainer's
    eval_predictions.json; with `keep_images`, the entries shown carry their encoded image (`images_of(file
    names)` reads them; an image it cannot find is left out of the figures)."""
    class_names = list(recorded[recorded_keys.CLASS_NAMES])
    tally = Tally(len(class_names))
    for name, true, probabilities in zip(
        recorded[recorded_keys.FILE_NAMES],
        recorded[recorded_keys.LABELS],
        recorded[recorded_keys.PROBABILITIES],
        strict=True,
    ):
        predicted = max(range(len(probabilities)), key=probabilities.__getitem__)
        tally.add(name, int(true), predicted, float(probabilities[predicted]))
    numbers = tally.numbers(class_names, split_size)
    numbers["source"] = recorded.get(recorded_keys.SOURCE)
    grid, ranked = tally.grid(class_names), tally.ranked(class_names)
    if keep_images:
        shown = [*grid, *ranked[0], *ranked[1]]
        images = images_of({entry["file_name"] for entry in shown})
        grid, ranked = _with_images(grid, images), (_with_images(ranked[0], images), _with_images(ranked[1], images))
    return numbers, grid, ranked


def _with_images(entries: List[Dict[str, Any]], images: Dict[str, bytes]) -> List[Dict[str, Any]]:
    return [{**entry, "image": images[entry["file_name"]]} for entry in entries if entry["file_name"] in images]


class Tally:
    """Confusion counts, plus the entries for the grid: wrong predictions first, then right ones."""

    def __init__(self, num_classes: int):
        self.matrix = [[0] * num_classes for _ in range(num_classes)]
        self.wrong: List[Dict[str, Any]] = []
        self.right: List[Dict[str, Any]] = []
        self.cells = GRID_COLUMNS * GRID_ROWS
        # (confidence, order, entry): the most confident wrong and the least confident right predictions.
        self.confident_wrong: List[Tuple[float, int, Dict[str, Any]]] = []
        self.unsure_right: List[Tuple[float, int, Dict[str, Any]]] = []
        self._seen = 0

    def add(self, file_name: str, true: int, pred: int, confidence: float) -> None:
        """One eval example: its true and predicted class ids and the probability of the predicted class."""
        self.matrix[true][pred] += 1
        entry = {"file_name": file_name, "true": true, "predicted": pred}
        self._rank(entry, true, pred, confidence)
        bucket = self.wrong if true != pred else self.right
        if len(bucket) < self.cells:
            bucket.append(entry)

    def _rank(self, entry: Dict[str, Any], true: int, pred: int, confidence: float) -> None:
        self._seen += 1
        entry = {**entry, "probability": confidence}
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
            "wrong_examples": wrong,
            **per_class_metrics(self.matrix, class_names),
            "confident_mistakes": mistakes,
            "unsure_correct": unsure,
        }

    def grid(self, class_names: List[str]) -> List[Dict[str, Any]]:
        chosen = (self.wrong + self.right)[: self.cells]
        return [_named(e, class_names) for e in chosen]


def _named(entry: Dict[str, Any], class_names: List[str]) -> Dict[str, Any]:
    """The entry with class names in place of label ids."""
    return {**entry, "true": class_names[entry["true"]], "predicted": class_names[entry["predicted"]]}


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

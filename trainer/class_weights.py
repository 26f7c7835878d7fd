"""Class imbalance: whether both training phases weight the loss per class (`trainer.class_weighting`), and with what.

"auto" turns the weights on above `trainer.imbalance_ratio` (largest class / smallest class in the training data).
The decision and the counts behind it are recorded in the training history.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from trainer.settings import TrainerConfig


def class_weighting(labels: np.ndarray, num_classes: int, cfg: TrainerConfig) -> Dict[str, Any]:
    """Whether both phases weight the loss per class, and with what (recorded in the training history).

    Weights are n / (classes * count): a class with half the average count weighs 2. `auto` turns them on when
    the largest class has more than `cfg.imbalance_ratio` times the training examples of the smallest one.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64).reshape(-1), minlength=num_classes)[:num_classes]
    present = counts[counts > 0]
    ratio = float(present.max() / present.min()) if len(present) else 1.0
    applied = {"on": True, "off": False}.get(cfg.class_weighting, ratio > float(cfg.imbalance_ratio))
    total = float(counts.sum())
    weights = {i: (total / (num_classes * float(c)) if c else 1.0) for i, c in enumerate(counts)}
    return {
        "setting": cfg.class_weighting,
        "imbalance_ratio": round(ratio, 4),
        "threshold": float(cfg.imbalance_ratio),
        "applied": bool(applied),
        "class_counts": [int(c) for c in counts],
        "weights": {int(i): float(w) for i, w in weights.items()},
    }


def training_class_weights(
    cached_labels: Optional[np.ndarray], train_ds: tf.data.Dataset, num_classes: int, cfg: TrainerConfig
) -> Tuple[Dict[str, Any], Optional[Dict[int, float]]]:
    """The class-weighting record for the history, and the `class_weight` for `fit` (None: no weighting).

    `cached_labels`: the training labels when the feature caches hold them; otherwise (end-to-end modes) they are
    counted in one pass over `train_ds`, unless weighting is off.
    """
    labels = cached_labels
    if labels is None and cfg.class_weighting != "off":
        labels = _dataset_labels(train_ds)
    if labels is None:
        return {"setting": cfg.class_weighting, "applied": False}, None
    record = class_weighting(labels, num_classes, cfg)
    return record, (record["weights"] if record["applied"] else None)


def _dataset_labels(dataset: tf.data.Dataset) -> np.ndarray:
    """The labels of a batched (image, label) dataset: one pass over it (end-to-end modes only)."""
    labels = [np.asarray(y).reshape(-1) for y in dataset.map(lambda x, y: y)]
    return np.concatenate(labels) if labels else np.zeros(0, np.int64)

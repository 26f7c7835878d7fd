"""The settings the custom TFX components read: ingestion (`data:`) and the Evaluator's gate (`eval:`).

`pipeline/configs.py` composes these sections with the trainer's and the pusher's. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from trainer.settings import check, one_of

SPLIT_MODES = ("auto", "hash", "presplit")
# data.spans: every span folder, the newest one, or a rolling window of the newest N (written as the number N).
SPAN_SELECTIONS = ("all", "latest")


@dataclasses.dataclass
class DataConfig:
    """Image-folder ingestion (ExampleGen)."""

    # Root folder: either `<root>/<class>/**/<image>` (split by hash) or `<root>/<train_dir>/<class>/...`
    # plus `<root>/<eval_dir>/<class>/...` (pre-split). Empty: generate sample data under the pipeline root.
    data_root: str = ""
    # "auto" picks "presplit" when both split folders exist under data_root, else "hash".
    split_mode: str = "auto"
    # Pre-split mode: the folder under data_root (or under each span) holding the training images' class folders.
    train_dir: str = "train"
    # Pre-split mode: the folder holding the eval images' class folders.
    eval_dir: str = "validation"
    # Hash mode: share of images assigned to the eval split, decided by a hash of the relative path.
    eval_fraction: float = 0.2
    # The run fails (after writing the quarantine report) when more than this share of files is quarantined.
    max_quarantine_fraction: float = 0.1
    # Files whose header claims more pixels than this are quarantined before decoding (decompression bombs).
    max_image_pixels: int = 50_000_000
    # Which spans to read when data_root holds span folders (`span-1/`, `span-2/`, ...; each laid out like a plain
    # data_root): "all", "latest", or a rolling window of the newest N spans written as N (e.g. "3"). Without
    # span folders this setting has no effect.
    spans: str = "all"
    # Files larger than this many bytes are quarantined from their size, without being read into memory.
    max_file_bytes: int = 100_000_000
    # A person's label fixes (CSV `file,action,class`; actions relabel, drop, keep: docs/operating.md), applied by
    # ingestion. Empty: `<data_root>/label_fixes.csv` when that file exists (on Kubeflow: in the data_root run
    # parameter's folder). A path or URI names another file, which must exist.
    label_fixes: str = ""
    # Sample data generated when data_root is empty: written pre-split into train_dir/ and eval_dir/, eval_fraction of
    # each class held out, so every class has eval images for the per-class gate (class folders at the top, split by
    # hash, when split_mode is "hash"). 60 per class: 12 eval images per class, eval.min_class_examples is 10.
    sample_classes: int = 3
    # Sample data: images per class (at least 2, so that both splits hold every class).
    sample_per_class: int = 60
    # Sample data: random seed; the same seed gives byte-identical files.
    sample_seed: int = 0

    def validate(self) -> DataConfig:
        d = self
        check(d.split_mode, d.split_mode in SPLIT_MODES, "data.split_mode", one_of(SPLIT_MODES))
        check(d.eval_fraction, 0.0 < d.eval_fraction < 1.0, "data.eval_fraction", "between 0 and 1 (exclusive)")
        check(
            d.max_quarantine_fraction,
            0.0 <= d.max_quarantine_fraction <= 1.0,
            "data.max_quarantine_fraction",
            "between 0 and 1",
        )
        check(d.max_image_pixels, d.max_image_pixels > 0, "data.max_image_pixels", "positive")
        check(
            d.spans,
            span_window(d.spans) != 0,
            "data.spans",
            "all, latest, or a whole number N >= 1 (the newest N spans)",
        )
        check(d.max_file_bytes, d.max_file_bytes > 0, "data.max_file_bytes", "positive")
        check(d.sample_classes, d.sample_classes >= 2, "data.sample_classes", "at least 2")
        # Both splits need an image of every class.
        check(d.sample_per_class, d.sample_per_class >= 2, "data.sample_per_class", "at least 2")
        return self


def span_window(spans: str) -> Optional[int]:
    """data.spans as a number of newest spans to read: None for "all", 1 for "latest", N for "N", and 0 when the
    value is none of these (validate() rejects it)."""
    text = str(spans).strip().lower()
    if text == "all":
        return None
    if text == "latest":
        return 1
    if text.isdigit() and int(text) >= 1:
        return int(text)
    return 0


@dataclasses.dataclass
class EvalConfig:
    """The Evaluator's blessing gate."""

    # Absolute floor on eval accuracy.
    accuracy_floor: float = 0.6
    # A candidate may be at most this much less accurate than the served model (0 = must not regress at all).
    max_accuracy_drop: float = 0.0
    # Per class (the eval images whose true class is c): recall must be at least this floor ...
    class_recall_floor: float = 0.5
    # ... and at most this much below the served model's recall on the same class (same label vocabulary only).
    max_class_recall_drop: float = 0.1
    # Classes with fewer eval images than this are reported, not gated (a handful of images is noise).
    min_class_examples: int = 10
    # The TFLite copy (push.tflite) is pushed only if its eval accuracy is at most this much below the SavedModel's.
    max_tflite_accuracy_drop: float = 0.01

    def validate(self) -> EvalConfig:
        e = self
        check(e.accuracy_floor, 0 <= e.accuracy_floor <= 1, "eval.accuracy_floor", "in [0, 1]")
        check(e.max_accuracy_drop, 0 <= e.max_accuracy_drop <= 1, "eval.max_accuracy_drop", "in [0, 1]")
        check(e.class_recall_floor, 0 <= e.class_recall_floor <= 1, "eval.class_recall_floor", "in [0, 1]")
        check(e.max_class_recall_drop, 0 <= e.max_class_recall_drop <= 1, "eval.max_class_recall_drop", "in [0, 1]")
        check(e.min_class_examples, e.min_class_examples >= 1, "eval.min_class_examples", "at least 1")
        check(
            e.max_tflite_accuracy_drop,
            0 <= e.max_tflite_accuracy_drop <= 1,
            "eval.max_tflite_accuracy_drop",
            "in [0, 1]",
        )
        return self

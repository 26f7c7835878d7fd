"""The report's figures: PNG files drawn with matplotlib (Agg canvas, no pyplot), from the collected numbers.

  write_figures(collected, out_dir) -> {figure file: "" if drawn, "none" if nothing to show, else why not}

* learning_curves.png: train/val accuracy and loss over both phases, with a "start fine-tuning" marker at the
  phase boundary (as in the TF transfer-learning tutorial);
* confusion_matrix.png: counts, true class on the rows, predicted class on the columns;
* eval_grid.png: eval images titled predicted vs. true, wrong ones first and in red;
* confident_mistakes.png / unsure_correct.png: the most confident mistakes and least confident correct ones;
* label_issues.png: training images that look mislabelled (components/data_findings.py), most contradicted first.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, List, Optional, Tuple

log = logging.getLogger("ftune")

LEARNING_CURVES_PNG = "learning_curves.png"
CONFUSION_MATRIX_PNG = "confusion_matrix.png"
EVAL_GRID_PNG = "eval_grid.png"
MISTAKES_PNG = "confident_mistakes.png"
UNSURE_PNG = "unsure_correct.png"
FIGURES = (LEARNING_CURVES_PNG, CONFUSION_MATRIX_PNG, EVAL_GRID_PNG)
# Drawn only when there is something to show (no mistakes: no mistakes figure).
RANKED_FIGURES = (MISTAKES_PNG, UNSURE_PNG)
LABEL_ISSUES_PNG = "label_issues.png"
# Drawn only when the Trainer flagged training images.
FINDINGS_FIGURES = (LABEL_ISSUES_PNG,)

GRID_COLUMNS = 5
GRID_ROWS = 5
DPI = 100
# Figure sizes in inches (pixels = inches * DPI; figures are saved without bbox cropping, so this is exact).
LEARNING_CURVES_SIZE = (8.0, 7.5)
GRID_CELL_SIZE = (2.4, 2.7)
GRID_IMAGE_MAX_SIDE = 256


def write_figures(collected, out_dir: str) -> Dict[str, str]:
    """Draws every figure there is data for into out_dir (collected: collect.Collected); returns {figure file:
    "" if written, "none" when there is nothing to rank (not a missing part), else why not}."""
    data = collected.data
    plots = {
        LEARNING_CURVES_PNG: (data.get("training"), "training", lambda p: plot_learning_curves(data["training"], p)),
        CONFUSION_MATRIX_PNG: (
            data.get("predictions"),
            "predictions",
            lambda p: plot_confusion_matrix(data["predictions"], p),
        ),
        EVAL_GRID_PNG: (
            collected.grid,
            "predictions",
            lambda p: plot_eval_grid(collected.grid, p, data["predictions"]),
        ),
        MISTAKES_PNG: (
            collected.mistakes,
            "predictions",
            lambda p: plot_ranked_images(
                collected.mistakes, p, "Most confident mistakes (probability of the wrong class)"
            ),
        ),
        UNSURE_PNG: (
            collected.unsure,
            "predictions",
            lambda p: plot_ranked_images(collected.unsure, p, "Least confident correct predictions"),
        ),
        LABEL_ISSUES_PNG: (collected.flagged, "label_issues", lambda p: plot_label_issues(collected.flagged, p)),
    }
    status = {}
    for name, (source, section, plot) in plots.items():
        if not source:
            status[name] = data["missing"].get(section, "no data")
            if name in RANKED_FIGURES and data.get("predictions"):
                status[name] = "none"  # nothing to rank: not a missing part
            if name in FINDINGS_FIGURES and data.get("label_issues"):
                status[name] = "none"  # nothing flagged
            continue
        try:
            plot(os.path.join(out_dir, name))
            status[name] = ""
        except Exception as exc:
            log.warning("report: could not draw %s", name, exc_info=True)
            lines = str(exc).strip().splitlines()
            status[name] = f"could not be drawn: {type(exc).__name__}: {lines[0][:300] if lines else ''}"
    return status


def _new_figure(size: Tuple[float, float]):
    """A matplotlib Figure on the Agg canvas, without pyplot (no global state, no display needed)."""
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=DPI, layout="constrained")


def plot_learning_curves(training: Dict[str, Any], path: str) -> str:
    """Train/val accuracy (top) and loss (bottom) per epoch, 1-based, with the start of fine-tuning marked."""
    curves = training["curves"]
    epochs = list(range(1, training["epochs"] + 1))
    boundary = training.get("phase2_start_epoch")
    fig = _new_figure(LEARNING_CURVES_SIZE)
    axes = fig.subplots(2, 1, sharex=True)
    for ax, metric, title in ((axes[0], "accuracy", "accuracy"), (axes[1], "loss", "loss")):
        _plot_pair(ax, epochs, curves.get(metric, []), curves.get(f"val_{metric}", []), metric)
        if boundary:
            # Between the last phase-1 epoch and the first phase-2 epoch.
            ax.axvline(boundary + 0.5, color="tab:green", linestyle="--", label="start fine-tuning")
        ax.set_title(f"Training and validation {title}")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if metric == "accuracy" else "upper right")
    axes[0].set_ylim(0.0, 1.02)
    axes[1].set_xlabel("epoch" + ("" if boundary else "  (phase 2 not run)"))
    from matplotlib.ticker import MultipleLocator

    axes[1].xaxis.set_major_locator(MultipleLocator(max(1, math.ceil(len(epochs) / 12))))  # whole epochs
    axes[1].set_xlim(0.5, max(len(epochs), 1) + 0.5)
    fig.savefig(path)
    return path


def _plot_pair(ax, epochs: List[int], train: List[Any], val: List[Any], metric: str) -> None:
    for values, label in ((train, f"training {metric}"), (val, f"validation {metric}")):
        if values:
            ys = [math.nan if v is None else v for v in values][: len(epochs)]
            ax.plot(epochs[: len(ys)], ys, marker="o", markersize=3, label=label)


def plot_confusion_matrix(predictions: Dict[str, Any], path: str) -> str:
    """Counts, true class on the rows, predicted class on the columns, class names on both axes."""
    names = predictions["class_names"]
    matrix = predictions["confusion_matrix"]
    n = len(names)
    side = min(16.0, max(4.5, 0.7 * n + 3.0))
    fig = _new_figure((side + 1.0, side))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    from matplotlib.ticker import MaxNLocator

    colorbar = fig.colorbar(image, ax=ax, shrink=0.8, label="examples")
    colorbar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    labels = [_short(name, 20) for name in names]
    fontsize = 10 if n <= 20 else 7
    ax.set_xticks(
        range(n), labels=labels, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center", fontsize=fontsize
    )
    ax.set_yticks(range(n), labels=labels, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    peak = max(max(row) for row in matrix) if n else 0
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(matrix[i][j]),
                    ha="center",
                    va="center",
                    fontsize=10 if n <= 12 else 7,
                    color="white" if peak and matrix[i][j] > peak / 2 else "black",
                )
    accuracy = predictions["accuracy"]
    ax.set_title(
        f"Eval split: {predictions['total']} examples, accuracy {accuracy:.1%}"
        if accuracy is not None
        else "Eval split: no examples"
    )
    fig.savefig(path)
    return path


def grid_shape(count: int) -> Tuple[int, int]:
    """(rows, columns) of the eval image grid for `count` images (at most GRID_ROWS x GRID_COLUMNS)."""
    count = min(count, GRID_ROWS * GRID_COLUMNS)
    columns = min(GRID_COLUMNS, max(1, count))
    return max(1, math.ceil(count / columns)), columns


def plot_eval_grid(grid: List[Dict[str, Any]], path: str, predictions: Optional[Dict[str, Any]] = None) -> str:
    """Eval images titled "pred: X / true: Y", in red when wrong; wrong ones come first in `grid`.
    `predictions` (the counts over all predicted examples) only feeds the figure title."""

    def caption(entry: Dict[str, Any]) -> str:
        return f"pred: {_short(entry['predicted'], 18)}\ntrue: {_short(entry['true'], 18)}"

    return _image_grid(grid, path, _grid_title(grid, predictions), caption, bold_wrong=True, extra_height=0.0)


def plot_ranked_images(entries: List[Dict[str, Any]], path: str, title: str) -> str:
    """Images titled "true: X / pred: Y (97%)", in the order given (most telling first)."""

    def caption(entry: Dict[str, Any]) -> str:
        predicted = f"{_short(entry['predicted'], 16)} ({entry['probability']:.1%})"
        return f"true: {_short(entry['true'], 16)}\npred: {predicted}"

    return _image_grid(entries, path, title, caption, bold_wrong=False, extra_height=0.4)


def plot_label_issues(entries: List[Dict[str, Any]], path: str) -> str:
    """Training images titled "given: X / looks like: Y (97%)", the most contradicted first."""

    def caption(entry: Dict[str, Any]) -> str:
        looks_like = f"{_short(entry['predicted'], 12)} ({entry['probability']:.0%})"
        return f"given: {_short(entry['true'], 16)}\nlooks like: {looks_like}"

    title = "Training images that look mislabelled (out-of-sample probability of the class they look like)"
    return _image_grid(entries, path, title, caption, bold_wrong=False, extra_height=0.4)


def _image_grid(entries, path: str, title: str, caption, bold_wrong: bool, extra_height: float) -> str:
    """One figure of thumbnails, each captioned by `caption(entry)`, red when the prediction is wrong."""
    rows, columns = grid_shape(len(entries))
    fig = _new_figure((GRID_CELL_SIZE[0] * columns, GRID_CELL_SIZE[1] * rows + extra_height))
    axes = fig.subplots(rows, columns, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= len(entries):
            continue
        entry = entries[index]
        wrong = entry["true"] != entry["predicted"]
        ax.imshow(_thumbnail(entry["image"]))
        ax.set_title(
            caption(entry),
            fontsize=9,
            color="red" if wrong else "darkgreen",
            fontweight="bold" if wrong and bold_wrong else "normal",
        )
    fig.suptitle(title, fontsize=11)
    fig.savefig(path)
    return path


def _grid_title(grid: List[Dict[str, Any]], predictions: Optional[Dict[str, Any]]) -> str:
    total = predictions["total"] if predictions else len(grid)
    wrong = total - predictions["correct"] if predictions else sum(e["true"] != e["predicted"] for e in grid)
    shown = f"{len(grid)} of {total} eval images" if len(grid) < total else f"all {total} eval images"
    if not wrong:
        return f"{shown[0].upper()}{shown[1:]}: all classified correctly"
    return f"{shown[0].upper()}{shown[1:]}: {wrong} misclassified (shown first, titles in red)"


def _thumbnail(encoded: bytes):
    """Decoded as the pipeline decodes it (TF, RGB, first GIF frame), shrunk to at most GRID_IMAGE_MAX_SIDE."""
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.convert_image_dtype(image, tf.uint8)  # 16-bit PNGs
    height, width = int(image.shape[0]), int(image.shape[1])
    scale = GRID_IMAGE_MAX_SIDE / max(height, width)
    if scale < 1:
        size = [max(1, round(height * scale)), max(1, round(width * scale))]
        image = tf.cast(tf.image.resize(image, size, antialias=True), tf.uint8)
    return image.numpy()


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

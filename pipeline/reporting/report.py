"""The run report: one HTML page with figures, built from the artifacts of the latest pipeline run.

    write_report(config, out_dir=None) -> path of index.html   (default out_dir: <pipeline_root>/report/)
    report_data(config) -> dict                                (the numbers behind it; JSON-serialisable)
    summary_lines(data) -> [str]                               (a few lines for the CLI's end-of-run summary)

What the page shows, each part built from what the latest run left behind:
  * ingestion: files scanned / accepted per split and class / quarantined, and the quarantine list (path, reason)
  * training: eval accuracy after each phase, wall time, `learning_curves.png` (train/val accuracy and loss over
    both phases, with a "start fine-tuning" marker at the phase boundary, as in the TF transfer-learning tutorial)
  * evaluation: `confusion_matrix.png` and `eval_grid.png` (eval images titled predicted vs. true, wrong ones
    first and in red), from running the exported model's `serving_tf_example` signature over the eval split
    (what TF Serving and the Evaluator run), plus TFMA's per-class accuracy
  * the gate: blessed or not, with the numbers that decided it (candidate and served-baseline accuracy, the floor
    and the allowed drop as the Evaluator applied them, the failed thresholds), and what the Pusher did.

"The latest run" is the newest `pipeline_run` context in the run's MLMD store: a component that did not run in it
(the run stopped after the Trainer, or failed earlier) is reported as missing, with the reason, rather than
showing a stale artifact from an older run. Any part can be missing; the report says what and why, never crashes.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import json
import logging
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pipeline.configs import PipelineConfig
from pipeline.reporting.run_records import RunView, artifact_property, load_run
from serving.signatures import TF_EXAMPLE_SIGNATURE

log = logging.getLogger("ftune")

REPORT_DIR = "report"
INDEX_FILE = "index.html"
DATA_FILE = "report_data.json"
LEARNING_CURVES_PNG = "learning_curves.png"
CONFUSION_MATRIX_PNG = "confusion_matrix.png"
EVAL_GRID_PNG = "eval_grid.png"
FIGURES = (LEARNING_CURVES_PNG, CONFUSION_MATRIX_PNG, EVAL_GRID_PNG)

PREDICT_BATCH = 64
MAX_PREDICT_EXAMPLES = 2000
GRID_COLUMNS = 5
GRID_ROWS = 5
MAX_QUARANTINE_ROWS = 50
DPI = 100
# Figure sizes in inches (pixels = inches * DPI; figures are saved without bbox cropping, so this is exact).
LEARNING_CURVES_SIZE = (8.0, 7.5)
GRID_CELL_SIZE = (2.4, 2.7)
GRID_IMAGE_MAX_SIDE = 256

NODES = (
    "ImageExampleGen",
    "StatisticsGen",
    "SchemaGen",
    "ExampleValidator",
    "Transform",
    "Trainer",
    "ServedModelBaseline",
    "Evaluator",
    "Pusher",
)
_SERVING_DIR = "Format-Serving"


# --- collecting the numbers ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Collected:
    data: Dict[str, Any]
    grid: List[Dict[str, Any]] = dataclasses.field(default_factory=list)  # eval images for the grid figure
    history: Optional[Dict[str, Any]] = None  # the full training_history.json


def report_data(config: PipelineConfig, with_predictions: bool = True) -> Dict[str, Any]:
    """The report's numbers (JSON-serialisable). Sections that could not be built are None, with the reason under
    `missing[section]`. `with_predictions=False` skips loading the model (no confusion matrix), for speed."""
    return _collect(config, with_predictions=with_predictions, keep_images=False).data


def _collect(config: PipelineConfig, with_predictions: bool, keep_images: bool) -> _Collected:
    run = load_run(config)
    missing: Dict[str, str] = {}
    data: Dict[str, Any] = {
        "pipeline_name": config.pipeline_name,
        "pipeline_root": os.path.abspath(config.pipeline_root),
        "run_id": run.run_id,
        "generated_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "components": {node: run.states.get(node, "not run") for node in NODES},
        "missing": missing,
    }
    collected = _Collected(data=data)
    data["ingestion"] = _guarded("ingestion", missing, lambda: _ingestion(run))
    history = _guarded("training", missing, lambda: _load_history(run))
    collected.history = history
    data["training"] = _training(run, history) if history else None
    if with_predictions:
        predicted = _guarded("predictions", missing, lambda: _predictions(run, data["ingestion"], keep_images))
        data["predictions"], collected.grid = predicted if predicted else (None, [])
    data["gate"] = _guarded("gate", missing, lambda: _gate(run))
    data["push"] = _push(run, data["gate"])
    return collected


class _Missing(Exception):
    """A section cannot be built; the message says why (shown in the report)."""


def _guarded(section: str, missing: Dict[str, str], build: Callable[[], Any]) -> Any:
    """build(), or None with the reason recorded: a _Missing reason as is, any other error with its type."""
    try:
        return build()
    except _Missing as exc:
        missing[section] = str(exc)
    except Exception as exc:  # a damaged artifact must not take the whole report down
        log.warning("report: could not build the %s section", section, exc_info=True)
        missing[section] = f"could not be read: {type(exc).__name__}: {_first_line(exc)}"
    return None


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""


def _require_uri(run: RunView, node: str, key: str) -> str:
    uri = run.uri(node, key)
    if uri is None:
        raise _Missing(run.why_missing(node))
    return uri


def _read_json(path: str, what: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise _Missing(f"no {what} at {path}")
    with open(path) as f:
        return json.load(f)


# --- ingestion --


def _ingestion(run: RunView) -> Dict[str, Any]:
    from components.image_example_gen import REPORT_FILE

    uri = _require_uri(run, "ImageExampleGen", "examples")
    path = os.path.join(uri, REPORT_FILE)
    report = _read_json(path, "ingest report")
    per_class = report.get("accepted_per_split", {})
    quarantined = report.get("quarantined", [])
    return {
        "scanned": int(report["scanned"]),
        "accepted": int(report["accepted"]),
        "accepted_per_split": {split: int(sum(c.values())) for split, c in sorted(per_class.items())},
        "accepted_per_class": {split: dict(sorted(c.items())) for split, c in sorted(per_class.items())},
        "quarantined_count": int(report.get("quarantined_count", len(quarantined))),
        "quarantined_fraction": float(report.get("quarantined_fraction", 0.0)),
        "quarantined": [
            {"path": r.get("path", ""), "reason": r.get("reason", "")} for r in quarantined[:MAX_QUARANTINE_ROWS]
        ],
        "class_names": list(report.get("class_names", [])),
        "input_base": report.get("input_base", ""),
        "spans": list(report.get("spans") or []),
        "examples_uri": uri,
        "report_path": path,
    }


# --- training --


def _load_history(run: RunView) -> Dict[str, Any]:
    from components.fine_tune_trainer import HISTORY_FILE

    uri = _require_uri(run, "Trainer", "model")
    history = _read_json(os.path.join(uri, HISTORY_FILE), "training history")
    history["_path"] = os.path.join(uri, HISTORY_FILE)
    return history


def _training(run: RunView, history: Dict[str, Any]) -> Dict[str, Any]:
    phases = list(history.get("phase", []))
    curves = {key: list(history.get(key) or []) for key in ("accuracy", "val_accuracy", "loss", "val_loss")}
    return {
        "epochs": len(phases),
        "epochs_per_phase": {"phase1": phases.count(1), "phase2": phases.count(2)},
        "phase2_start_epoch": history.get("phase2_start_epoch"),
        "final_accuracy": dict(history.get("final_accuracy") or {}),
        "wall_seconds": dict(history.get("wall_seconds") or {}),
        "train_wall_s": history.get("train_wall_s"),
        "modes": dict(history.get("modes") or {}),
        "learning_rates": dict(history.get("learning_rates") or {}),
        "trainable_base_layers": history.get("trainable_base_layers"),
        "warm_start": history.get("warm_start"),
        "curves": {**curves, "phase": phases},
        "model_uri": run.uri("Trainer", "model"),
        "history_path": history.get("_path"),
    }


# --- predictions (confusion matrix, image grid) --


def _predictions(run: RunView, ingestion: Optional[Dict[str, Any]], keep_images: bool):
    """(numbers, grid entries): the exported model's serving_tf_example signature over the eval split."""
    import tensorflow as tf

    model_uri = _require_uri(run, "Trainer", "model")
    examples_uri = _require_uri(run, "ImageExampleGen", "examples")
    files = sorted(tf.io.gfile.glob(os.path.join(examples_uri, "Split-eval", "*")))
    if not files:
        raise _Missing(f"no eval split under {examples_uri}")
    model_dir = os.path.join(model_uri, _SERVING_DIR)
    if not tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
        raise _Missing(f"no exported SavedModel at {model_dir}")
    loaded = tf.saved_model.load(model_dir)
    if TF_EXAMPLE_SIGNATURE not in loaded.signatures:
        raise _Missing(f"the model at {model_dir} has no {TF_EXAMPLE_SIGNATURE} signature")
    class_names = _class_names(loaded, model_uri, ingestion)
    tally = _Tally(len(class_names), keep_images)
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(MAX_PREDICT_EXAMPLES)
    for batch in records.batch(PREDICT_BATCH).as_numpy_iterator():
        outputs = loaded.signatures[TF_EXAMPLE_SIGNATURE](examples=tf.constant(batch))
        tally.add(batch, outputs["class_ids"].numpy())
    split_size = (ingestion or {}).get("accepted_per_split", {}).get("eval")
    numbers = tally.numbers(class_names, split_size)
    numbers.update(signature=TF_EXAMPLE_SIGNATURE, model_dir=model_dir)
    return numbers, tally.grid(class_names)


def _class_names(loaded: Any, model_uri: str, ingestion: Optional[Dict[str, Any]]) -> List[str]:
    """The label vocabulary the model was exported with (else labels.txt, else the ingest report)."""
    names = getattr(loaded, "class_names", None)
    if names is not None:
        return [n.decode() for n in names.numpy()]
    path = os.path.join(model_uri, "labels.txt")
    if os.path.isfile(path):
        with open(path) as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    if ingestion and ingestion.get("class_names"):
        return list(ingestion["class_names"])
    raise _Missing(f"no class names for the model at {model_uri}")


class _Tally:
    """Confusion counts, plus the images for the grid: wrong predictions first, then right ones."""

    def __init__(self, num_classes: int, keep_images: bool):
        self.matrix = [[0] * num_classes for _ in range(num_classes)]
        self.keep_images = keep_images
        self.wrong: List[Dict[str, Any]] = []
        self.right: List[Dict[str, Any]] = []
        self.cells = GRID_COLUMNS * GRID_ROWS

    def add(self, serialized: Sequence[bytes], predicted: Sequence[int]) -> None:
        import tensorflow as tf

        for record, pred in zip(serialized, predicted, strict=True):
            feature = tf.train.Example.FromString(record).features.feature
            true, pred = int(feature["label"].int64_list.value[0]), int(pred)
            self.matrix[true][pred] += 1
            bucket = self.wrong if true != pred else self.right
            if len(bucket) < self.cells:
                entry = {
                    "file_name": feature["file_name"].bytes_list.value[0].decode("utf-8", "replace"),
                    "true": true,
                    "predicted": pred,
                }
                if self.keep_images:
                    entry["image"] = feature["image"].bytes_list.value[0]
                bucket.append(entry)

    def numbers(self, class_names: List[str], split_size: Optional[int]) -> Dict[str, Any]:
        total = sum(map(sum, self.matrix))
        correct = sum(self.matrix[i][i] for i in range(len(self.matrix)))
        wrong = [
            {"file_name": e["file_name"], "true": class_names[e["true"]], "predicted": class_names[e["predicted"]]}
            for e in self.wrong
        ]
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
        }

    def grid(self, class_names: List[str]) -> List[Dict[str, Any]]:
        chosen = (self.wrong + self.right)[: self.cells]
        return [{**e, "true": class_names[e["true"]], "predicted": class_names[e["predicted"]]} for e in chosen]


# --- the gate --


def _gate(run: RunView) -> Dict[str, Any]:
    import tensorflow_model_analysis as tfma

    blessing = run.artifact("Evaluator", "blessing")
    uri = _require_uri(run, "Evaluator", "evaluation")
    thresholds = _thresholds(os.path.join(uri, "eval_config.json"))
    overall, per_class = _accuracies(tfma.load_metrics(uri), thresholds["metric"])
    validation = tfma.load_validation_result(uri)
    baseline = run.artifact("ServedModelBaseline", "baseline_model")
    served_version = artifact_property(baseline, "served_version")
    gate = {
        "blessed": bool(artifact_property(blessing, "blessed", 0))
        if blessing is not None
        else bool(validation.validation_ok),
        "metric": thresholds["metric"],
        "candidate_accuracy": overall.get("candidate"),
        "baseline_accuracy": overall.get("baseline"),
        "baseline_version": served_version if served_version not in (None, -1) else None,
        "baseline_path": artifact_property(baseline, "served_path"),
        "accuracy_floor": thresholds["floor"],
        "max_accuracy_drop": thresholds["max_drop"],
        "eval_example_count": overall.get("example_count"),
        "per_class_accuracy": per_class,
        "failures": _failures(validation),
        "evaluated_model": artifact_property(blessing, "current_model"),
        "evaluation_uri": uri,
    }
    gate["decision"] = _decision(gate)
    return gate


def _thresholds(path: str) -> Dict[str, Any]:
    """The gate as the Evaluator applied it: accuracy metric, floor, allowed drop (None: no baseline, not applied)."""
    config = _read_json(path, "TFMA eval config").get("evalConfig", {})
    for spec in config.get("metricsSpecs", []):
        for metric in spec.get("metrics", []):
            # The gate sets its threshold on the overall slice (per_slice_thresholds); plain `threshold` too.
            per_slice = [t.get("threshold") for t in metric.get("perSliceThresholds", [])]
            threshold = metric.get("threshold") or next((t for t in per_slice if t), None)
            if not threshold:
                continue
            floor = threshold.get("valueThreshold", {}).get("lowerBound")
            change = threshold.get("changeThreshold", {}).get("absolute")
            return {
                "metric": _snake(metric.get("className", "")),
                "floor": float(floor) if floor is not None else None,
                # The gate subtracts a tiny epsilon so that "equal" passes; report the configured value.
                "max_drop": round(-float(change), 6) if change is not None else None,
            }
    raise _Missing(f"no metric threshold in {path}")


def _snake(class_name: str) -> str:
    """TFMA's metric name for a metric class, e.g. SparseCategoricalAccuracy -> sparse_categorical_accuracy."""
    out = [("_" + c.lower()) if c.isupper() and i else c.lower() for i, c in enumerate(class_name)]
    return "".join(out)


def _accuracies(metrics_for_slices, metric: str) -> Tuple[Dict[str, float], Dict[str, float]]:
    """({candidate, baseline, example_count} overall, {class name: candidate accuracy})."""
    overall: Dict[str, float] = {}
    per_class: Dict[str, float] = {}
    for slice_metrics in metrics_for_slices:
        keys = slice_metrics.slice_key.single_slice_keys
        for item in slice_metrics.metric_keys_and_values:
            key = item.key
            if key.is_diff or not item.value.HasField("double_value"):
                continue
            role = "baseline" if key.model_name == "baseline" else "candidate"
            value = float(item.value.double_value.value)
            if not keys and key.name == metric:
                overall[role] = value
            elif not keys and key.name == "example_count" and role == "candidate":
                overall["example_count"] = int(value)
            elif len(keys) == 1 and key.name == metric and role == "candidate":
                per_class[_slice_value(keys[0])] = value
    return overall, dict(sorted(per_class.items()))


def _slice_value(single_slice_key) -> str:
    kind = single_slice_key.WhichOneof("kind")
    value = getattr(single_slice_key, kind) if kind else ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _failures(validation) -> List[str]:
    """One line per failed threshold, e.g. "overall: sparse_categorical_accuracy 0.429 is below the floor 0.600"."""
    lines = []
    for per_slice in validation.metric_validations_per_slice:
        keys = per_slice.slice_key.single_slice_keys
        where = ", ".join(f"{k.column}={_slice_value(k)}" for k in keys) or "overall"
        for failure in per_slice.failures:
            lines.append(f"{where}: {_failure_text(failure)}")
    return lines


def _failure_text(failure) -> str:
    name = failure.metric_key.name
    value = failure.metric_value.double_value.value
    threshold = failure.metric_threshold
    if threshold.HasField("change_threshold"):
        allowed = -threshold.change_threshold.absolute.value
        return f"{name} changed by {value:+.3f} against the served model; at most {round(allowed, 6):.3f} drop allowed"
    if threshold.HasField("value_threshold") and threshold.value_threshold.HasField("lower_bound"):
        return f"{name} {value:.3f} is below the floor {threshold.value_threshold.lower_bound.value:.3f}"
    return f"{name} = {value:.3f} fails {failure.message or 'its threshold'}".strip()


def _decision(gate: Dict[str, Any]) -> str:
    """One sentence: the verdict and the numbers that decided it."""
    cand, floor = _fmt(gate["candidate_accuracy"]), _fmt(gate["accuracy_floor"])
    if not gate["blessed"]:
        why = "; ".join(gate["failures"][:5]) or "the Evaluator did not bless the model"
        return f"NOT BLESSED: {why}"
    if gate["baseline_accuracy"] is None:
        return (
            f"BLESSED: accuracy {cand} is at least the floor {floor}; no model served yet, so no comparison "
            "with a baseline"
        )
    return (
        f"BLESSED: accuracy {cand} is at least the floor {floor} and at most {_fmt(gate['max_accuracy_drop'])} "
        f"below the served model (version {gate['baseline_version']}, accuracy {_fmt(gate['baseline_accuracy'])})"
    )


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# --- the push --


def _push(run: RunView, gate: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Always a dict: pushed True/False/None (None: the Pusher did not run), destination, version, reason."""
    artifact = run.artifact("Pusher", "pushed_model")
    if artifact is None:
        return {"pushed": None, "destination": None, "version": None, "reason": run.why_missing("Pusher")}
    if not artifact_property(artifact, "pushed", 0):
        reason = "the Evaluator did not bless the model (see the gate decision)"
        return {"pushed": False, "destination": None, "version": None, "reason": reason}
    version = artifact_property(artifact, "pushed_version")
    destination = artifact_property(artifact, "pushed_destination")
    reason = f"pushed as version {version}"
    baseline_version = (gate or {}).get("baseline_version")
    if baseline_version is not None and str(baseline_version) == str(version):
        reason = f"this very model was already served as version {version}; not copied again"
    return {"pushed": True, "destination": destination, "version": version, "reason": reason}


# --- the summary for the CLI ------------------------------------------------------------------------------------


def summary_lines(data: Dict[str, Any]) -> List[str]:
    """A few lines for the end of a run: accepted/quarantined, accuracy per phase, gate decision, push."""
    missing = data.get("missing", {})
    lines = []
    ingestion = data.get("ingestion")
    if ingestion:
        splits = ", ".join(f"{s} {n}" for s, n in ingestion["accepted_per_split"].items())
        lines.append(
            f"ingestion: {ingestion['accepted']} accepted ({splits}), {ingestion['quarantined_count']} quarantined"
            + (f"; spans {', '.join(ingestion['spans'])}" if ingestion.get("spans") else "")
        )
    else:
        lines.append(f"ingestion: {missing.get('ingestion', 'missing')}")
    training = data.get("training")
    if training:
        acc = training["final_accuracy"]
        lines.append(
            f"training: eval accuracy after phase 1 {_fmt(acc.get('phase1'))}, after phase 2 "
            f"{_fmt(acc.get('phase2'))} ({_fmt(training['wall_seconds'].get('total'), 1)} s)"
        )
        if training.get("warm_start"):
            lines.append(f"warm start: {training['warm_start']['reason']}")
    else:
        lines.append(f"training: {missing.get('training', 'missing')}")
    gate = data.get("gate")
    lines.append(f"gate: {gate['decision']}" if gate else f"gate: {missing.get('gate', 'missing')}")
    push = data.get("push") or {}
    if push.get("pushed"):
        lines.append(f"push: {push['destination']} ({push['reason']})")
    else:
        lines.append(f"push: nothing pushed: {push.get('reason', 'unknown')}")
    return lines


# --- figures ------------------------------------------------------------------------------------------------------


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
    rows, columns = grid_shape(len(grid))
    fig = _new_figure((GRID_CELL_SIZE[0] * columns, GRID_CELL_SIZE[1] * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= len(grid):
            continue
        entry = grid[index]
        wrong = entry["true"] != entry["predicted"]
        ax.imshow(_thumbnail(entry["image"]))
        ax.set_title(
            f"pred: {_short(entry['predicted'], 18)}\ntrue: {_short(entry['true'], 18)}",
            fontsize=9,
            color="red" if wrong else "darkgreen",
            fontweight="bold" if wrong else "normal",
        )
    fig.suptitle(_grid_title(grid, predictions), fontsize=11)
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


# --- HTML -----------------------------------------------------------------------------------------------------------


def write_report(config: PipelineConfig, out_dir: Optional[str] = None) -> str:
    """Writes index.html, the PNG figures and report_data.json to out_dir (default <pipeline_root>/report/);
    returns the path of index.html."""
    out_dir = out_dir or os.path.join(config.pipeline_root, REPORT_DIR)
    os.makedirs(out_dir, exist_ok=True)
    for name in FIGURES + (DATA_FILE,):  # never leave a previous report's figure beside this page
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    collected = _collect(config, with_predictions=True, keep_images=True)
    figures = _write_figures(collected, out_dir)
    with open(os.path.join(out_dir, DATA_FILE), "w") as f:
        json.dump(collected.data, f, indent=2)
    path = os.path.join(out_dir, INDEX_FILE)
    _write_atomically(path, render_html(collected.data, figures))
    return path


def _write_figures(collected: _Collected, out_dir: str) -> Dict[str, str]:
    """{figure file: "" if written, else why not}."""
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
    }
    status = {}
    for name, (source, section, plot) in plots.items():
        if not source:
            status[name] = data["missing"].get(section, "no data")
            continue
        try:
            plot(os.path.join(out_dir, name))
            status[name] = ""
        except Exception as exc:
            log.warning("report: could not draw %s", name, exc_info=True)
            status[name] = f"could not be drawn: {type(exc).__name__}: {_first_line(exc)}"
    return status


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ddd; padding: 0.3em 0.6em;
text-align: left; vertical-align: top; } th { background: #f4f4f4; } td.num { text-align: right; }
.meta { color: #666; font-size: 0.9em; } .missing { color: #8a6d3b; background: #fcf8e3; padding: 0.5em; }
.verdict { font-size: 1.2em; padding: 0.6em 0.8em; border-radius: 4px; }
.blessed { background: #dff0d8; color: #2b542c; } .not-blessed { background: #f2dede; color: #a94442; }
.unknown { background: #eee; color: #555; } img { max-width: 100%; border: 1px solid #eee; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    cell = ('<td class="num">{}</td>', "<td>{}</td>")
    body = "".join(
        "<tr>" + "".join(cell[i not in numeric].format(_esc(c)) for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _kv_table(rows: Sequence[Tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows) + "</table>"


def _missing_html(reason: str) -> str:
    return f'<p class="missing">Missing: {_esc(reason)}</p>'


def _figure_html(name: str, status: Dict[str, str], alt: str) -> str:
    if status.get(name):
        return _missing_html(f"{name}: {status[name]}")
    return f'<p><img src="{_esc(name)}" alt="{_esc(alt)}"></p>'


def render_html(data: Dict[str, Any], figures: Dict[str, str]) -> str:
    """The page, from report_data's dict and the figure status (file -> "" if drawn, else why not)."""
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{_esc(data["pipeline_name"])} run report</title>',
        f"<style>{_CSS}</style></head><body>",
        _header_html(data),
        _verdict_html(data),
        _components_html(data),
        _ingestion_html(data),
        _quarantine_html(data),
        _training_html(data, figures),
        _evaluation_html(data, figures),
        _gate_html(data),
        _push_html(data),
        "</body></html>",
    ]
    return "\n".join(parts)


def _header_html(data: Dict[str, Any]) -> str:
    return (
        f"<h1>{_esc(data['pipeline_name'])}: run report</h1>"
        f'<p class="meta">run {_esc(data["run_id"] or "none")} &middot; pipeline root '
        f"<code>{_esc(data['pipeline_root'])}</code> &middot; generated {_esc(data['generated_at'])}</p>"
    )


def _verdict_html(data: Dict[str, Any]) -> str:
    gate, push = data.get("gate"), data.get("push") or {}
    if gate is None:
        css, text = "unknown", f"Not evaluated: {data['missing'].get('gate', 'no evaluation')}"
    else:
        css, text = ("blessed" if gate["blessed"] else "not-blessed"), gate["decision"]
    if push.get("pushed"):
        pushed = f"Pushed: {push['destination']} (version {push['version']})"
    else:
        pushed = f"Nothing pushed: {push.get('reason', 'unknown')}"
    return f'<p class="verdict {css}">{_esc(text)}<br>{_esc(pushed)}</p>'


def _components_html(data: Dict[str, Any]) -> str:
    rows = [(node, state) for node, state in data["components"].items()]
    return "<h2>Components in this run</h2>" + _table(("component", "state"), rows)


def _ingestion_html(data: Dict[str, Any]) -> str:
    ing = data.get("ingestion")
    if ing is None:
        return "<h2>Ingestion</h2>" + _missing_html(data["missing"].get("ingestion", "no ingest report"))
    splits = ing["accepted_per_split"]
    summary = _table(
        ("scanned", "accepted", *[f"accepted ({s})" for s in splits], "quarantined"),
        [
            (
                ing["scanned"],
                ing["accepted"],
                *splits.values(),
                f"{ing['quarantined_count']} ({ing['quarantined_fraction']:.1%})",
            )
        ],
        numeric=range(3 + len(splits)),
    )
    per_class = ing["accepted_per_class"]
    rows = [(name, *[per_class[s].get(name, 0) for s in splits]) for name in ing["class_names"]]
    classes = _table(("class", *splits), rows, numeric=range(1, 1 + len(splits)))
    return (
        f"<h2>Ingestion</h2><p>Images from <code>{_esc(ing['input_base'])}</code>; report "
        f"<code>{_esc(ing['report_path'])}</code>.</p>{summary}<p>Accepted images per class and split:</p>"
        f"{classes}"
    )


def _quarantine_html(data: Dict[str, Any]) -> str:
    ing = data.get("ingestion")
    if ing is None:
        return "<h2>Quarantine</h2>" + _missing_html(data["missing"].get("ingestion", "no ingest report"))
    if not ing["quarantined_count"]:
        return "<h2>Quarantine</h2><p>No file was quarantined.</p>"
    table = _table(("path", "reason"), [(r["path"], r["reason"]) for r in ing["quarantined"]])
    more = ing["quarantined_count"] - len(ing["quarantined"])
    note = (
        f"<p>&hellip; and {more} more; the full list is in <code>{_esc(ing['report_path'])}</code>.</p>"
        if more > 0
        else ""
    )
    return (
        f"<h2>Quarantine</h2><p>{ing['quarantined_count']} file(s) were set aside and never reached "
        f"training:</p>{table}{note}"
    )


def _training_html(data: Dict[str, Any], figures: Dict[str, str]) -> str:
    tr = data.get("training")
    if tr is None:
        return "<h2>Training</h2>" + _missing_html(data["missing"].get("training", "no training history"))
    acc, wall = tr["final_accuracy"], tr["wall_seconds"]
    rows = []
    for phase, label in (("phase1", "1: base frozen, new head"), ("phase2", "2: top of the base fine-tuned")):
        rows.append(
            (
                label,
                tr["epochs_per_phase"].get(phase, 0),
                _fmt(acc.get(phase)),
                _fmt(wall.get(phase), 1),
                tr["modes"].get(phase, ""),
                tr["learning_rates"].get(phase, ""),
            )
        )
    table = _table(
        ("phase", "epochs", "eval accuracy after", "wall s", "mode", "learning rate"), rows, numeric=(1, 2, 3)
    )
    total = (
        f"<p>Total training wall time {_esc(_fmt(wall.get('total'), 1))} s (feature cache "
        f"{_esc(_fmt(wall.get('feature_cache'), 1))} s); history <code>{_esc(tr['history_path'])}</code>.</p>"
    )
    return (
        "<h2>Training</h2>"
        + table
        + total
        + _figure_html(LEARNING_CURVES_PNG, figures, "training and validation accuracy and loss per epoch")
    )


def _evaluation_html(data: Dict[str, Any], figures: Dict[str, str]) -> str:
    pred = data.get("predictions")
    if pred is None:
        reason = data["missing"].get("predictions", "predictions were not computed")
        return "<h2>Evaluation on the eval split</h2>" + _missing_html(reason)
    scope = f"all {pred['total']}"
    if pred["truncated"]:
        scope = f"the first {pred['total']} of {pred['eval_split_size'] or 'more'}"
    text = (
        f"<p>Predictions of the exported model (<code>{_esc(pred['signature'])}</code> signature of "
        f"<code>{_esc(pred['model_dir'])}</code>) on {_esc(scope)} eval examples: "
        f"{pred['correct']} correct ({_esc(_fmt(pred['accuracy']))}). Classes: "
        f"{_esc(', '.join(pred['class_names']))}.</p>"
    )
    return (
        "<h2>Evaluation on the eval split</h2>"
        + text
        + _figure_html(CONFUSION_MATRIX_PNG, figures, "confusion matrix on the eval split")
        + _figure_html(EVAL_GRID_PNG, figures, "eval images with predicted and true labels")
    )


def _gate_html(data: Dict[str, Any]) -> str:
    gate = data.get("gate")
    if gate is None:
        return "<h2>Gate (Evaluator)</h2>" + _missing_html(data["missing"].get("gate", "no evaluation"))
    baseline = (
        f"{_fmt(gate['baseline_accuracy'])} (served version {gate['baseline_version']})"
        if gate["baseline_accuracy"] is not None
        else "none served"
    )
    drop = (
        _fmt(gate["max_accuracy_drop"])
        if gate["max_accuracy_drop"] is not None
        else "not applied (no served model to compare with)"
    )
    rows = [
        ("decision", "BLESSED" if gate["blessed"] else "NOT BLESSED"),
        (f"candidate {gate['metric']}", _fmt(gate["candidate_accuracy"])),
        (f"baseline {gate['metric']}", baseline),
        ("accuracy floor", _fmt(gate["accuracy_floor"])),
        ("allowed drop vs. served model", drop),
        ("eval examples", _fmt(gate["eval_example_count"])),
    ]
    per_class = _table(
        ("class", f"candidate {gate['metric']}"),
        [(c, _fmt(v)) for c, v in gate["per_class_accuracy"].items()],
        numeric=(1,),
    )
    failures = (
        ("<p>Failed thresholds:</p><ul>" + "".join(f"<li>{_esc(f)}</li>" for f in gate["failures"]) + "</ul>")
        if gate["failures"]
        else ""
    )
    return (
        f"<h2>Gate (Evaluator)</h2><p>{_esc(gate['decision'])}</p>{_kv_table(rows)}{failures}"
        "<p>TFMA checks the thresholds on every slice of the eval split: all of it, and each class.</p>"
        f'<p>Per class (TFMA slices):</p>{per_class}<p class="meta">evaluation '
        f"<code>{_esc(gate['evaluation_uri'])}</code></p>"
    )


def _push_html(data: Dict[str, Any]) -> str:
    push = data.get("push") or {}
    if push.get("pushed"):
        body = (
            f"<p>Pushed to <code>{_esc(push['destination'])}</code> (version {_esc(push['version'])}): "
            f"{_esc(push['reason'])}.</p>"
        )
    else:
        body = f"<p>Nothing pushed: {_esc(push.get('reason', 'unknown'))}.</p>"
    return "<h2>Push</h2>" + body

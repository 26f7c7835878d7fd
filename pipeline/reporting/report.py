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
  * the gate: blessed or not, what it checked (overall accuracy, each class's recall, floors and the allowed drops
    as the Evaluator applied them, which classes had too few eval images to be gated, whether the served model
    was compared with and why not), recall per class and macro recall, the failed thresholds with both numbers,
    and what the Pusher did; `outcome` names how the run ended and its exit code (pipeline/outcome.py).

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
MISTAKES_PNG = "confident_mistakes.png"
UNSURE_PNG = "unsure_correct.png"
FIGURES = (LEARNING_CURVES_PNG, CONFUSION_MATRIX_PNG, EVAL_GRID_PNG)
# Drawn only when there is something to show (no mistakes: no mistakes figure).
RANKED_FIGURES = (MISTAKES_PNG, UNSURE_PNG)
# Most confident mistakes / least confident correct predictions shown (fastai's "top losses" view).
RANKED_IMAGES = 10

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
    mistakes: List[Dict[str, Any]] = dataclasses.field(default_factory=list)  # most confident wrong ones
    unsure: List[Dict[str, Any]] = dataclasses.field(default_factory=list)  # least confident right ones
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
        data["predictions"], collected.grid = predicted[:2] if predicted else (None, [])
        collected.mistakes, collected.unsure = predicted[2] if predicted else ([], [])
    data["gate"] = _guarded("gate", missing, lambda: _gate(run))
    data["push"] = _push(run, data["gate"])
    data["outcome"] = _outcome(data["push"])
    data["tflite"] = _guarded("tflite", missing, lambda: _tflite(run, data["push"]))
    data["settings"] = config.to_dict()  # as loaded by the command writing the report (`ftune run`: the run's)
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
        tally.add(batch, outputs["class_ids"].numpy(), outputs["probabilities"].numpy())
    split_size = (ingestion or {}).get("accepted_per_split", {}).get("eval")
    numbers = tally.numbers(class_names, split_size)
    numbers.update(signature=TF_EXAMPLE_SIGNATURE, model_dir=model_dir)
    return numbers, tally.grid(class_names), tally.ranked(class_names)


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
                entry = {
                    "file_name": feature["file_name"].bytes_list.value[0].decode("utf-8", "replace"),
                    "true": true,
                    "predicted": pred,
                }
                if self.keep_images:
                    entry["image"] = feature["image"].bytes_list.value[0]
                bucket.append(entry)

    def _rank(self, feature, true: int, pred: int, confidence: float) -> None:
        import heapq

        self._seen += 1
        entry = {
            "file_name": feature["file_name"].bytes_list.value[0].decode("utf-8", "replace"),
            "true": true,
            "predicted": pred,
            "probability": confidence,
        }
        if self.keep_images:
            entry["image"] = feature["image"].bytes_list.value[0]
        # heapq keeps the smallest first: most confident wrong -> key confidence; least confident right -> -conf.
        heap, key = (self.confident_wrong, confidence) if true != pred else (self.unsure_right, -confidence)
        item = (key, self._seen, entry)
        if len(heap) < RANKED_IMAGES:
            heapq.heappush(heap, item)
        elif item[:2] > heap[0][:2]:
            heapq.heapreplace(heap, item)

    def ranked(self, class_names: List[str]) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
        """(most confident mistakes, most confident first; least confident correct ones, least first)."""

        def named(items, reverse):
            ordered = [e for _, _, e in sorted(items, key=lambda t: t[:2], reverse=reverse)]
            return [{**e, "true": class_names[e["true"]], "predicted": class_names[e["predicted"]]} for e in ordered]

        return named(self.confident_wrong, True), named(self.unsure_right, True)

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
            **per_class_metrics(self.matrix, class_names),
            "confident_mistakes": [_no_image(e) for e in self.ranked(class_names)[0]],
            "unsure_correct": [_no_image(e) for e in self.ranked(class_names)[1]],
        }

    def grid(self, class_names: List[str]) -> List[Dict[str, Any]]:
        chosen = (self.wrong + self.right)[: self.cells]
        return [{**e, "true": class_names[e["true"]], "predicted": class_names[e["predicted"]]} for e in chosen]


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


# --- TFLite --


def _tflite(run: RunView, push: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The Trainer's TFLite record (serving/tflite.py) plus where the pushed copy is; None when push.tflite=off."""
    from serving.tflite import TFLITE_FILE, read_record

    uri = run.uri("Trainer", "model")
    if uri is None:
        return None  # the training section says why
    record = read_record(os.path.join(uri, _SERVING_DIR))
    if record is None:
        return None
    pushed_path = None
    if push.get("pushed") and push.get("destination") and record.get("accepted"):
        candidate = os.path.join(push["destination"], TFLITE_FILE)
        pushed_path = candidate if os.path.isfile(candidate) else None
    return {**record, "pushed_path": pushed_path}


# --- the gate --


def _gate(run: RunView) -> Dict[str, Any]:
    """The gate as the Evaluator applied it and what it found (its gate.json), in the report's terms."""
    from components.evaluator_gate import GATE_FILE, read_gate_summary

    blessing = run.artifact("Evaluator", "blessing")
    uri = _require_uri(run, "Evaluator", "evaluation")
    summary = read_gate_summary(uri)
    if summary is None:
        raise _Missing(f"no {GATE_FILE} in {uri} (evaluated by an older ftune)")
    baseline = run.artifact("ServedModelBaseline", "baseline_model")
    thresholds = summary["thresholds"]
    classes = summary["classes"]
    return {
        "blessed": bool(artifact_property(blessing, "blessed", 0)) if blessing is not None else summary["blessed"],
        "metric": summary["metric"],
        "candidate_accuracy": summary["accuracy"],
        "baseline_accuracy": summary["baseline_accuracy"],
        "baseline_version": summary["baseline_version"],
        "baseline_path": artifact_property(baseline, "served_path") if summary["change_thresholds_used"] else None,
        "change_thresholds_used": summary["change_thresholds_used"],
        "baseline_note": summary["baseline_note"],
        "accuracy_floor": thresholds["accuracy_floor"],
        "max_accuracy_drop": thresholds["max_accuracy_drop"],
        "class_recall_floor": thresholds["class_recall_floor"],
        "max_class_recall_drop": thresholds["max_class_recall_drop"],
        "min_class_examples": thresholds["min_class_examples"],
        "eval_example_count": summary["eval_examples"],
        "macro_recall": summary["macro_recall"],
        "baseline_macro_recall": summary["baseline_macro_recall"],
        "per_class_accuracy": {c: v["recall"] for c, v in sorted(classes.items()) if v["recall"] is not None},
        "baseline_per_class_accuracy": {
            c: v["baseline_recall"] for c, v in sorted(classes.items()) if v.get("baseline_recall") is not None
        },
        "classes": classes,
        "checked": summary["checked"],
        "failures": [f["text"] for f in summary["failures"]],
        "failure_details": summary["failures"],
        "evaluated_model": artifact_property(blessing, "current_model"),
        "evaluation_uri": uri,
        "decision": summary["decision"],
    }


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
    already = baseline_version is not None and str(baseline_version) == str(version)
    if already:
        reason = f"this very model was already served as version {version}; not copied again"
    return {"pushed": True, "destination": destination, "version": version, "reason": reason, "already_served": already}


def _outcome(push: Dict[str, Any]) -> Dict[str, Any]:
    """How the run ended, by name and exit code (pipeline/outcome.py), from what the Pusher did."""
    from pipeline import outcome

    if push.get("pushed"):
        status = outcome.ALREADY_SERVED if push.get("already_served") else outcome.PUSHED
    elif push.get("pushed") is False:
        status = outcome.GATE_REFUSED
    else:
        status = outcome.NOT_FINISHED
    return outcome.outcome(status, push.get("version"))


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
    result = data.get("outcome")
    if result:
        lines.append(f"outcome: {result['status']} (exit code {result['exit_code']})")
    lite = data.get("tflite")
    if lite:
        where = f"pushed {lite['pushed_path']}" if lite.get("pushed_path") else "not pushed"
        lines.append(
            f"tflite ({lite['mode']}): {lite['size_bytes'] / 1024:.0f} KB, accuracy {_fmt(lite['tflite_accuracy'])} "
            f"vs SavedModel {_fmt(lite['saved_model_accuracy'])}; {'accepted' if lite['accepted'] else 'rejected'}, "
            f"{where}"
        )
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

    def caption(entry: Dict[str, Any]) -> str:
        return f"pred: {_short(entry['predicted'], 18)}\ntrue: {_short(entry['true'], 18)}"

    return _image_grid(grid, path, _grid_title(grid, predictions), caption, bold_wrong=True, extra_height=0.0)


def plot_ranked_images(entries: List[Dict[str, Any]], path: str, title: str) -> str:
    """Images titled "true: X / pred: Y (97%)", in the order given (most telling first)."""

    def caption(entry: Dict[str, Any]) -> str:
        predicted = f"{_short(entry['predicted'], 16)} ({entry['probability']:.1%})"
        return f"true: {_short(entry['true'], 16)}\npred: {predicted}"

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


# --- HTML -----------------------------------------------------------------------------------------------------------


def write_report(config: PipelineConfig, out_dir: Optional[str] = None) -> str:
    """Writes index.html, the PNG figures and report_data.json to out_dir (default <pipeline_root>/report/);
    returns the path of index.html."""
    out_dir = out_dir or os.path.join(config.pipeline_root, REPORT_DIR)
    os.makedirs(out_dir, exist_ok=True)
    for name in FIGURES + RANKED_FIGURES + (DATA_FILE,):  # never leave a previous report's figure beside this page
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
    plots[MISTAKES_PNG] = (
        collected.mistakes,
        "predictions",
        lambda p: plot_ranked_images(collected.mistakes, p, "Most confident mistakes (probability of the wrong class)"),
    )
    plots[UNSURE_PNG] = (
        collected.unsure,
        "predictions",
        lambda p: plot_ranked_images(collected.unsure, p, "Least confident correct predictions"),
    )
    status = {}
    for name, (source, section, plot) in plots.items():
        if not source:
            status[name] = data["missing"].get(section, "no data")
            if name in RANKED_FIGURES and data.get("predictions"):
                status[name] = "none"  # nothing to rank: not a missing part
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
    if status.get(name) == "none":
        return "<p>None among the eval images.</p>"
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
        _per_class_html(data),
        _mistakes_html(data, figures),
        _gate_html(data),
        _candidate_vs_served_html(data),
        _push_html(data),
        _tflite_html(data),
        _settings_html(data),
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
        if gate["change_thresholds_used"]
        else f"not compared: {gate['baseline_note']}"
    )
    drop = _fmt(gate["max_accuracy_drop"]) if gate["change_thresholds_used"] else "not applied (floors only)"
    rows = [
        ("decision", "BLESSED" if gate["blessed"] else "NOT BLESSED"),
        (f"candidate {gate['metric']}", _fmt(gate["candidate_accuracy"])),
        (f"baseline {gate['metric']}", baseline),
        ("accuracy floor", _fmt(gate["accuracy_floor"])),
        ("allowed drop vs. served model", drop),
        ("class recall floor", _fmt(gate["class_recall_floor"])),
        (
            "allowed class recall drop vs. served model",
            _fmt(gate["max_class_recall_drop"]) if gate["change_thresholds_used"] else "not applied",
        ),
        ("macro recall (candidate / served)", f"{_fmt(gate['macro_recall'])} / {_fmt(gate['baseline_macro_recall'])}"),
        ("eval examples", _fmt(gate["eval_example_count"])),
    ]
    per_class = _table(
        ("class", "eval images", "recall", "served model's recall", "gated"),
        [
            (c, v["examples"], _fmt(v["recall"]), _fmt(v["baseline_recall"]), "yes" if v["gated"] else "no (too few)")
            for c, v in gate["classes"].items()
        ],
        numeric=(1, 2, 3),
    )
    failures = (
        ("<p>Failed thresholds:</p><ul>" + "".join(f"<li>{_esc(f)}</li>" for f in gate["failures"]) + "</ul>")
        if gate["failures"]
        else ""
    )
    return (
        f"<h2>Gate (Evaluator)</h2><p>{_esc(gate['decision'])}</p>{_kv_table(rows)}{failures}"
        "<p>What the gate checked:</p><ul>" + "".join(f"<li>{_esc(line)}</li>" for line in gate["checked"]) + "</ul>"
        f'<p>Per class (recall: accuracy on the eval images of that true class):</p>{per_class}<p class="meta">'
        f"evaluation <code>{_esc(gate['evaluation_uri'])}</code></p>"
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


def _per_class_html(data: Dict[str, Any]) -> str:
    pred = data.get("predictions")
    title = "<h2>Per-class precision, recall and F1</h2>"
    if pred is None:
        return title + _missing_html(data["missing"].get("predictions", "predictions were not computed"))
    rows = [
        (name, _fmt(m["precision"]), _fmt(m["recall"]), _fmt(m["f1"]), m["support"])
        for name, m in pred["per_class"].items()
    ]
    macro = pred["macro"]
    rows.append(("macro average", _fmt(macro["precision"]), _fmt(macro["recall"]), _fmt(macro["f1"]), pred["total"]))
    return (
        title
        + "<p>On the same eval predictions as above. Precision: of the images predicted as the class, the share that "
        "are; recall: of the images of the class, the share found. Macro: the plain mean over classes.</p>"
        + _table(("class", "precision", "recall", "F1", "eval images"), rows, numeric=(1, 2, 3, 4))
    )


def _mistakes_html(data: Dict[str, Any], figures: Dict[str, str]) -> str:
    title = "<h2>Most confident mistakes</h2>"
    pred = data.get("predictions")
    if pred is None:
        return title + _missing_html(data["missing"].get("predictions", "predictions were not computed"))
    rows = [(e["file_name"], e["true"], e["predicted"], f"{e['probability']:.1%}") for e in pred["confident_mistakes"]]
    table = _table(("file", "true", "predicted", "probability"), rows, numeric=(3,)) if rows else ""
    unsure = [(e["file_name"], e["true"], f"{e['probability']:.1%}") for e in pred["unsure_correct"]]
    return (
        title
        + "<p>Eval images the model got wrong with the highest probability on the wrong class: mislabelled images, "
        "confusable classes or a blind spot of the model.</p>"
        + _figure_html(MISTAKES_PNG, figures, "most confident mistakes")
        + table
        + "<h2>Least confident correct predictions</h2><p>Right, but barely: the images nearest to the decision "
        "boundary.</p>"
        + _figure_html(UNSURE_PNG, figures, "least confident correct predictions")
        + (_table(("file", "class", "probability"), unsure, numeric=(2,)) if unsure else "")
    )


def _candidate_vs_served_html(data: Dict[str, Any]) -> str:
    title = "<h2>Candidate versus served model, per class</h2>"
    gate = data.get("gate")
    if gate is None:
        return title + _missing_html(data["missing"].get("gate", "no evaluation"))
    served = gate.get("baseline_per_class_accuracy") or {}
    if not served:
        return title + "<p>No model was served when this one was evaluated: nothing to compare with.</p>"
    rows = []
    for name, value in gate["per_class_accuracy"].items():
        base = served.get(name)
        diff = f"{value - base:+.3f}" if base is not None else "n/a"
        rows.append((name, _fmt(value), _fmt(base), diff))
    return (
        title + f"<p>{_esc(gate['metric'])} on each class's eval images (TFMA slices), the candidate against served "
        f"version {_esc(gate['baseline_version'])}.</p>"
        + _table(("class", "candidate", "served", "difference"), rows, numeric=(1, 2, 3))
    )


def _tflite_html(data: Dict[str, Any]) -> str:
    title = "<h2>TFLite</h2>"
    lite = data.get("tflite")
    mode = ((data.get("settings") or {}).get("push") or {}).get("tflite", "off")
    if lite is None and mode == "off":
        return title + "<p>Not requested (<code>push.tflite: off</code>).</p>"
    if lite is None:
        reason = data["missing"].get("tflite", "the Trainer of this run wrote no TFLite record")
        return title + _missing_html(reason)
    rows = [
        ("mode", lite["mode"]),
        ("size", f"{lite['size_bytes'] / 1024:.0f} KB"),
        ("TFLite accuracy (interpreter, eval split)", _fmt(lite["tflite_accuracy"])),
        ("SavedModel accuracy (same images)", _fmt(lite["saved_model_accuracy"])),
        ("allowed drop", _fmt(lite["max_accuracy_drop"])),
        ("agreement with the SavedModel", _fmt(lite["agreement"])),
        ("decision", ("accepted: " if lite["accepted"] else "NOT accepted: ") + lite["reason"]),
        ("pushed copy", lite["pushed_path"] or "none"),
        ("input", lite["input"]),
    ]
    return title + _kv_table(rows)


def _settings_html(data: Dict[str, Any]) -> str:
    ing = data.get("ingestion") or {}
    per_split = ", ".join(f"{s} {n}" for s, n in ing.get("accepted_per_split", {}).items())
    inputs = [
        ("images from", ing.get("input_base", "n/a")),
        ("classes", f"{len(ing.get('class_names', []))}: {', '.join(ing.get('class_names', []))}"),
        ("accepted", f"{ing.get('accepted', 'n/a')} ({per_split})"),
        ("quarantined", ing.get("quarantined_count", "n/a")),
    ]
    rows = []

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value and prefix.count(".") < 1:
            for key, sub in value.items():
                flatten(f"{prefix}.{key}" if prefix else key, sub)
        else:
            rows.append((prefix, json.dumps(value) if isinstance(value, (list, dict)) else value))

    flatten("", data.get("settings") or {})
    return (
        "<h2>Input and settings</h2>"
        + _kv_table(inputs)
        + "<details><summary>Every setting (<code>ftune config</code> keys), as loaded by the command that wrote "
        "this report: the run's own when <code>ftune run</code> wrote it</summary>"
        + _table(("key", "value"), rows)
        + "</details>"
    )

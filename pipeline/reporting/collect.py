"""Collecting a run's numbers for the report and the summary, from what the latest pipeline run left behind.

    collect(config, with_predictions, keep_images) -> Collected   (Collected.data: JSON-serialisable)

Where each part comes from:
  * ingestion: ImageExampleGen's ingest report (files scanned / accepted per split and class / quarantined);
  * training: the Trainer's training history (both phases, timings, the warm start);
  * predictions: the Trainer's record of the trained model's probabilities for every eval image
    (eval_predictions.json; predictions.py): the confusion matrix, the grid images, the ranked mistakes, and
    precision/F1 -- what TFMA does not give;
  * label_issues, data_changes: the Trainer's check of its training data (label_issues.json, data_changes.json;
    None when absent), images_per_span: sizes and formats per span from the examples (with the predictions), and
    likely_causes: for a refused model, the strongest of those findings (findings.py);
  * gate: the Evaluator's gate.json (TFMA's overall accuracy and per-class recall, the thresholds, the decision).
    The per-class recall on the page is this one, the gated number, never the one from the Trainer's predictions;
  * push: the Pusher's artifact; outcome: how the run ended (pipeline/outcome.py); tflite: the Trainer's record;
  * change_check: what the run's ChangeCheck decided (run_records.change_decision: changed, refused, reason,
    served_version), None for a run without one (`ftune ingest`); a run it found nothing to do for ran nothing
    else, so the other parts say "skipped" with its reason, and the outcome is no_new_data or still_refused;
  * last_refused: the serving folder's refused_attempt.json (the last attempt the gate refused, whichever run it
    was), and last_refused_applies: whether the change check still holds it (the version it was compared with is
    the one served now).

"The latest run" is the newest `pipeline_run` context in the run's MLMD store: a component that did not run in it
(the run stopped after the Trainer, or failed earlier) is reported as missing, with the reason, rather than
showing a stale artifact from an older run. Any part can be missing: it is None, with the reason under
`missing[part]`; collecting never crashes.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from typing import Any, Callable, Dict, List, Optional

from pipeline.configs import PipelineConfig
from pipeline.reporting import findings
from pipeline.reporting import predictions as eval_predictions
from pipeline.reporting.run_records import RunView, artifact_property, change_decision, load_run
from serving import sidecars
from serving.model_versions import NO_SERVED_VERSION, latest_served

log = logging.getLogger("ftune")

MAX_QUARANTINE_ROWS = 50


@dataclasses.dataclass
class Collected:
    data: Dict[str, Any]
    grid: List[Dict[str, Any]] = dataclasses.field(default_factory=list)  # eval images for the grid figure
    mistakes: List[Dict[str, Any]] = dataclasses.field(default_factory=list)  # most confident wrong ones
    unsure: List[Dict[str, Any]] = dataclasses.field(default_factory=list)  # least confident right ones
    flagged: List[Dict[str, Any]] = dataclasses.field(default_factory=list)  # suspected label errors (training)


def collect(config: PipelineConfig, with_predictions: bool, keep_images: bool) -> Collected:
    """The run's numbers. `with_predictions=False` skips loading the model (no `predictions` part at all), for
    speed; `keep_images` keeps the encoded images of the grid and ranked entries (for the figures)."""
    run = load_run(config)
    serving_dir = config.serving_model_dir
    missing: Dict[str, str] = {}
    data: Dict[str, Any] = {
        "pipeline_name": config.pipeline_name,
        "pipeline_root": config.pipeline_root,
        "run_id": run.run_id,
        "generated_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "components": {node: run.states.get(node, "not run") for node in sidecars.COMPONENT_IDS},
        "missing": missing,
    }
    collected = Collected(data=data)
    decision = data["change_check"] = _guarded("change_check", missing, lambda: change_decision(run))
    nothing_to_do = bool(decision) and not decision["changed"]
    if nothing_to_do:
        data["components"] = {node: run.states.get(node, "skipped") for node in sidecars.COMPONENT_IDS}
    data["last_refused"] = _guarded("last_refused", missing, lambda: sidecars.read_refused_attempt(serving_dir))
    data["last_refused_applies"] = _refusal_applies(data["last_refused"], serving_dir)
    data["ingestion"] = _guarded("ingestion", missing, lambda: _ingestion(run))
    data["training"] = _guarded("training", missing, lambda: _training(run))
    data["label_issues"] = _guarded("label_issues", missing, lambda: findings.label_issues_part(run))
    data["data_changes"] = _guarded("data_changes", missing, lambda: findings.data_changes_part(run))
    if with_predictions:
        predicted = _guarded("predictions", missing, lambda: _predictions(run, data["ingestion"], keep_images))
        data["predictions"], collected.grid = predicted[:2] if predicted else (None, [])
        collected.mistakes, collected.unsure = predicted[2] if predicted else ([], [])
        spans = _guarded(
            "images_per_span",
            missing,
            lambda: findings.span_images_and_grid(run, data["label_issues"], keep_images),
        )
        data["images_per_span"], collected.flagged = spans if spans else (None, [])
    data["gate"] = _guarded("gate", missing, lambda: _gate(run))
    data["likely_causes"] = findings.likely_causes(data)
    data["push"] = _push(run, data["gate"])
    data["outcome"] = _outcome(data["push"])
    data["tflite"] = _guarded("tflite", missing, lambda: _tflite(run, data["push"]))
    if nothing_to_do:
        _skipped_by_the_change_check(data, decision)
    data["settings"] = config.to_dict()  # as loaded by the command writing the report (`ftune run`: the run's)
    return collected


class Missing(Exception):
    """A part cannot be built; the message says why (shown in the report)."""


def _guarded(section: str, missing: Dict[str, str], build: Callable[[], Any]) -> Any:
    """build(), or None with the reason recorded: a Missing reason as is, any other error with its type."""
    try:
        return build()
    except Missing as exc:
        missing[section] = str(exc)
    except Exception as exc:  # a damaged artifact must not take the whole report down
        log.warning("report: could not build the %s section", section, exc_info=True)
        lines = str(exc).strip().splitlines()
        missing[section] = f"could not be read: {type(exc).__name__}: {lines[0][:300] if lines else ''}"
    return None


def _require_uri(run: RunView, node: str, key: str) -> str:
    uri = run.uri(node, key)
    if uri is None:
        raise Missing(run.why_missing(node))
    return uri


# --- the change check and the refusal memory --


def _refusal_applies(attempt: Optional[Dict[str, Any]], serving_model_dir: str) -> bool:
    """The change check holds a refusal only while the version it was compared with is served (change_check.py)."""
    if not isinstance(attempt, dict):
        return False
    return attempt.get("served_version", NO_SERVED_VERSION) == latest_served(serving_model_dir)[0]


def _skipped_by_the_change_check(data: Dict[str, Any], decision: Dict[str, Any]) -> None:
    """A run whose change check found nothing to do: every part after it was skipped, for the check's reason (not
    "the run stopped before it"), and the run ended as `ftune run` says (no_new_data or still_refused, exit 0)."""
    from pipeline import outcome

    why = f"skipped: the change check found nothing to train ({decision['reason']})"
    for part in data["missing"]:
        if part not in ("change_check", "last_refused"):
            data["missing"][part] = why
    data["push"] = {"pushed": None, "destination": None, "version": None, "reason": why}
    status = outcome.STILL_REFUSED if decision["refused"] else outcome.NO_NEW_DATA
    data["outcome"] = outcome.outcome(status, decision["served_version"])


# --- ingestion --


def _label_fixes(fixes: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """What the label fixes applied (components/label_fixes.py), each list trimmed to MAX_QUARANTINE_ROWS."""
    if not fixes:
        return None
    trimmed = {key: list(fixes.get(key) or [])[:MAX_QUARANTINE_ROWS] for key in ("relabelled", "dropped", "kept")}
    return {**fixes, **trimmed}


def _ingestion(run: RunView) -> Dict[str, Any]:
    uri = _require_uri(run, sidecars.EXAMPLE_GEN, "examples")
    path = sidecars.ingest_report_path(uri)
    report = sidecars.read_ingest_report(uri)
    if report is None:
        raise Missing(f"no ingest report at {path}")
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
        "label_fixes": _label_fixes(report.get("label_fixes")),
        "examples_uri": uri,
        "report_path": path,
    }


# --- training --


def _training(run: RunView) -> Dict[str, Any]:
    uri = _require_uri(run, sidecars.TRAINER, "model")
    path = sidecars.history_path(uri)
    history = sidecars.read_history(uri)
    if history is None:
        raise Missing(f"no training history at {path}")
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
        "profile": history.get("profile"),
        "curves": {**curves, "phase": phases},
        "model_uri": uri,
        "history_path": path,
    }


# --- the eval split's predictions (what TFMA does not give: see predictions.py) --


def _predictions(run: RunView, ingestion: Optional[Dict[str, Any]], keep_images: bool):
    """(numbers, grid entries, (mistakes, unsure)): from the Trainer's record of the trained model's probabilities
    for every eval image (eval_predictions.json), with the images shown read from the eval split's examples."""
    model_uri = _require_uri(run, sidecars.TRAINER, "model")
    recorded = sidecars.read_eval_predictions(model_uri)
    if recorded is None:
        raise Missing(
            f"no {sidecars.EVAL_PREDICTIONS_FILE} in {model_uri} (trained by an older ftune, or the examples carry "
            "no file names)"
        )
    examples_uri = _require_uri(run, sidecars.EXAMPLE_GEN, "examples")
    split_size = (ingestion or {}).get("accepted_per_split", {}).get("eval")
    numbers, grid, ranked = eval_predictions.tally_eval_predictions(
        recorded, keep_images, lambda names: findings.split_images(examples_uri, "eval", names), split_size
    )
    numbers["path"] = sidecars.eval_predictions_path(model_uri)
    return numbers, grid, ranked


# --- the gate --


def _gate(run: RunView) -> Dict[str, Any]:
    """The gate as the Evaluator applied it and what it found (its gate.json), in the report's terms."""
    blessing = run.artifact(sidecars.EVALUATOR, "blessing")
    uri = _require_uri(run, sidecars.EVALUATOR, "evaluation")
    summary = sidecars.read_gate(uri)
    if summary is None:
        raise Missing(f"no {sidecars.GATE_FILE} in {uri} (evaluated by an older ftune)")
    baseline = run.artifact(sidecars.SERVED_MODEL_BASELINE, "baseline_model")
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


# --- the push and how the run ended --


def _push(run: RunView, gate: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Always a dict: pushed True/False/None (None: the Pusher did not run), destination, version, reason."""
    artifact = run.artifact(sidecars.PUSHER, "pushed_model")
    if artifact is None:
        return {"pushed": None, "destination": None, "version": None, "reason": run.why_missing(sidecars.PUSHER)}
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


# --- TFLite --


def _tflite(run: RunView, push: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The Trainer's TFLite record (serving/tflite.py) plus where the pushed copy is; None when push.tflite=off."""
    uri = run.uri(sidecars.TRAINER, "model")
    if uri is None:
        return None  # the training section says why
    record = sidecars.read_tflite_record(sidecars.serving_model_dir(uri))
    if record is None:
        return None
    pushed_path = None
    if push.get("pushed") and push.get("destination") and record.get("accepted"):
        from serving.tflite import TFLITE_FILE

        candidate = os.path.join(push["destination"], TFLITE_FILE)
        pushed_path = candidate if os.path.isfile(candidate) else None
    return {**record, "pushed_path": pushed_path}

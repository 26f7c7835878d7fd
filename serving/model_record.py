"""The record every pushed version carries in its `assets.extra/`: its schema and content.

The file itself (name, reader, writer) is serving/sidecars.py's: `read_model_record`, `write_model_record`.

It says where the version came from (input folders and their fingerprint, images per class, settings, metrics,
the baseline it was compared with, code version, pipeline run, times), so a version can be listed, compared,
rolled back to, or recognised as "already trained on exactly this data" without MLMD.

The record's keys (all JSON; a key a writer cannot know is present with a null value):

    version          int: the version folder's number
    kind             "trained" | "rollback"
    rollback_of      int | null: for kind "rollback", the version whose model this one re-publishes
    pushed_at        ISO-8601 UTC time of the push
    started_at, ended_at   ISO-8601 UTC times of the pipeline run that produced the model
    pipeline_run     the run's id (MLMD run context / KFP run id)
    code_version     ftune's version (and git commit when known)
    labels           [class name, ...] in label-id order
    data             {"roots": [...], "spans": [...], "fingerprint": files_fingerprint(...),
                      "images_per_class": {"train": {class: n}, "eval": {class: n}}}
    settings         the full PipelineConfig as a dict (configs.PipelineConfig.to_dict())
    metrics          {"accuracy": x, "macro_recall": x, "recall_per_class": {class: x}, "examples_per_class": {..}}
    gate             {"baseline_version": int | null, "blessed": bool, "decision": "...",
                      "change_thresholds_used": bool,
                      "baseline_note": "..." (why no comparison with the served model; "" when compared),
                      "thresholds": {"accuracy_floor", "max_accuracy_drop", "class_recall_floor",
                                     "max_class_recall_drop", "min_class_examples"} (drops null: not applied),
                      "checked": ["what the gate checked", ...]}
    warm_start       {"from_version": int | null, "reason": "..."}

Keys added by issue 11 (all optional for readers):
    metrics.baseline_accuracy, metrics.baseline_macro_recall   the served model's numbers it was compared with
                                                               (null when not compared)
    metrics.gated_classes  [class, ...]: the classes whose recall the gate checked (enough eval images)
    gate.baseline_note, gate.thresholds, gate.checked          as above

Keys added by issue 35 (optional for readers):
    weights_digest   "sha256:<hex>" of the trainer.weights file the change check compared (components/
                     change_check.py; trainer/weights_digest.py), null for "imagenet", "none" or a URI. A record
                     without it is compared by hashing the file at its recorded path as it is now

Keys added by issue 34 (optional for readers):
    data.label_fixes {"path": "...", "sha256": "sha256:<hex>", "counts": {"relabelled": n, "dropped": n, "kept": n}}:
                     the label fixes file ingestion applied (components/label_fixes.py); null without one. Its
                     hash is also in data.fingerprint

Keys added by issue 33 (optional for readers):
    profile          {"setting": "auto" | "fast" | "best", "resolved": "fast" | "best", "why": "..."}: the training
                     recipe (trainer/profiles.py) and why it was chosen; null for versions trained before it

Writers: the Pusher (components/atomic_pusher.py, kind "trained"), `ftune rollback` (kind "rollback": a copy of
the rolled-back version's record with version, kind, rollback_of and pushed_at replaced).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess
from typing import Any, Dict, Iterable, Optional, Tuple

RECORD_KEYS = (
    "version",
    "kind",
    "rollback_of",
    "pushed_at",
    "started_at",
    "ended_at",
    "pipeline_run",
    "code_version",
    "training_code_version",
    "weights_digest",
    "labels",
    "data",
    "settings",
    "metrics",
    "gate",
    "warm_start",
    "profile",
)


def files_fingerprint(entries: Iterable[Tuple[str, int, int]]) -> str:
    """A fingerprint of input files from (relative path, size in bytes, modification time in ns) triples.

    Order-independent; any file added, removed, renamed, resized or touched changes it. Contents are not read:
    hashing every image of a large data set on each scheduled run would cost as much as ingesting it.
    """
    digest = hashlib.sha256()
    for path, size, mtime_ns in sorted(entries):
        digest.update(f"{path}\0{int(size)}\0{int(mtime_ns)}\n".encode())
    return "sha256:" + digest.hexdigest()


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def code_version() -> str:
    """`ftune <version>`, plus ` (git <commit>)` when the code runs from a git checkout."""
    try:
        from importlib.metadata import version

        text = f"ftune {version('ftune')}"
    except Exception:  # not installed (PYTHONPATH checkout)
        text = "ftune (not installed)"
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{text} (git {commit})" if commit else text


def rollback_record(source: Optional[Dict[str, Any]], source_version: int) -> Dict[str, Any]:
    """The record of a version that re-publishes `source_version`: its record (data, settings, metrics, labels
    of the model it holds), marked as a rollback. The "version" key is set when it is published."""
    record = dict(source or {})
    for key in RECORD_KEYS:
        record.setdefault(key, None)
    record.update(kind="rollback", rollback_of=source_version, pushed_at=utc_now())
    return record

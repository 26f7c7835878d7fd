"""`ftune versions` and `ftune rollback`: the serving folder's versions with their records, listed or re-published.

Both read the records with Python's own file functions and copy a local version without TFX (serving/sidecars.py,
serving/model_versions.py), so neither loads TensorFlow for a local serving folder. Errors are CommandErrors with
the exit code of pipeline/outcome.py: no serving folder or a record that is not JSON (3), a wrong --to (2).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from pipeline import outcome
from pipeline.configs import PipelineConfig
from pipeline.outcome import CommandError
from serving import sidecars


def list_versions(config: PipelineConfig, as_json: bool) -> int:
    from serving.model_versions import served_versions

    base = serving_folder(config)
    versions = served_versions(base)
    listed = [
        {
            "version": v,
            "path": os.path.join(base, str(v)),
            "served": v == versions[-1],
            "record": version_record(os.path.join(base, str(v))),
        }
        for v in versions
    ]
    if as_json:
        print(json.dumps({"serving_model_dir": base, "versions": listed}, indent=2))
        return outcome.EXIT_OK
    if not listed:
        print(f"[ftune] no versions under {base}")
        return outcome.EXIT_OK
    print(versions_table(listed))
    return outcome.EXIT_OK


def versions_table(listed: List[dict]) -> str:
    """One line per version: version, push time, accuracy, macro recall, data fingerprint, origin, served."""

    def num(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    rows = [("version", "pushed (UTC)", "accuracy", "macro recall", "data", "from", "served")]
    for item in listed:
        record = item["record"] or {}
        metrics = record.get("metrics") or {}
        data = record.get("data") or {}
        fingerprint = (data.get("fingerprint") or "-").replace("sha256:", "")[:12]
        if record.get("kind") == "rollback":
            origin = f"rollback of {record.get('rollback_of')}"
        elif record:
            origin = ", ".join(data.get("roots") or []) or "-"
        else:
            origin = "(no record)"
        rows.append(
            (
                str(item["version"]),
                (record.get("pushed_at") or "-").replace("+00:00", ""),
                num(metrics.get("accuracy")),
                num(metrics.get("macro_recall")),
                fingerprint,
                origin,
                "<- TF Serving serves this" if item["served"] else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def roll_back(config: PipelineConfig, to: Optional[int]) -> int:
    """Re-publishes version `to` (default: the one below the served one) as the new highest version."""
    from serving.model_record import rollback_record
    from serving.model_versions import republish, served_versions

    base = serving_folder(config)
    versions = served_versions(base)
    if to is None and len(versions) < 2:
        raise RollbackError(f"nothing to roll back to: {base} holds {len(versions)} version(s)")
    target = to if to is not None else versions[-2]
    if target not in versions:
        raise RollbackError(f"--to {target}: no such version under {base} (versions: {versions or 'none'})")
    if target == versions[-1]:
        print(f"[ftune] version {target} is already the served (highest) version; nothing to do")
        return outcome.EXIT_OK
    source = os.path.join(base, str(target))
    version = republish(base, target, rollback_record(version_record(source), target))
    print(f"[ftune] rolled back: version {version} ({os.path.join(base, str(version))}) is version {target}'s model")
    return outcome.EXIT_OK


class RollbackError(CommandError):
    """`ftune rollback` was asked for a version the serving folder cannot give: a wrong --to (exit 2)."""

    def __init__(self, message: str):
        super().__init__(message, outcome.EXIT_INVALID_SETTINGS)


def serving_folder(config: PipelineConfig) -> str:
    """The serving folder both commands work on; an error when it does not exist (a typo in push.serving_dir or
    --pipeline-root would otherwise look like "nothing pushed yet")."""
    from serving.model_versions import serving_folder_exists

    base = config.serving_model_dir
    if not serving_folder_exists(base):
        raise CommandError(
            f"no serving folder {base}: nothing was pushed there. Check --pipeline-root, push.serving_dir and "
            "push.model_name",
            outcome.EXIT_UNUSABLE_INPUT,
        )
    return base


def version_record(version_dir: str) -> Optional[Dict[str, Any]]:
    """The version's record (None when it has none); an error naming the file when it is not a JSON object."""
    path = sidecars.model_record_path(version_dir)
    try:
        record = sidecars.read_model_record(version_dir)
    except ValueError as exc:  # json.JSONDecodeError
        raise _bad_record(path, f"not JSON: {exc}") from exc
    if record is not None and not isinstance(record, dict):
        raise _bad_record(path, f"JSON {type(record).__name__}, not an object")
    return record


def _bad_record(path: str, what: str) -> CommandError:
    return CommandError(
        f"the version record {path} is unreadable ({what}): restore it from a backup, or delete the file (the "
        "version then shows as having no record)",
        outcome.EXIT_UNUSABLE_INPUT,
    )

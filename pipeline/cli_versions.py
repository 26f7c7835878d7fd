"""`ftune versions` and `ftune rollback`: the serving folder's versions with their records, listed or re-published.

Both read the records with Python's own file functions and copy a local version without TFX (serving/sidecars.py,
serving/model_versions.py), so neither loads TensorFlow for a local serving folder. Errors are CommandErrors with
the exit code of pipeline/outcome.py: no serving folder or a record that is not JSON (3), a wrong --to (2).

`versions` also shows the last attempt the gate refused (`refused_attempt.json` beside the versions, written by the
Pusher; keys: components/change_check.py): while the version it was compared with is still the served one, the
change check does not retrain the same data and settings, so an operator needs to see why nothing trains.
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
    from serving.model_versions import NO_SERVED_VERSION, partial_versions, refusal_applies, served_versions

    base = serving_folder(config)
    versions = served_versions(base)
    partial = partial_versions(base)
    served_now = versions[-1] if versions else NO_SERVED_VERSION
    refused = last_refused(base)
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
        data = {
            "serving_model_dir": base,
            "versions": listed,
            "partial_versions": partial,
            "last_refused": refused,
            "last_refused_applies": refusal_applies(refused, served_now),
        }
        print(json.dumps(data, indent=2))
        return outcome.EXIT_OK
    print(versions_table(listed) if listed else f"[ftune] no versions under {base}")
    for line in fixes_lines(listed):
        print(line)
    if partial:
        print(
            f"[ftune] incomplete version folder(s) {', '.join(map(str, partial))}: no saved_model.pb (a push that "
            "was interrupted); TF Serving cannot load them, the next push goes above them"
        )
    # A refusal that no longer applies (a push or a rollback since) is history: --json still has it.
    if refusal_applies(refused, served_now):
        print(refusal_lines(refused))
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


def fixes_lines(listed: List[dict]) -> List[str]:
    """`version 2: label fixes 0a1b2c3d4e5f (46 relabelled, 1 dropped, 0 kept) from <file>`: one line per version
    trained with a person's label fixes (the record's data.label_fixes, components/label_fixes.py)."""
    from components.label_fixes import counts_text

    lines = []
    for item in listed:
        fixes = ((item["record"] or {}).get("data") or {}).get("label_fixes")
        if not fixes:
            continue
        text = counts_text(fixes.get("counts"))
        digest = (fixes.get("sha256") or "-").replace("sha256:", "")[:12]
        lines.append(f"version {item['version']}: label fixes {digest} ({text}) from {fixes.get('path') or '-'}")
    return lines


def last_refused(serving_model_dir: str) -> Optional[Dict[str, Any]]:
    """The last refused attempt (None when the gate never refused one); an error naming the file when it is not a
    JSON object."""
    path = sidecars.refused_attempt_path(serving_model_dir)
    return _json_object(path, lambda: sidecars.read_refused_attempt(serving_model_dir), _bad_refusal)


def refusal_lines(attempt: Dict[str, Any]) -> str:
    """`last refused: <time> (run <id>) against version N: <first failed check> (and K more)`, and what follows."""
    from serving.model_versions import NO_SERVED_VERSION

    served = attempt.get("served_version", NO_SERVED_VERSION)
    against = "nothing served" if served == NO_SERVED_VERSION else f"version {served}"
    run = f" (run {attempt['pipeline_run']})" if attempt.get("pipeline_run") else ""
    checks = [str(check) for check in attempt.get("failed_checks") or []] or ["the gate refused the model"]
    more = f" (and {len(checks) - 1} more)" if len(checks) > 1 else ""
    stays = "nothing is served" if served == NO_SERVED_VERSION else f"version {served} stays served"
    return (
        f"last refused: {attempt.get('time') or 'time unknown'}{run} against {against}: {checks[0]}{more}\n"
        f"  the same data and settings are not trained again while {stays}; `ftune run --force` (on Kubeflow the "
        "run parameter force=1) trains anyway"
    )


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
    return _json_object(path, lambda: sidecars.read_model_record(version_dir), _bad_record)


def _json_object(path: str, read, bad) -> Optional[Dict[str, Any]]:
    """read()'s JSON object, None when the file is absent; `bad(path, what)` names the file when it is no object."""
    try:
        value = read()
    except ValueError as exc:  # json.JSONDecodeError
        raise bad(path, f"not JSON: {exc}") from exc
    if value is not None and not isinstance(value, dict):
        raise bad(path, f"JSON {type(value).__name__}, not an object")
    return value


def _bad_refusal(path: str, what: str) -> CommandError:
    return CommandError(
        f"the refused-attempt record {path} is unreadable ({what}): delete the file (the next run then trains the "
        "data the gate refused once more)",
        outcome.EXIT_UNUSABLE_INPUT,
    )


def _bad_record(path: str, what: str) -> CommandError:
    return CommandError(
        f"the version record {path} is unreadable ({what}): restore it from a backup, or delete the file (the "
        "version then shows as having no record)",
        outcome.EXIT_UNUSABLE_INPUT,
    )

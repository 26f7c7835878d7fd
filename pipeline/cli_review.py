"""`ftune review` and the label fixes' check before a run: a person's decisions on what the data check flagged.

`ftune review` writes the latest Trainer's flagged images (label_issues.json) as review.csv, whose columns make it a
label fixes file as it is (components/label_fixes.py reads it): `action` empty, `class` the suggested class.
`check_label_fixes` runs the same check ImageExampleGen makes, before TensorFlow loads, on a local data root.
Errors are CommandErrors with the exit codes of pipeline/outcome.py.
"""

from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

from pipeline import outcome
from pipeline.configs import PipelineConfig
from pipeline.outcome import CommandError
from serving import sidecars


def check_label_fixes(config: PipelineConfig) -> None:
    """A local data root's label fixes (components/label_fixes.py), checked before the pipeline starts and before
    TensorFlow loads: a bad row is one line naming the file, the row and the problem (exit 3); ImageExampleGen
    checks them again (on Kubeflow it is the only check)."""
    data = config.data
    if not data.data_root or "://" in data.data_root:
        return
    from components.image_listing import check_input_and_fixes, make_input_config, resolve_split_mode, select_spans

    spans = select_spans(data.data_root, data.spans)
    split_mode = resolve_split_mode(data.data_root, data.split_mode, data.train_dir, data.eval_dir, spans)
    check_input_and_fixes(
        data.data_root, make_input_config(split_mode, data.train_dir, data.eval_dir), spans, data.label_fixes
    )


def write_review(config: PipelineConfig, out: Optional[str], as_json: bool) -> int:
    """`ftune review`: the latest run's flagged images as a review CSV that is also a fixes file."""
    from pipeline.reporting.run_records import latest_artifact_uri

    model_uri = latest_artifact_uri(config, sidecars.TRAINER, "model") if os.path.exists(config.metadata_path) else None
    issues = sidecars.read_label_issues(model_uri) if model_uri else None
    if not issues or "flagged" not in issues:
        why = (
            f"the latest Trainer output {model_uri} has no check of its training data"
            + (f" ({issues['error']})" if issues and issues.get("error") else " (trainer.label_issues=false?)")
            if model_uri
            else f"no Trainer ran under {config.pipeline_root}"
        )
        raise CommandError(
            f"nothing to review: {why}. Run `ftune run` first, or pass the --pipeline-root of a run",
            outcome.EXIT_UNUSABLE_INPUT,
        )
    rows = review_rows(issues)
    path = os.path.abspath(out) if out else sidecars.review_path(config.local_root)
    sidecars.write_review(path, rows)
    if as_json:
        print(json.dumps({"path": path, "flagged": len(rows), "rows": rows}, indent=2))
    print(
        f"[ftune] review: {len(rows)} flagged image(s) of {issues.get('images', '?')} written to {path}: set "
        "`action` to relabel (to `class`), drop or keep on the rows you decided, then save it as "
        f"<data_root>/{sidecars.LABEL_FIXES_FILE} (or name it with --set data.label_fixes=FILE) and run again",
        file=sys.stderr if as_json else sys.stdout,
        flush=True,
    )
    return 0


def review_rows(issues: dict) -> List[dict]:
    """review.csv's rows (sidecars.REVIEW_COLUMNS) from label_issues.json's flagged images: `action` empty,
    `class` the suggested class, so that accepting a suggestion is writing `relabel`."""
    from components.image_listing import SPAN_FOLDER

    rows = []
    for entry in issues.get("flagged") or []:
        first = entry["file_name"].split("/", 1)[0]
        rows.append(
            {
                "file": entry["file_name"],
                "action": "",
                "class": entry["suggested"],
                "span": first if SPAN_FOLDER.match(first) else "",
                "given_class": entry["given"],
                "suggested_class": entry["suggested"],
                "probability": entry.get("suggested_probability", ""),
            }
        )
    return rows

"""The run report: one HTML page with figures, built from the artifacts of the latest pipeline run.

    write_report(config, out_dir=None) -> path of index.html   (default out_dir: <pipeline_root>/report/, or
    <state_dir>/report/ when the pipeline root is a bucket URI)
    build_report(config, out_dir=None) -> (path, data)          (the same, with the numbers it was built from)
    report_data(config) -> dict                                (the numbers behind it; JSON-serialisable)
    summary_lines(data) -> [str]                               (a few lines for the CLI's end-of-run summary)

The work is split by job: collect.py gathers the numbers (ingest report, training history, the Evaluator's gate,
the push, TFLite) and the Trainer's predictions for the eval split, for what TFMA does not give (predictions.py);
figures.py draws the PNGs;
page.py renders templates/report.html.j2. What the page shows:
  * ingestion: files scanned / accepted per split and class / quarantined, and the quarantine list (path, reason)
  * training: eval accuracy after each phase, wall time, learning curves over both phases
  * evaluation: confusion matrix and eval image grid from the trained model's predictions for every eval image
    (the Trainer's eval_predictions.json), per-class precision/F1 on them with the gate's recall, most confident
    mistakes
  * the training data: suspected label errors (a grid of the flagged images), what changed since the served
    version per span (images per class, class distances, image formats and sizes)
  * the gate: blessed or not, what it checked, recall per class and macro recall, the failed thresholds with both
    numbers, the candidate against the served model; what the Pusher did and how the run ended (`outcome`).
Any part can be missing; the report says what and why, never crashes.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

from pipeline.configs import PipelineConfig
from pipeline.reporting import findings
from pipeline.reporting.collect import collect
from pipeline.reporting.figures import FIGURES, FINDINGS_FIGURES, RANKED_FIGURES, UNSURE_PNG, write_figures
from pipeline.reporting.page import fmt, render_html
from pipeline.reporting.predictions import RANKED_IMAGES

# Names callers and tests read from here (the figures' and the ranked images' own modules define them).
__all__ = [
    "DATA_FILE",
    "FIGURES",
    "INDEX_FILE",
    "RANKED_FIGURES",
    "RANKED_IMAGES",
    "REPORT_DIR",
    "UNSURE_PNG",
    "build_report",
    "report_data",
    "summary_lines",
    "write_report",
]

REPORT_DIR = "report"
INDEX_FILE = "index.html"
DATA_FILE = "report_data.json"


def report_data(config: PipelineConfig, with_predictions: bool = True) -> Dict[str, Any]:
    """The report's numbers (JSON-serialisable). Sections that could not be built are None, with the reason under
    `missing[section]`. `with_predictions=False` skips loading the model (no confusion matrix), for speed."""
    return collect(config, with_predictions=with_predictions, keep_images=False).data


def write_report(config: PipelineConfig, out_dir: Optional[str] = None) -> str:
    """Writes index.html, the PNG figures and report_data.json to out_dir (default <pipeline_root>/report/);
    returns the path of index.html."""
    return build_report(config, out_dir)[0]


def build_report(config: PipelineConfig, out_dir: Optional[str] = None) -> Tuple[str, Dict[str, Any]]:
    """write_report, also returning the data it wrote (report_data.json), so that a caller needs no second pass."""
    out_dir = out_dir or os.path.join(config.local_root, REPORT_DIR)
    os.makedirs(out_dir, exist_ok=True)
    # Never leave a previous report's figure beside this page.
    for name in FIGURES + RANKED_FIGURES + FINDINGS_FIGURES + (DATA_FILE,):
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    collected = collect(config, with_predictions=True, keep_images=True)
    figures = write_figures(collected, out_dir)
    with open(os.path.join(out_dir, DATA_FILE), "w") as f:
        json.dump(collected.data, f, indent=2)
    path = os.path.join(out_dir, INDEX_FILE)
    _write_atomically(path, render_html(collected.data, figures))
    return path, collected.data


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# --- the summary for the CLI ------------------------------------------------------------------------------------


def summary_lines(data: Dict[str, Any]) -> List[str]:
    """A few lines for the end of a run: accepted/quarantined, accuracy per phase, the check of the training data
    (findings.py), gate decision (after a refusal, its likely causes), push."""
    missing = data.get("missing", {})
    lines = []
    ingestion = data.get("ingestion")
    if ingestion:
        splits = ", ".join(f"{s} {n}" for s, n in ingestion["accepted_per_split"].items())
        lines.append(
            f"ingestion: {ingestion['accepted']} accepted ({splits}), {ingestion['quarantined_count']} quarantined"
            + (f"; spans {', '.join(ingestion['spans'])}" if ingestion.get("spans") else "")
        )
        fixes = ingestion.get("label_fixes")
        if fixes:
            from components.label_fixes import counts_text

            lines.append(f"label fixes: {counts_text(fixes.get('counts'))} ({fixes.get('path')})")
    else:
        lines.append(f"ingestion: {missing.get('ingestion', 'missing')}")
    training = data.get("training")
    if training:
        acc = training["final_accuracy"]
        lines.append(
            f"training: eval accuracy after phase 1 {fmt(acc.get('phase1'))}, after phase 2 "
            f"{fmt(acc.get('phase2'))} ({fmt(training['wall_seconds'].get('total'), 1)} s)"
        )
        profile = training.get("profile")
        if profile:
            lines.append(f"profile: {profile['resolved']} (trainer.profile={profile['setting']}: {profile['why']})")
        if training.get("warm_start"):
            lines.append(f"warm start: {training['warm_start']['reason']}")
    else:
        lines.append(f"training: {missing.get('training', 'missing')}")
    lines += findings.summary_lines(data)
    gate = data.get("gate")
    lines.append(f"gate: {gate['decision']}" if gate else f"gate: {missing.get('gate', 'missing')}")
    causes = data.get("likely_causes") or []
    if causes:
        lines.append(f"likely cause{'s' if len(causes) > 1 else ''}: " + "; ".join(causes))
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
            f"tflite ({lite['mode']}): {lite['size_bytes'] / 1024:.0f} KB, accuracy {fmt(lite['tflite_accuracy'])} "
            f"vs SavedModel {fmt(lite['saved_model_accuracy'])}; {'accepted' if lite['accepted'] else 'rejected'}, "
            f"{where}"
        )
    return lines

"""The report page: templates/report.html.j2 rendered with Jinja2 from the collected numbers.

    render_html(data, figures) -> str   (data: collect.Collected.data; figures: figures.write_figures's status)
    fmt(value, digits=3) -> str         (how a number is shown, on the page and in the summary lines)

Autoescape is on: every value the template prints is HTML-escaped (file paths, class names and reasons come from
the user's data). This module only adds what a template should not compute: the per-class table (which number
comes from where) and the flattened settings.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Tuple

import jinja2

from pipeline.reporting import figures as figure_files

TEMPLATE = "report.html.j2"
_TEMPLATES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt key fails the render (the report says why), not blank
        # None prints as nothing (a setting or a path that is not set), as the page always showed it.
        finalize=lambda value: "" if value is None else value,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters.update(
        fmt=fmt,
        pct=lambda value: f"{value:.1%}",
        kb=lambda size_bytes: f"{size_bytes / 1024:.0f} KB",
        signed=lambda value: f"{value:+.3f}",
    )
    return env


def render_html(data: Dict[str, Any], figures: Dict[str, str]) -> str:
    """The page, from the collected data and the figure status (file -> "" if drawn, "none", else why not)."""
    ingestion = data.get("ingestion") or {}
    context = {
        "data": data,
        "figures": figures,
        "per_class": per_class_table(data),
        "accepted_per_split": ", ".join(f"{s} {n}" for s, n in ingestion.get("accepted_per_split", {}).items()),
        "tflite_mode": ((data.get("settings") or {}).get("push") or {}).get("tflite", "off"),
        "settings_rows": settings_rows(data.get("settings") or {}),
        "LEARNING_CURVES_PNG": figure_files.LEARNING_CURVES_PNG,
        "CONFUSION_MATRIX_PNG": figure_files.CONFUSION_MATRIX_PNG,
        "EVAL_GRID_PNG": figure_files.EVAL_GRID_PNG,
        "MISTAKES_PNG": figure_files.MISTAKES_PNG,
        "UNSURE_PNG": figure_files.UNSURE_PNG,
    }
    return _environment().get_template(TEMPLATE).render(context)


def per_class_table(data: Dict[str, Any]) -> Dict[str, Any]:
    """{"rows": [{name, precision, recall, f1, support}], "macro": {precision, recall, f1}, "recall_from_gate"}.

    Recall is the gated number: the Evaluator's TFMA recall (gate.json, every eval example), so that the page shows
    one recall per class. Precision and F1 are not computed by TFMA (its EvalConfig only has accuracy and the
    example count), so they come from the report's own predictions, those of the grids and the confusion matrix
    (capped at predictions.MAX_PREDICT_EXAMPLES). Only when there is no gate (the Evaluator did not run) is the
    recall the report's own, and the page says so."""
    predictions = data.get("predictions")
    if predictions is None:
        return {"rows": [], "macro": {}, "recall_from_gate": False}
    gate = data.get("gate")
    rows = []
    for name, metrics in predictions["per_class"].items():
        recall = (gate["classes"].get(name) or {}).get("recall") if gate else metrics["recall"]
        rows.append({**metrics, "name": name, "recall": recall})
    macro = dict(predictions["macro"])
    if gate:
        macro["recall"] = gate["macro_recall"]
    return {"rows": rows, "macro": macro, "recall_from_gate": bool(gate)}


def settings_rows(settings: Dict[str, Any]) -> List[Tuple[str, Any]]:
    """(`ftune config` key, value) for every setting: one level of sections ("trainer.image_size"), lists and
    deeper dicts as JSON."""
    rows: List[Tuple[str, Any]] = []

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value and prefix.count(".") < 1:
            for key, sub in value.items():
                flatten(f"{prefix}.{key}" if prefix else key, sub)
        else:
            rows.append((prefix, json.dumps(value) if isinstance(value, (list, dict)) else value))

    flatten("", settings)
    return rows

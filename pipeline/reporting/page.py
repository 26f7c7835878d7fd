"""The report page: templates/report.html.j2 rendered with Jinja2 from the collected numbers.

    render_html(data, figures) -> str   (data: collect.Collected.data; figures: figures.write_figures's status)
    fmt(value, digits=3) -> str         (how a number is shown, on the page and in the summary lines)

Autoescape is on: every value the template prints is HTML-escaped (file paths, class names and reasons come from
the user's data). This module only adds what a template should not compute: the per-class table (which number
comes from where), the flattened settings, and the words and per-span rows of the training data's check.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Tuple

import jinja2

from pipeline.reporting import figures as figure_files
from pipeline.reporting import findings

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
        "findings_text": findings_text(data),
        "span_rows": span_rows(data),
        "LABEL_ISSUES_PNG": figure_files.LABEL_ISSUES_PNG,
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
    example count), so they come from the Trainer's predictions, those of the grids and the confusion matrix.
    Only when there is no gate (the Evaluator did not run) is the recall theirs, and the page says so."""
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


def findings_text(data: Dict[str, Any]) -> Dict[str, Any]:
    """The run summary's sentences on the training data (components/data_findings.py words them), for the page."""
    from components.data_findings import data_changes_text, label_issues_text

    issues = data.get("label_issues")
    return {
        "label_issues": label_issues_text(issues) if issues else "",
        "data_changes": data_changes_text(data.get("data_changes")),
        "image_changes": findings.image_changes(data),
    }


def span_rows(data: Dict[str, Any]) -> List[Dict[str, str]]:
    """One row per span read (the training data as a whole without span folders): training images per class in
    this run and in the served version's data, image formats and sizes, and the class distances of a new span."""
    from components.data_findings import span_label

    changes = data.get("data_changes") or {}
    stats = data.get("images_per_span") or {}
    counts = changes.get("images_per_span") or {}
    served = changes.get("served_images_per_span") or {}
    compared = {entry["span"]: entry for entry in changes.get("compared_spans") or []}
    rows = []
    for span in list(counts) + [s for s in stats if s not in counts]:
        image = stats.get(span)
        rows.append(
            {
                "span": span_label(span),
                "new": ("yes" if span in changes.get("new_spans", []) else "no") if changes.get("compared") else "",
                "images": _per_class(counts.get(span)),
                "served": _per_class(served.get(span)) if changes.get("compared") else "",
                "formats": ", ".join(f"{f} {n}" for f, n in image["formats"].items()) if image else "",
                "sizes": _sizes(image) if image else "",
                "distances": _distances(compared.get(span)),
            }
        )
    return rows


def _per_class(counts: Any) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) if counts else "none"


def _sizes(image: Dict[str, Any]) -> str:
    width, height = image["width"], image["height"]
    return (
        f"{width['median']:.0f}x{height['median']:.0f} px ({width['min']}-{width['max']} x "
        f"{height['min']}-{height['max']}){' (sampled)' if image.get('sampled') else ''}"
    )


def _distances(entry: Any) -> str:
    if not entry:
        return ""
    parts = []
    for name, c in entry["classes"].items():
        if c["distance"] is None:
            parts.append(f"{name}: {c['note'] or 'n/a'}")
            continue
        nearest = c["nearest_served_class"]
        closest = f", closest to '{nearest}'" if nearest and nearest != name else ""
        parts.append(f"{name} {c['distance']:.2f}{closest}{' (different)' if c['different'] else ''}")
    return "; ".join(parts)

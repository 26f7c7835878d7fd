"""Human-readable summaries of a run, built from the artifacts the components wrote."""

from __future__ import annotations

import json
import os
from typing import Optional

from components.image_example_gen import REPORT_FILE


def load_ingest_report(examples_uri: Optional[str]) -> Optional[dict]:
    if not examples_uri:
        return None
    path = os.path.join(examples_uri, REPORT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def ingest_summary(examples_uri: Optional[str]) -> str:
    report = load_ingest_report(examples_uri)
    if report is None:
        return "ingestion: no report found"
    per_split = ", ".join(f"{split} {sum(c.values())}" for split, c in sorted(report["accepted_per_split"].items()))
    lines = [
        f"ingestion: {report['scanned']} files scanned, {report['accepted']} accepted ({per_split}), "
        f"{report['quarantined_count']} quarantined; classes: {', '.join(report['class_names'])}",
    ]
    for record in report["quarantined"][:10]:
        lines.append(f"  quarantined {record['path']}: {record['reason']}")
    if report["quarantined_count"] > 10:
        lines.append(f"  ... and {report['quarantined_count'] - 10} more")
    lines.append(f"  report: {os.path.join(examples_uri, REPORT_FILE)}")
    return "\n".join(lines)


def run_summary_data(config, result: dict, timings: dict) -> dict:
    """The facts of the end-of-run summary as JSON-serialisable data (what `ftune run --json` prints): the
    report's numbers (ingestion, training, gate, push, TFLite; `missing` says why a part is absent), per-component
    times, the pipeline's wall time, the data root and where the HTML report is (written here)."""
    from pipeline.reporting.report import report_data, write_report

    report_path = write_report(config)
    data = report_data(config, with_predictions=False)
    data.update(
        components_time=timings,
        wall_s=round(result["wall_s"], 1),
        data_root=result.get("data_root"),
        split_mode=result.get("split_mode"),
        report=report_path,
    )
    return data


def run_summary(config, result: dict, timings: dict, data: Optional[dict] = None) -> str:
    """The end-of-run summary: ingestion, accuracy per phase, gate decision with its numbers, push result,
    per-component times, and where the HTML report is. `data`: run_summary_data's result when already built."""
    from pipeline.reporting.report import summary_lines

    data = data if data is not None else run_summary_data(config, result, timings)
    lines = ["", "=" * 72, "run summary", "=" * 72]
    lines += summary_lines(data)
    lines.append(
        "components: "
        + ", ".join(
            f"{node} {t['seconds']:.0f}s{'' if t['state'] == 'complete' else ' (' + t['state'] + ')'}"
            for node, t in timings.items()
        )
    )
    lines.append(f"pipeline wall time: {result['wall_s']:.0f} s")
    lines.append(f"report: {data['report']}")
    return "\n".join(lines)

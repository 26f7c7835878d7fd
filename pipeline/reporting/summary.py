"""Human-readable summaries of a run, built from the artifacts the components wrote."""

from __future__ import annotations

from typing import Optional

from serving import sidecars


def ingest_summary(examples_uri: Optional[str]) -> str:
    report = sidecars.read_ingest_report(examples_uri)
    if report is None:
        return "ingestion: no report found"
    per_split = ", ".join(f"{split} {sum(c.values())}" for split, c in sorted(report["accepted_per_split"].items()))
    lines = [
        f"ingestion: {report['scanned']} files scanned, {report['accepted']} accepted ({per_split}), "
        f"{report['quarantined_count']} quarantined; classes: {', '.join(report['class_names'])}",
    ]
    fixes = report.get("label_fixes")
    if fixes:
        from components.label_fixes import counts_text

        lines.append(f"  label fixes: {counts_text(fixes.get('counts'))} ({fixes.get('path')})")
    for record in report["quarantined"][:10]:
        lines.append(f"  quarantined {record['path']}: {record['reason']}")
    if report["quarantined_count"] > 10:
        lines.append(f"  ... and {report['quarantined_count'] - 10} more")
    lines.append(f"  report: {sidecars.ingest_report_path(examples_uri)}")
    return "\n".join(lines)


def run_summary_data(config, result: dict, timings: dict) -> dict:
    """The facts of the end-of-run summary as JSON-serialisable data (what `ftune run --json` prints): the
    report's numbers (ingestion, training, gate, push, TFLite; `missing` says why a part is absent), per-component
    times, the pipeline's wall time, the data root and where the HTML report is (written here).

    The run is collected once, by the report; its own predictions (confusion matrix, ranked images) stay in the
    report's report_data.json and are left out here."""
    from pipeline.reporting.report import build_report

    report_path, report = build_report(config)
    data = {key: value for key, value in report.items() if key != "predictions"}
    data["missing"] = {part: why for part, why in report["missing"].items() if part != "predictions"}
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

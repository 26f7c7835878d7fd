"""What the benchmarks share: measuring a process tree, the machine and versions, the headline rule, metrics.

The headline rule: a benchmark's default results file is what the README quotes, so it is written only by runs
with the defaults a user gets (`ftune run` with no `--set`); a run with overrides must write elsewhere, and
every results file records its overrides (`overrides`, `defaults`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Sequence

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def check_headline_overrides(overrides: Sequence[str], output: str, headline_output: str) -> None:
    """Refuses to write the headline results file from a run with overrides."""
    if overrides and os.path.abspath(output) == os.path.abspath(headline_output):
        raise SystemExit(
            f"{headline_output} is the headline result and holds runs with the default settings only; "
            f"with --set {' --set '.join(overrides)} pass --output OTHER.json"
        )


def add_settings_option(parser: argparse.ArgumentParser) -> None:
    """`--set KEY=VALUE` (repeatable) into args.overrides: pipeline settings that make a run not the headline."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pipeline setting (repeatable); with any, --output must name another file than the headline JSON",
    )


def write_results(path: str, result: Dict[str, Any], overrides: Sequence[str], **inputs: Any) -> None:
    """Writes `result` as JSON with what makes it reproducible: the overrides (and whether it ran with the
    defaults), the inputs named, the machine, the versions, the git commit and the date."""
    result.update(inputs)
    result.update(
        overrides=list(overrides),
        defaults=not overrides,
        machine=machine(),
        versions=versions(),
        git_commit=git_commit(),
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)


def run_measured(cmd: List[str], log_path: str) -> Dict[str, float]:
    """Runs cmd, returns {'wall_s', 'peak_rss_mb'} (peak of the summed RSS over the process tree)."""
    peak = [0]
    with open(log_path, "w") as log:
        started = time.time()
        process = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample():
            root = psutil.Process(process.pid)
            while not done.is_set():
                try:
                    tree = [root] + root.children(recursive=True)
                    peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()))
                except psutil.Error:
                    pass
                done.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        done.set()
        sampler.join()
        wall = time.time() - started
    if code != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed with exit code {code}; see {log_path}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(peak[0] / 2**20)}


def ftune_run(name: str, data: str, root: str, weights: str, settings: Sequence[str], work: str) -> Dict[str, float]:
    """`ftune run` on data with pipeline root `root`, settings as `--set`; measured, logged to work/<name>.log."""
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--data-root", data, "--pipeline-root", root]
    cmd += ["--weights", weights]
    for item in settings:
        cmd += ["--set", item]
    print(f"[bench] {name}: {' '.join(cmd)}", flush=True)
    return run_measured(cmd, os.path.join(work, f"{name}.log"))


def machine() -> Dict[str, object]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": "none",
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> Dict[str, str]:
    from importlib import metadata

    names = ["tfx", "tensorflow", "keras", "tensorflow-transform", "tensorflow-model-analysis", "apache-beam"]
    return {name: metadata.version(name) for name in names}


def git_commit() -> str:
    try:
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=REPO, text=True).strip()
        dirty = subprocess.check_output(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, text=True
        ).strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def classification_metrics(matrix: List[List[int]], class_names: List[str]) -> Dict[str, Any]:
    """Accuracy, macro-F1 and per-class recall/precision/F1 from a confusion matrix (rows: true class), rounded for
    the results file. The per-class numbers are the report's (pipeline/reporting/predictions.py): a class never
    predicted has precision None, and the macro average is over the classes with eval images."""
    from pipeline.reporting.predictions import per_class_metrics

    n = len(matrix)
    total = sum(map(sum, matrix))
    metrics = per_class_metrics(matrix, class_names)
    per_class = {name: {key: _rounded(value) for key, value in m.items()} for name, m in metrics["per_class"].items()}
    return {
        "accuracy": round(sum(matrix[i][i] for i in range(n)) / total, 4) if total else None,
        "macro_f1": _rounded(metrics["macro"]["f1"]),
        "per_class": per_class,
        "smallest_recall": _smallest_recall(per_class),
    }


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _smallest_recall(per_class: Dict[str, Dict[str, Any]]) -> Any:
    measured = {name: m["recall"] for name, m in per_class.items() if m["recall"] is not None}
    if not measured:
        return None
    name = min(measured, key=measured.get)
    return {"class": name, "recall": measured[name]}

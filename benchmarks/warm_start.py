"""Benchmark: warm start from the served model vs. a cold start, on cats vs dogs split into two spans.

    .venv/bin/python benchmarks/warm_start.py [--data DIR] [--weights FILE] [--output JSON] [--set KEY=VALUE]

The pre-split folder is laid out as two spans of symlinks (no copies): span-1 holds the first half of each class
of train/ and of validation/ (sorted file names), span-2 the second half. With every setting at its default
(data.spans=all, trainer.warm_start=auto):

1. `ftune run` with only span-1 present: cold start (nothing served), version 1;
2. span-2 added, the same command: warm start from version 1 (warm_phase1_epochs + warm_phase2_epochs);
3. spans 1+2 in a fresh pipeline root and serving folder: cold start (phase1_epochs + phase2_epochs).

Runs 2 and 3 read the same files and are evaluated on the same 1000 validation images. The JSON holds each run's
Evaluator accuracy, Trainer seconds (component and training loop), wall time, peak RSS and warm-start decision.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from cats_vs_dogs import REPO, benchmark_parser, parse_checked  # noqa: E402
from common import ftune_run, write_results  # noqa: E402

from serving import sidecars  # noqa: E402

DEFAULT_OUTPUT = os.path.join(HERE, "results", "warm_start.json")


def make_spans(source: str, target: str, spans: int = 2) -> Dict[str, int]:
    """target/span-<k>/<split>/<class>/<file> -> symlinks to the k-th part of source/<split>/<class>/ (sorted)."""
    counts: Dict[str, int] = {}
    for split in ("train", "validation"):
        for class_name in sorted(os.listdir(os.path.join(source, split))):
            files = sorted(os.listdir(os.path.join(source, split, class_name)))
            size = -(-len(files) // spans)
            for k in range(spans):
                folder = os.path.join(target, f"span-{k + 1}", split, class_name)
                os.makedirs(folder, exist_ok=True)
                for name in files[k * size : (k + 1) * size]:
                    os.symlink(os.path.join(source, split, class_name, name), os.path.join(folder, name))
                    counts[f"span-{k + 1}/{split}"] = counts.get(f"span-{k + 1}/{split}", 0) + 1
    return counts


def measured_run(name: str, data: str, root: str, weights: str, settings: List[str], work: str) -> Dict:
    process = ftune_run(name, data, root, weights, settings, work)

    from pipeline.configs import load_config
    from pipeline.reporting.report import report_data
    from pipeline.reporting.run_records import component_timings

    config = load_config(None, [f"pipeline_root={root}"])
    data_ = report_data(config, with_predictions=False)
    training = data_.get("training") or {}
    result = {
        "val_accuracy": data_["gate"]["candidate_accuracy"],
        "phase_val_accuracy": training.get("final_accuracy"),
        "epochs_per_phase": training.get("epochs_per_phase"),
        "warm_start": training.get("warm_start"),
        "trainer_component_s": round(component_timings(config)[sidecars.TRAINER]["seconds"], 1),
        "train_loop_s": round(training.get("train_wall_s") or 0.0, 1),
        "spans": (data_.get("ingestion") or {}).get("spans"),
        "blessed": data_["gate"]["blessed"],
        "wall_s": process["wall_s"],
        "peak_rss_mb": process["peak_rss_mb"],
    }
    print(f"[bench] {name}: {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    parser = benchmark_parser(
        "Warm start vs cold start on cats vs dogs in two spans.",
        DEFAULT_OUTPUT,
        "data spans, pipeline roots and logs",
    )
    args = parse_checked(parser, DEFAULT_OUTPUT)
    sys.path.insert(0, REPO)

    work = args.work_dir or tempfile.mkdtemp(prefix="ftune-warm-")
    spans_dir = os.path.join(work, "spans")
    counts = make_spans(args.data, os.path.join(work, "all_spans"))
    # Run 1 sees span-1 only; span-2 is moved in before run 2.
    os.makedirs(spans_dir)
    os.rename(os.path.join(work, "all_spans", "span-1"), os.path.join(spans_dir, "span-1"))
    settings = list(args.overrides)

    results = {"span_files": counts, "settings": settings}
    results["span1_cold"] = measured_run(
        "span1_cold", spans_dir, os.path.join(work, "root_warm"), args.weights, settings, work
    )
    os.rename(os.path.join(work, "all_spans", "span-2"), os.path.join(spans_dir, "span-2"))
    results["spans12_warm"] = measured_run(
        "spans12_warm", spans_dir, os.path.join(work, "root_warm"), args.weights, settings, work
    )
    results["spans12_cold"] = measured_run(
        "spans12_cold", spans_dir, os.path.join(work, "root_cold"), args.weights, settings, work
    )
    write_results(args.output, results, args.overrides, data=args.data, weights=args.weights, work_dir=work)
    print(f"[bench] wrote {args.output}", flush=True)


if __name__ == "__main__":
    main()

"""Benchmark: the full pipeline vs. the tutorial's plain Keras recipe on cats-vs-dogs, same machine, same run.

    .venv/bin/python benchmarks/cats_vs_dogs.py [--data DIR] [--weights FILE] [--output JSON] [--skip-baseline]
                                                [--seeds 42 43 44]

1. `ftune run` on the pre-split folder (train/ for training, validation/ for evaluation), MobileNetV2-160,
   ImageNet weights from a local file: ingestion to push, Evaluator-computed accuracy on the 1000 validation images;
2. benchmarks/tutorial_baseline.py: the tutorial's recipe on the same data and weights;
   (with --seeds, the other seeds' pipeline runs follow the recipe: accuracy over seeds, time side by side once);
3. writes the JSON (accuracies, wall times, ratio, per-stage seconds, peak RSS of each process tree, machine,
   versions, git commit).
Each step runs in its own process tree, sampled every 0.5 s for its summed RSS (Beam workers included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

from common import add_settings_option, check_headline_overrides, ftune_run, run_measured, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.path.abspath(os.path.join(REPO, "..", "shared"))
DEFAULT_DATA = os.path.join(SHARED, "datasets", "cats_and_dogs_filtered")
DEFAULT_WEIGHTS = os.path.join(SHARED, "weights", "mobilenet_v2_1.0_224_no_top.h5")
DEFAULT_OUTPUT = os.path.join(HERE, "results", "cats_vs_dogs.json")


def benchmark_parser(description: str, default_output: str, work_dir_help: str) -> argparse.ArgumentParser:
    """The options every cats-vs-dogs benchmark takes: --data, --weights, --output, --work-dir, --set."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"pre-split image folder (default {DEFAULT_DATA})")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help=f"MobileNetV2 weights (default {DEFAULT_WEIGHTS})")
    parser.add_argument("--output", default=default_output, help=f"results JSON (default {default_output})")
    parser.add_argument("--work-dir", help=f"{work_dir_help} (default: a new temporary folder)")
    add_settings_option(parser)
    return parser


def parse_checked(parser: argparse.ArgumentParser, default_output: str) -> argparse.Namespace:
    """Parsed arguments; stops when the data or weights are missing or overrides would write the headline file."""
    args = parser.parse_args()
    for path in (args.data, args.weights):
        if not os.path.exists(path):
            raise SystemExit(f"not found: {path}")
    check_headline_overrides(args.overrides, args.output, default_output)
    return args


def pipeline_run(args, work: str, seed: int, default_seed: int) -> dict:
    """`ftune run` with the defaults (plus `trainer.seed` for a non-default seed) in its own pipeline root."""
    name = "pipeline" if seed == default_seed else f"pipeline_seed{seed}"
    root = os.path.join(work, name, "pipeline_root")
    settings = list(args.overrides) + ([f"trainer.seed={seed}"] if seed != default_seed else [])
    measured = ftune_run(name, args.data, root, args.weights, settings, work)

    from pipeline.configs import load_config
    from pipeline.reporting.report import report_data
    from pipeline.reporting.run_records import component_timings

    config = load_config(None, [f"pipeline_root={root}"])
    data = report_data(config)
    result = {
        "seed": seed,
        "pipeline_val_accuracy": data["gate"]["candidate_accuracy"],
        "pipeline_phase_val_accuracy": data.get("training", {}).get("final_accuracy"),
        "pipeline_wall_s": measured["wall_s"],
        "pipeline_peak_rss_mb": measured["peak_rss_mb"],
        "pipeline_stage_s": {k: v["seconds"] for k, v in component_timings(config).items()},
        "pipeline_train_s": data.get("training", {}).get("train_wall_s"),
        "blessed": data["gate"]["blessed"],
        "pushed": data.get("push"),
    }
    print(f"[bench] {name}: {json.dumps(result)}", flush=True)
    return result


def recipe_run(args, work: str) -> dict:
    """benchmarks/tutorial_baseline.py on the same data and weights, measured the same way."""
    baseline_json = os.path.join(work, "baseline.json")
    cmd = [sys.executable, os.path.join(HERE, "tutorial_baseline.py"), "--data", args.data]
    cmd += ["--weights", args.weights, "--output", baseline_json]
    print("[bench] baseline: tutorial recipe", flush=True)
    measured = run_measured(cmd, os.path.join(work, "baseline.log"))
    with open(baseline_json) as f:
        recipe = json.load(f)
    return {
        "baseline_val_accuracy": recipe["phase2_val_accuracy"],
        "baseline_phase1_val_accuracy": recipe["phase1_val_accuracy"],
        "baseline_wall_s": measured["wall_s"],
        "baseline_peak_rss_mb": measured["peak_rss_mb"],
        "baseline_stage_s": {"phase1": round(recipe["phase1_s"], 1), "phase2": round(recipe["phase2_s"], 1)},
    }


def main() -> None:
    parser = benchmark_parser(
        "Pipeline vs. the TF tutorial's recipe on cats vs dogs.", DEFAULT_OUTPUT, "pipeline roots and logs"
    )
    parser.add_argument("--skip-baseline", action="store_true", help="run only the pipeline")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="trainer seeds, one pipeline run each (default: the default seed)"
    )
    args = parse_checked(parser, DEFAULT_OUTPUT)
    sys.path.insert(0, REPO)
    from pipeline.configs import TrainerConfig

    default_seed = TrainerConfig().seed
    seeds = args.seeds or [default_seed]
    work = args.work_dir or tempfile.mkdtemp(prefix="ftune-bench-")
    os.makedirs(work, exist_ok=True)

    # The first seed's pipeline run and the recipe run back to back: the side-by-side time comparison.
    runs = [pipeline_run(args, work, seeds[0], default_seed)]
    recipe = None if args.skip_baseline else recipe_run(args, work)
    runs += [pipeline_run(args, work, seed, default_seed) for seed in seeds[1:]]

    first = runs[0]
    result = {key: value for key, value in first.items() if key != "seed"}
    accuracies = [run["pipeline_val_accuracy"] for run in runs]
    result["seeds"] = {
        "seeds": seeds,
        "val_accuracy": accuracies,
        "mean": round(statistics.mean(accuracies), 4),
        "min": min(accuracies),
        "wall_s": [run["pipeline_wall_s"] for run in runs],
        "peak_rss_mb": max(run["pipeline_peak_rss_mb"] for run in runs),
    }
    result["runs"] = runs
    if recipe is not None:
        result.update(recipe)
        result["wall_time_ratio"] = round(first["pipeline_wall_s"] / recipe["baseline_wall_s"], 3)
    write_results(args.output, result, args.overrides, data=args.data, weights=args.weights, work_dir=work)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

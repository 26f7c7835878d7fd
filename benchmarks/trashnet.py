"""Benchmark: the whole pipeline on TrashNet (6 classes of waste photos, imbalanced: 137 to 594 per class).

    .venv/bin/python benchmarks/trashnet.py [--data DIR] [--seeds 42 43 44] [--output JSON] [--set KEY=VALUE]

1. A deterministic 80/20 split by file name: a file goes to validation/ when sha256(<class>/<file name>) mod 100
   is below 20, to train/ otherwise (symbolic links under the work folder; the same split on every machine);
2. per seed, `ftune run` on that pre-split folder with the defaults (a seed other than the default is passed as
   `--set trainer.seed=S` and recorded); its own process tree measured for wall time and peak RSS;
3. the exported model's predictions on every validation image (the report's confusion matrix): accuracy,
   macro-F1, per-class recall/precision/F1; the training history's class weighting and phase accuracies;
4. the JSON (per seed, mean and minimum over seeds, targets, machine, versions, git commit).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
from typing import Any, Dict, List

from common import add_settings_option, check_headline_overrides, classification_metrics, run_measured, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.path.abspath(os.path.join(REPO, "..", "shared"))
DEFAULT_DATA = os.path.join(SHARED, "datasets", "trashnet")
DEFAULT_WEIGHTS = os.path.join(SHARED, "weights", "mobilenet_v2_1.0_224_no_top.h5")
DEFAULT_OUTPUT = os.path.join(HERE, "results", "trashnet.json")
EVAL_PERCENT = 20
TARGETS = {"accuracy": 0.93, "macro_f1": 0.92, "smallest_class_recall": 0.85}


def split_of(class_name: str, file_name: str) -> str:
    digest = hashlib.sha256(f"{class_name}/{file_name}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") % 100 < EVAL_PERCENT else "train"


def make_split(data: str, target: str) -> Dict[str, Dict[str, int]]:
    """Links every image of `data/<class>/` into `target/{train,validation}/<class>/`; returns counts."""
    counts: Dict[str, Dict[str, int]] = {"train": {}, "validation": {}}
    for class_name in sorted(os.listdir(data)):
        folder = os.path.join(data, class_name)
        if class_name.startswith(".") or not os.path.isdir(folder):
            continue
        for file_name in sorted(os.listdir(folder)):
            split = split_of(class_name, file_name)
            os.makedirs(os.path.join(target, split, class_name), exist_ok=True)
            link = os.path.join(target, split, class_name, file_name)
            if not os.path.lexists(link):
                os.symlink(os.path.join(folder, file_name), link)
            counts[split][class_name] = counts[split].get(class_name, 0) + 1
    return counts


def run_seed(args, settings: List[str], data_dir: str, work: str, seed: int, default_seed: int) -> Dict[str, Any]:
    """One pipeline run with `settings` (--set items) and `seed`, under `work`; its metrics, times and memory."""
    root = os.path.join(work, f"seed{seed}", "pipeline_root")
    overrides = list(settings) + ([f"trainer.seed={seed}"] if seed != default_seed else [])
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--data-root", data_dir, "--pipeline-root", root]
    cmd += ["--weights", args.weights]
    for item in overrides:
        cmd += ["--set", item]
    print(f"[bench] seed {seed}: {' '.join(cmd)}", flush=True)
    measured = run_measured(cmd, os.path.join(work, f"seed{seed}.log"))

    from pipeline.configs import load_config
    from pipeline.reporting.report import report_data
    from pipeline.reporting.run_records import component_timings
    from serving import sidecars

    config = load_config(None, [f"pipeline_root={root}"])
    data = report_data(config)
    predictions = data["predictions"]
    metrics = classification_metrics(predictions["confusion_matrix"], predictions["class_names"])
    history = sidecars.read_history(data["training"]["model_uri"]) or {}
    result = {
        "seed": seed,
        "overrides": overrides,
        **metrics,
        "evaluated_images": predictions["total"],
        "confusion_matrix": predictions["confusion_matrix"],
        "class_names": predictions["class_names"],
        "phase_val_accuracy": history.get("final_accuracy"),
        "class_weighting": history.get("class_weighting"),
        "training_modes": history.get("modes"),
        # The recipe (trainer.profile, resolved by this machine's GPUs) and each phase's epochs and seconds.
        "profile": history.get("profile"),
        "epochs_per_phase": {f"phase{n}": list(history.get("phase") or []).count(n) for n in (1, 2)},
        "phase_wall_s": history.get("wall_seconds"),
        "cache": history.get("cache"),
        # The check of the training data (label issues, data changes), and the Trainer's training function.
        "label_issues_s": history.get("label_issues_s"),
        "train_wall_s": history.get("train_wall_s"),
        "evaluator_accuracy": data["gate"]["candidate_accuracy"],
        "blessed": data["gate"]["blessed"],
        "wall_s": measured["wall_s"],
        "peak_rss_mb": measured["peak_rss_mb"],
        "stage_s": {k: v["seconds"] for k, v in component_timings(config).items()},
    }
    print(f"[bench] seed {seed}: {json.dumps({k: result[k] for k in ('accuracy', 'macro_f1', 'wall_s')})}")
    return result


def summary(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    def stats(values):
        return {"mean": round(statistics.mean(values), 4), "min": round(min(values), 4)}

    out = {
        "accuracy": stats([r["accuracy"] for r in runs]),
        "macro_f1": stats([r["macro_f1"] for r in runs]),
        "smallest_class_recall": stats([r["smallest_recall"]["recall"] for r in runs]),
        "wall_s": stats([r["wall_s"] for r in runs]),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }
    out["targets_met"] = {key: out[key]["mean"] >= bar for key, bar in TARGETS.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="The pipeline on TrashNet: accuracy, macro-F1, per-class recall.")
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"TrashNet class folders (default {DEFAULT_DATA})")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help=f"MobileNetV2 weights (default {DEFAULT_WEIGHTS})")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"results JSON (default {DEFAULT_OUTPUT})")
    parser.add_argument("--work-dir", help="split folder, pipeline roots and logs (default: a new temporary folder)")
    parser.add_argument("--seeds", type=int, nargs="+", help="trainer seeds, one pipeline run each (default: 42)")
    add_settings_option(parser)
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a second recipe (these settings, repeatable; e.g. the previous defaults) run right after each seed's "
        "run in the same invocation: its results under 'compared', and the wall-time ratio",
    )
    args = parser.parse_args()
    for path in (args.data, args.weights):
        if not os.path.exists(path):
            raise SystemExit(f"not found: {path}")
    check_headline_overrides(args.overrides, args.output, DEFAULT_OUTPUT)
    sys.path.insert(0, REPO)
    from pipeline.configs import TrainerConfig

    default_seed = TrainerConfig().seed
    seeds = args.seeds or [default_seed]
    work = args.work_dir or tempfile.mkdtemp(prefix="ftune-trashnet-")
    os.makedirs(work, exist_ok=True)
    data_dir = os.path.join(work, "data")
    counts = make_split(args.data, data_dir)
    runs, compared = [], []
    for seed in seeds:  # the two recipes alternate seed by seed, so that both see the same machine load
        runs.append(run_seed(args, args.overrides, data_dir, work, seed, default_seed))
        if args.compare:
            compared_work = os.path.join(work, "compared")
            os.makedirs(compared_work, exist_ok=True)
            compared.append(run_seed(args, args.overrides + args.compare, data_dir, compared_work, seed, default_seed))
    result = {
        "summary": summary(runs),
        "targets": TARGETS,
        "runs": runs,
        "split": {"rule": f"sha256(class/file) mod 100 < {EVAL_PERCENT} -> validation", "counts": counts},
    }
    if compared:
        result["compared"] = {"settings": args.compare, "summary": summary(compared), "runs": compared}
        wall_ratio = result["summary"]["wall_s"]["mean"] / result["compared"]["summary"]["wall_s"]["mean"]
        result["wall_ratio_to_compared"] = round(wall_ratio, 3)
    write_results(args.output, result, args.overrides, data=args.data, weights=args.weights, work_dir=work)
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()

"""Benchmark: the TFLite copies (`push.tflite=float16`, `int8`) against the float32 SavedModel, on cats vs dogs.

    .venv/bin/python benchmarks/tflite.py [--data DIR] [--weights FILE] [--output JSON] [--set KEY=VALUE]

Two `ftune run`s on the pre-split folder, each in a fresh pipeline root, with every setting at its default except
`push.tflite` (float16, then int8): the Trainer converts the model it trained, scores the TFLite model with the
TFLite interpreter and the SavedModel's Keras model on the same 1000 validation images, and pushes `model.tflite`
only when the drop is at most `eval.max_tflite_accuracy_drop` (0.01). The JSON holds, per mode, the pushed
version's `assets.extra/tflite.json` (size, both accuracies, agreement, the decision, conversion seconds), the
SavedModel's size on disk, the Evaluator's accuracy, wall time and peak RSS.
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

DEFAULT_OUTPUT = os.path.join(HERE, "results", "tflite.json")
MODES = ("float16", "int8")


def folder_bytes(path: str, skip: tuple = ()) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d not in skip]
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in filenames if f not in skip)
    return total


def measured_run(mode: str, data: str, weights: str, settings: List[str], work: str) -> Dict:
    root = os.path.join(work, f"root_{mode}")
    process = ftune_run(mode, data, root, weights, [f"push.tflite={mode}", *settings], work)

    from pipeline.configs import load_config
    from pipeline.reporting.report import report_data
    from serving.sidecars import read_tflite_record
    from serving.tflite import TFLITE_FILE

    config = load_config(None, [f"pipeline_root={root}"])
    version_dir = os.path.join(config.serving_model_dir, "1")
    record = read_tflite_record(version_dir)
    result = {
        "tflite": record,
        "tflite_pushed": os.path.exists(os.path.join(version_dir, TFLITE_FILE)),
        # The SavedModel as TF Serving loads it: graph + variables, without the TFLite copy and the records.
        "saved_model_bytes": folder_bytes(version_dir, skip=(TFLITE_FILE, "assets.extra")),
        "evaluator_accuracy": report_data(config, with_predictions=False)["gate"]["candidate_accuracy"],
        "wall_s": process["wall_s"],
        "peak_rss_mb": process["peak_rss_mb"],
    }
    print(f"[bench] {mode}: {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    parser = benchmark_parser(
        "TFLite float16 / int8 vs the float32 SavedModel on cats vs dogs.", DEFAULT_OUTPUT, "pipeline roots and logs"
    )
    args = parse_checked(parser, DEFAULT_OUTPUT)
    sys.path.insert(0, REPO)
    work = args.work_dir or tempfile.mkdtemp(prefix="ftune-tflite-")
    os.makedirs(work, exist_ok=True)
    results = {mode: measured_run(mode, args.data, args.weights, list(args.overrides), work) for mode in MODES}
    write_results(args.output, results, args.overrides, data=args.data, weights=args.weights, work_dir=work)
    print(f"[bench] wrote {args.output}", flush=True)


if __name__ == "__main__":
    main()

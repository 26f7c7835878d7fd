"""Benchmark: does the pipeline's cost grow linearly with the data, and does its memory stay flat?

    .venv/bin/python benchmarks/scaling.py [--sizes 2000 8000 32000] [--source DIR] [--output JSON] [--set K=V]

1. Per size N, a data set of N distinct image files made from the shared cats-vs-dogs photos (train/ and
   validation/ pooled): each new file is one source photo under a random crop (50-100 % of its area, any
   aspect within 3:4..4:3), a random horizontal flip and colour jitter (brightness, contrast, saturation
   +-25 %), saved as JPEG; the source photo's class is kept. Generated once per size and seed, then reused.
2. `ftune run` on it with the defaults (hash split, 20 % eval), its process tree sampled for peak RSS (Beam
   workers included), wall time per component from the run's metadata.
3. The JSON (per size: wall time, seconds per image, per-component seconds, peak RSS, the Trainer's cache size
   and how much of it went to disk, eval accuracy) and a plot (`scaling.png` beside the JSON).
Targets: seconds per image at the largest size no worse than at the smallest; peak RSS <= 6 GB at 32k.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict, List, Tuple

from common import add_settings_option, check_headline_overrides, run_measured, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.path.abspath(os.path.join(REPO, "..", "shared"))
DEFAULT_SOURCE = os.path.join(SHARED, "datasets", "cats_and_dogs_filtered")
DEFAULT_WEIGHTS = os.path.join(SHARED, "weights", "mobilenet_v2_1.0_224_no_top.h5")
DEFAULT_OUTPUT = os.path.join(HERE, "results", "scaling.json")
RSS_TARGET_MB = 6 * 1024


def source_images(source: str) -> List[Tuple[str, str]]:
    """(class name, path) of every photo under `source`/{train,validation}/<class>/ (or `source`/<class>/)."""
    roots = [os.path.join(source, s) for s in ("train", "validation") if os.path.isdir(os.path.join(source, s))]
    images = []
    for root in roots or [source]:
        for class_name in sorted(os.listdir(root)):
            folder = os.path.join(root, class_name)
            if os.path.isdir(folder) and not class_name.startswith("."):
                images += [(class_name, os.path.join(folder, f)) for f in sorted(os.listdir(folder))]
    return images


def _make_one(job: Tuple[int, str, str, str, int]) -> None:
    from PIL import Image, ImageEnhance, ImageOps

    index, class_name, path, out_dir, seed = job
    target = os.path.join(out_dir, class_name, f"{index:06d}.jpg")
    if os.path.exists(target):
        return
    rng = random.Random(seed * 1_000_003 + index)
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    area = rng.uniform(0.5, 1.0) * width * height
    aspect = rng.uniform(3 / 4, 4 / 3)
    w = max(16, min(width, int(round((area * aspect) ** 0.5))))
    h = max(16, min(height, int(round((area / aspect) ** 0.5))))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    image = image.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(rng.uniform(0.75, 1.25))
    image.save(target + ".tmp", format="JPEG", quality=90)
    os.replace(target + ".tmp", target)


def make_dataset(sources: List[Tuple[str, str]], size: int, out_dir: str, seed: int, workers: int) -> float:
    """Writes `size` images under out_dir/<class>/; returns the seconds it took."""
    started = time.time()
    for class_name in {c for c, _ in sources}:
        os.makedirs(os.path.join(out_dir, class_name), exist_ok=True)
    order = list(range(len(sources)))
    random.Random(seed).shuffle(order)
    jobs = [(i, *sources[order[i % len(order)]], out_dir, seed) for i in range(size)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_make_one, jobs, chunksize=64))
    return time.time() - started


def run_size(args, size: int, work: str) -> Dict[str, Any]:
    data_dir = os.path.join(work, f"data_{size}_seed{args.seed}")
    print(f"[bench] {size} images -> {data_dir}", flush=True)
    generate_s = make_dataset(source_images(args.source), size, data_dir, args.seed, args.workers)
    root = os.path.join(work, f"root_{size}")
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--data-root", data_dir, "--pipeline-root", root]
    cmd += ["--weights", args.weights]
    for item in args.overrides:
        cmd += ["--set", item]
    print(f"[bench] {size}: {' '.join(cmd)}", flush=True)
    measured = run_measured(cmd, os.path.join(work, f"pipeline_{size}.log"))

    from pipeline.configs import load_config
    from pipeline.reporting.report import report_data
    from pipeline.reporting.run_records import component_timings
    from serving import sidecars

    config = load_config(None, [f"pipeline_root={root}"])
    data = report_data(config, with_predictions=False)
    history = sidecars.read_history(data["training"]["model_uri"]) or {}
    result = {
        "images": size,
        "wall_s": measured["wall_s"],
        "s_per_image": round(measured["wall_s"] / size, 4),
        "peak_rss_mb": measured["peak_rss_mb"],
        "stage_s": {k: v["seconds"] for k, v in component_timings(config).items()},
        "trainer_wall_seconds": history.get("wall_seconds"),
        "training_modes": history.get("modes"),
        "cache": history.get("cache"),
        "eval_accuracy": data["gate"]["candidate_accuracy"],
        "generate_s": round(generate_s, 1),
    }
    print(f"[bench] {size}: {json.dumps(result)}", flush=True)
    return result


def plot(runs: List[Dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["images"] for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(sizes, [r["s_per_image"] * 1000 for r in runs], "o-")
    left.set(xscale="log", xlabel="images", ylabel="pipeline ms per image", title="time per image")
    right.plot(sizes, [r["peak_rss_mb"] / 1024 for r in runs], "o-")
    right.axhline(RSS_TARGET_MB / 1024, color="red", linestyle="--", label="6 GB target")
    right.set(xscale="log", xlabel="images", ylabel="peak RSS, GB (process tree)", title="memory")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description="Pipeline wall time and memory against the number of images.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000], help="data set sizes")
    parser.add_argument("--source", default=DEFAULT_SOURCE, help=f"photos to derive from (default {DEFAULT_SOURCE})")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help=f"MobileNetV2 weights (default {DEFAULT_WEIGHTS})")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"results JSON (default {DEFAULT_OUTPUT})")
    parser.add_argument("--work-dir", help="generated data, pipeline roots, logs (default: a new temporary folder)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes generating images")
    add_settings_option(parser)
    args = parser.parse_args()
    for path in (args.source, args.weights):
        if not os.path.exists(path):
            raise SystemExit(f"not found: {path}")
    check_headline_overrides(args.overrides, args.output, DEFAULT_OUTPUT)
    sys.path.insert(0, REPO)
    work = args.work_dir or tempfile.mkdtemp(prefix="ftune-scaling-")
    os.makedirs(work, exist_ok=True)
    runs = [run_size(args, size, work) for size in sorted(args.sizes)]
    smallest, largest = runs[0], runs[-1]
    result = {
        "runs": runs,
        "time_per_image_ratio_largest_to_smallest": round(largest["s_per_image"] / smallest["s_per_image"], 3),
        "targets": {"time_per_image_ratio": "<= 1.0", "peak_rss_mb_at_32000": f"<= {RSS_TARGET_MB}"},
    }
    write_results(args.output, result, args.overrides, source=args.source, work_dir=work)
    plot(runs, os.path.splitext(args.output)[0] + ".png")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()

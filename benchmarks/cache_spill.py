"""Micro-benchmark: what reading the phase-2 feature cache from disk (trainer.cache_max_mb exceeded) costs.

    .venv/bin/python benchmarks/cache_spill.py [--images 2000 8000 32000] [--output JSON]

No training: the trainer's own cache writer (`ArrayWriter`, budget 0 = everything on disk) writes random rows of
the real phase-2 cache's shape (MobileNetV2 at 160 px cut at block_11: 10 x 10 x 96 float32, 38.4 KB per row;
4 versions per image), then one epoch of the trainer's own shuffled batches (`CachedBatches`, batch 32) reads
them back; the same from memory where it fits. Reports write and read seconds, milliseconds per batch, and this
process's resident memory (RSS) before and after, to compare with the seconds a training step takes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import psutil
from common import git_commit, machine

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
ROW_SHAPE = (10, 10, 96)
VERSIONS = 4
BATCH = 32


def rss_mb() -> int:
    return round(psutil.Process().memory_info().rss / 2**20)


def measure(images: int, on_disk: bool, folder: str):
    from trainer.feature_cache import CachedBatches, SpillBudget

    budget = SpillBudget(0 if on_disk else 2**62, folder)
    writers = [budget.writer(f"train_prefix_{v}") for v in range(VERSIONS)]
    rng = np.random.default_rng(0)
    rss_before = rss_mb()
    started = time.perf_counter()
    for start in range(0, images, BATCH):
        rows = min(BATCH, images - start)
        for writer in writers:
            writer.append(rng.standard_normal((rows, *ROW_SHAPE), dtype=np.float32))
    arrays = [writer.finish() for writer in writers]
    write_s = time.perf_counter() - started
    rss_written = rss_mb()
    batches = CachedBatches(arrays, np.zeros(images, np.int32), BATCH, seed=0)
    started = time.perf_counter()
    checksum = 0.0
    for index in range(len(batches)):
        x, _ = batches[index]
        checksum += float(x[0, 0, 0, 0])
    read_s = time.perf_counter() - started
    result = {
        "images": images,
        "where": "disk" if on_disk else "memory",
        "cache_mb": round(sum(a.nbytes for a in arrays) / 2**20),
        "write_s": round(write_s, 2),
        "epoch_read_s": round(read_s, 2),
        "ms_per_batch": round(1000 * read_s / len(batches), 2),
        "rss_mb_before": rss_before,
        "rss_mb_after_write": rss_written,
        "rss_mb_after_epoch": rss_mb(),
    }
    for array in arrays:
        if hasattr(array, "close"):
            array.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--memory-up-to", type=int, default=8000, help="largest size also measured in memory")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "cache_spill.json"))
    args = parser.parse_args()
    runs = []
    for images in args.images:
        for on_disk in (False, True):
            if not on_disk and images > args.memory_up_to:
                continue
            with tempfile.TemporaryDirectory(prefix="ftune-spill-bench-", dir=os.path.dirname(args.output)) as d:
                runs.append(measure(images, on_disk, d))
            print(json.dumps(runs[-1]), flush=True)
    result = {"runs": runs, "row_shape": ROW_SHAPE, "versions": VERSIONS, "batch": BATCH}
    result.update(machine=machine(), git_commit=git_commit(), date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

"""Benchmark: the sample-data loop with everything in an s3:// bucket against the same loop on local disk.

    .venv/bin/python benchmarks/object_store.py [--weights FILE] [--output JSON]

One invocation, default settings, the generated sample data (`make demo`'s): on local disk, a cold `ftune run`
(trains, pushes version 1) and the same command again (the change check's no-op); then the same two with the
images, the pipeline root and the serving folder in a bucket of a local S3 server (moto on 127.0.0.1,
tests/s3_server.py; MLMD and the report in a local state_dir). The JSON holds each run's wall time and peak RSS.
What the bucket costs here is the S3 protocol (signing, one request per object, multipart uploads) over loopback,
not a network: a cluster's MinIO or S3 adds its latency and bandwidth on top.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from common import REPO, ftune_run, write_results  # noqa: E402

DEFAULT_OUTPUT = os.path.join(HERE, "results", "object_store.json")
BUCKET = "ftune-bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=os.environ.get("FTUNE_WEIGHTS"), help="MobileNetV2 no-top .h5")
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    if not args.weights:
        raise SystemExit("--weights (or FTUNE_WEIGHTS) is required")

    from s3_server import S3Server

    from pipeline.configs import load_config
    from pipeline.local_runner import ensure_sample_data

    work = tempfile.mkdtemp(prefix="ftune_bench_s3_")
    local_root = os.path.join(work, "local")
    config = load_config(None, [f"pipeline_root={local_root}"]).absolute_paths()
    data = ensure_sample_data(config, progress=lambda m: None)
    runs = {}
    runs["local cold"] = ftune_run("local_cold", data, local_root, args.weights, [], work)
    runs["local no-op"] = ftune_run("local_noop", data, local_root, args.weights, [], work)

    server = S3Server().start()
    try:
        server.create_bucket(BUCKET)
        images = server.upload_tree(data, f"s3://{BUCKET}/images")
        os.environ.update(server.environment())
        state = [f"state_dir={os.path.join(work, 's3_state')}"]  # where MLMD lives, not a training setting
        root = f"s3://{BUCKET}/root"
        runs["s3 cold"] = ftune_run("s3_cold", f"s3://{BUCKET}/images", root, args.weights, state, work)
        runs["s3 no-op"] = ftune_run("s3_noop", f"s3://{BUCKET}/images", root, args.weights, state, work)
        served = server.keys(f"{root}/serving/image_classifier")
    finally:
        server.stop()
    result = {
        "runs": runs,
        "images": images,
        "served_objects": len(served),
        "s3_over_local": {
            "cold": round(runs["s3 cold"]["wall_s"] / runs["local cold"]["wall_s"], 2),
            "no-op": round(runs["s3 no-op"]["wall_s"] / runs["local no-op"]["wall_s"], 2),
        },
        "s3_server": "moto (tests/s3_server.py) on 127.0.0.1, behind its relay",
    }
    write_results(args.output, result, [], data="generated sample data (defaults)", work=work, repo=REPO)
    for name, run in runs.items():
        print(f"[bench] {name}: {run['wall_s']} s, peak RSS {run['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()

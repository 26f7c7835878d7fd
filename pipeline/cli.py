"""`ftune`: the command-line entry point.

Every command that runs the pipeline takes the same configuration options: `--config FILE` (YAML/JSON, see
`ftune config`) and repeated `--set section.key=value`, applied over the defaults in pipeline/configs.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from pipeline.configs import ConfigError, PipelineConfig, load_config


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML/JSON config file (see `ftune config` for the keys)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one setting, e.g. --set trainer.phase1_epochs=3 (repeatable)",
    )
    parser.add_argument("--pipeline-root", metavar="DIR", help="artifacts, metadata and sample data (pipeline_root)")
    parser.add_argument("--data-root", metavar="DIR",
                        help="image folder: <class>/<images> or train/ + validation/ (data.data_root); "
                             "default: generated sample data")


def _load(args: argparse.Namespace) -> PipelineConfig:
    overrides = list(args.overrides)
    if getattr(args, "pipeline_root", None):
        overrides.append(f"pipeline_root={args.pipeline_root}")
    if getattr(args, "data_root", None):
        overrides.append(f"data.data_root={args.data_root}")
    if getattr(args, "weights", None):
        overrides.append(f"trainer.weights={args.weights}")
    return load_config(args.config, overrides).absolute_paths()


# --- commands ----------------------------------------------------------------------------------------------------


def cmd_sample_data(args: argparse.Namespace) -> int:
    from pipeline.sample_data import generate_sample_data

    counts = generate_sample_data(args.out_dir, classes=args.classes, per_class=args.per_class, seed=args.seed,
                                  progress=lambda m: print(f"[ftune] {m}", flush=True))
    print(f"[ftune] wrote {sum(counts.values())} images in {len(counts)} classes to {args.out_dir}: {counts}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    config = _load(args)
    print(json.dumps(config.to_dict(), indent=2))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipeline.local_runner import latest_artifact_uri, run_local, say
    from pipeline.summary import ingest_summary

    config = _load(args)
    run_local(config, stop_after="ingest")
    examples_uri = latest_artifact_uri(config, "ImageExampleGen", "examples")
    say(ingest_summary(examples_uri))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.local_runner import component_timings, enable_progress_logging, run_local, say
    from pipeline.summary import run_summary

    config = _load(args)
    enable_progress_logging()
    result = run_local(config, stop_after="push")
    say(run_summary(config, result, component_timings(config)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import write_report

    config = _load(args)
    print(f"[ftune] report: {write_report(config, args.output)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftune",
        description="Folder of labelled images -> served image classifier (TFX, freeze-then-fine-tune transfer "
                    "learning).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("sample-data", help="write a procedurally generated class-per-folder image set",
                       description="Write a small, deterministic class-per-folder image set (shapes with random "
                                   "colours, backgrounds, noise; mixed JPEG/PNG and sizes). No downloads.")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--classes", type=int, default=3, help="number of classes (2-8, default 3)")
    p.add_argument("--per-class", type=int, default=60, help="images per class (default 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default 0)")
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("config", help="print the effective configuration (defaults + file + overrides)",
                       description="Print the effective configuration as JSON; every key can be set with "
                                   "--set section.key=value or in a --config file.")
    _add_config_options(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("ingest", help="run ExampleGen, StatisticsGen and SchemaGen only",
                       description="Ingest the image folder into tf.Examples (with quarantine report), compute "
                                   "statistics and infer the schema, then stop.")
    _add_config_options(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("run", help="run the whole pipeline locally (ingest -> train -> gate -> push)",
                       description="Run ExampleGen, StatisticsGen, SchemaGen, ExampleValidator, Transform, Trainer, "
                                   "the served-model baseline, Evaluator and Pusher with LocalDagRunner (Beam "
                                   "DirectRunner on all cores, MLMD in SQLite under the pipeline root). Caching is "
                                   "on: re-running after a failure resumes. Without --data-root, sample data is "
                                   "generated and used. Ends with a summary and writes the HTML report.")
    _add_config_options(p)
    p.add_argument("--weights", metavar="PATH|imagenet|none",
                   help="pretrained base weights (trainer.weights); default: $FTUNE_WEIGHTS, else Keras' ImageNet "
                        "download")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="write the HTML run report for the latest run",
                       description="Write an HTML page with PNG figures (learning curves, confusion matrix, eval "
                                   "images, quarantine list, gate decision) for the latest run under the pipeline "
                                   "root.")
    _add_config_options(p)
    p.add_argument("--output", metavar="DIR", help="output folder (default: <pipeline_root>/report)")
    p.set_defaults(func=cmd_report)

    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        print(f"ftune: error: {message}", file=sys.stderr)
        return 2


def user_error(exc: BaseException) -> Optional[str]:
    """The message for errors that are the user's to fix (bad setting, missing file, unusable data, no
    weights), found anywhere in the exception chain (TFX wraps component errors); None for bugs."""
    # Imported here: they pull in TensorFlow, which `ftune --help` should not wait for.
    from components.image_example_gen import DataUnusableError
    from trainer.weights import WeightsUnavailableError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DataUnusableError):
            return f"unusable data: {exc}"
        if isinstance(exc, (ConfigError, FileNotFoundError, WeightsUnavailableError)):
            return str(exc)
        exc = exc.__cause__ or exc.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())

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


def _add_config_options(parser: argparse.ArgumentParser, kubeflow: bool = False) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML/JSON config file (see `ftune config` for the keys)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set trainer.phase1_epochs=3 (repeatable)",
    )
    if kubeflow:
        parser.add_argument(
            "--pipeline-root",
            metavar="URI",
            help="artifact root the pipeline's pods read and write, gs://... (pipeline_root)",
        )
        parser.add_argument(
            "--data-root",
            metavar="URI",
            help="image folder as the pods see it (data.data_root); the default of the run parameter data_root",
        )
        return
    parser.add_argument("--pipeline-root", metavar="DIR", help="artifacts, metadata and sample data (pipeline_root)")
    parser.add_argument(
        "--data-root",
        metavar="DIR",
        help="image folder: <class>/<images> or train/ + validation/ (data.data_root); default: generated sample data",
    )


def _load(args: argparse.Namespace) -> PipelineConfig:
    overrides = list(args.overrides)
    if getattr(args, "pipeline_root", None):
        overrides.append(f"pipeline_root={args.pipeline_root}")
    if getattr(args, "data_root", None):
        overrides.append(f"data.data_root={args.data_root}")
    if getattr(args, "weights", None):
        overrides.append(f"trainer.weights={args.weights}")
    config = load_config(args.config, overrides)
    return config if getattr(args, "func", None) is cmd_compile else config.absolute_paths()


def _add_kfp_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default=os.environ.get("KFP_HOST"),
        metavar="URL",
        help="Kubeflow Pipelines API endpoint, e.g. http://ml-pipeline-ui.kubeflow (default: "
        "$KFP_HOST). Authenticates with the token file named by $KF_PIPELINES_SA_TOKEN_PATH "
        "when set",
    )
    parser.add_argument("--package", required=True, metavar="FILE", help="compiled pipeline (`ftune compile`)")
    parser.add_argument(
        "--experiment", default="ftune", metavar="NAME", help="KFP experiment, created if missing (default: ftune)"
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("KFP_NAMESPACE"),
        metavar="NS",
        help="namespace of a multi-user Kubeflow (default: $KFP_NAMESPACE; none: single-user)",
    )
    parser.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="run parameter, repeatable: data_root, phase1_epochs, phase2_epochs, learning_rate, "
        "accuracy_floor (default: the values compiled into the package)",
    )
    parser.add_argument("--pipeline-root", metavar="URI", help="artifact root for this run (default: the package's)")


# --- commands ----------------------------------------------------------------------------------------------------


def cmd_sample_data(args: argparse.Namespace) -> int:
    from pipeline.sample_data import generate_sample_data

    counts = generate_sample_data(
        args.out_dir,
        classes=args.classes,
        per_class=args.per_class,
        seed=args.seed,
        progress=lambda m: print(f"[ftune] {m}", flush=True),
    )
    print(f"[ftune] wrote {sum(counts.values())} images in {len(counts)} classes to {args.out_dir}: {counts}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    config = _load(args)
    print(json.dumps(config.to_dict(), indent=2))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipeline.local_runner import run_local, say
    from pipeline.reporting.run_records import latest_artifact_uri
    from pipeline.reporting.summary import ingest_summary

    config = _load(args)
    run_local(config, stop_after="ingest")
    examples_uri = latest_artifact_uri(config, "ImageExampleGen", "examples")
    say(ingest_summary(examples_uri))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.local_runner import enable_progress_logging, run_local, say
    from pipeline.reporting.run_records import component_timings
    from pipeline.reporting.summary import run_summary

    config = _load(args)
    enable_progress_logging()
    result = run_local(config, stop_after="push")
    say(run_summary(config, result, component_timings(config)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.reporting.report import write_report

    config = _load(args)
    print(f"[ftune] report: {write_report(config, args.output)}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from pipeline.kubeflow_v2_runner import compile_pipeline

    path = compile_pipeline(_load(args), args.output, image=args.image, beam_args=args.beam_args or None)
    print(f"[ftune] wrote {path}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from pipeline import kfp_client

    run_id = kfp_client.submit(
        args.host,
        args.package,
        run_name=args.run_name,
        experiment=args.experiment,
        params=kfp_client.parse_params(args.params),
        namespace=args.namespace,
        pipeline_root=args.pipeline_root,
    )
    print(f"[ftune] submitted run {run_id}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from pipeline import kfp_client

    recurring_id = kfp_client.schedule(
        args.host,
        args.package,
        args.cron,
        name=args.name,
        experiment=args.experiment,
        params=kfp_client.parse_params(args.params),
        namespace=args.namespace,
        pipeline_root=args.pipeline_root,
        max_concurrency=args.max_concurrency,
        catchup=args.catchup,
    )
    print(f"[ftune] created recurring run {recurring_id} ({args.cron}, UTC)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftune",
        description="Folder of labelled images -> served image classifier (TFX, freeze-then-fine-tune transfer "
        "learning).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "sample-data",
        help="write a procedurally generated class-per-folder image set",
        description="Write a small, deterministic class-per-folder image set (shapes with random "
        "colours, backgrounds, noise; mixed JPEG/PNG and sizes). No downloads.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--classes", type=int, default=3, help="number of classes (2-8, default 3)")
    p.add_argument("--per-class", type=int, default=60, help="images per class (default 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default 0)")
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser(
        "config",
        help="print the effective configuration (defaults + file + overrides)",
        description="Print the effective configuration as JSON; every key can be set with "
        "--set section.key=value or in a --config file.",
    )
    _add_config_options(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser(
        "ingest",
        help="run ExampleGen, StatisticsGen and SchemaGen only",
        description="Ingest the image folder into tf.Examples (with quarantine report), compute "
        "statistics and infer the schema, then stop.",
    )
    _add_config_options(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "run",
        help="run the whole pipeline locally (ingest -> train -> gate -> push)",
        description="Run ExampleGen, StatisticsGen, SchemaGen, ExampleValidator, Transform, Trainer, "
        "the served-model baseline, Evaluator and Pusher with LocalDagRunner (Beam "
        "DirectRunner on all cores, MLMD in SQLite under the pipeline root). Caching is "
        "on: re-running after a failure resumes. Without --data-root, sample data is "
        "generated and used. Ends with a summary and writes the HTML report.",
    )
    _add_config_options(p)
    p.add_argument(
        "--weights",
        metavar="PATH|imagenet|none",
        help="pretrained base weights (trainer.weights); default: $FTUNE_WEIGHTS, else Keras' ImageNet download",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "report",
        help="write the HTML run report for the latest run",
        description="Write an HTML page with PNG figures (learning curves, confusion matrix, eval "
        "images, quarantine list, gate decision) for the latest run under the pipeline "
        "root.",
    )
    _add_config_options(p)
    p.add_argument("--output", metavar="DIR", help="output folder (default: <pipeline_root>/report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "compile",
        help="compile the pipeline for Kubeflow Pipelines (KFP v2 package)",
        description="Compile the pipeline with TFX's KubeflowV2DagRunner into a KFP v2 package for "
        "open-source Kubeflow Pipelines: the Trainer on the GPU pool (kubeflow.*), the "
        "models PVC on the Pusher and the served-model baseline, run parameters "
        "data_root, phase1_epochs, phase2_epochs, learning_rate and accuracy_floor with "
        "the configured values as defaults. Nothing is contacted.",
    )
    _add_config_options(p, kubeflow=True)
    p.add_argument(
        "--output",
        required=True,
        metavar="FILE",
        help="package to write: pipeline.yaml (.json only when no GPU and no serving volume is used)",
    )
    p.add_argument(
        "--image", metavar="IMAGE", help="container image for every step (kubeflow.image); the one the overlay deploys"
    )
    p.add_argument(
        "--beam-arg",
        dest="beam_args",
        action="append",
        default=[],
        metavar="ARG",
        help="Beam pipeline arg for StatisticsGen, Transform, Evaluator, ... (repeatable; attach it with "
        "'=', e.g. --beam-arg=--runner=DataflowRunner). Default: DirectRunner, multi-processing, "
        "4 workers per pod",
    )
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser(
        "submit",
        help="start one run of a compiled pipeline on Kubeflow Pipelines",
        description="Submit a compiled package as a run (KFP API v2beta1), in an experiment that is "
        "created if missing. Needs KFP permissions experiments get/list/create and runs "
        "create.",
    )
    _add_kfp_options(p)
    p.add_argument("--run-name", metavar="NAME", help="run name (default: pipeline name + UTC time)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        "schedule",
        help="create a KFP recurring run of a compiled pipeline",
        description="Create a recurring run (KFP's scheduler, cron in UTC) that embeds the compiled "
        "package. An alternative to the retraining CronJob, not an addition. Needs KFP "
        "permissions experiments get/list/create and jobs create.",
    )
    _add_kfp_options(p)
    p.add_argument(
        "--cron",
        required=True,
        metavar="EXPR",
        help="standard 5-field cron, e.g. '0 3 * * 1' (Mondays 03:00 UTC), 6 fields with seconds first, or @weekly",
    )
    p.add_argument(
        "--name", default="ftune-retrain", metavar="NAME", help="recurring run name (default: ftune-retrain)"
    )
    p.add_argument(
        "--max-concurrency", type=int, default=1, metavar="N", help="runs of this schedule allowed at once (default: 1)"
    )
    p.add_argument(
        "--catchup", action="store_true", help="after a pause, start every missed run (default: only the latest)"
    )
    p.set_defaults(func=cmd_schedule)

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
    from pipeline.local_runner import PipelineBusyError
    from trainer.weights import WeightsUnavailableError

    seen = set()
    if type(exc).__name__ == "ApiException":  # kfp_server_api: the KFP server answered with an error
        return f"KFP API {getattr(exc, 'status', '?')} {getattr(exc, 'reason', '')}: {getattr(exc, 'body', '')}"
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DataUnusableError):
            return f"unusable data: {exc}"
        if isinstance(exc, (ConfigError, FileNotFoundError, WeightsUnavailableError, PipelineBusyError)):
            return str(exc)
        exc = exc.__cause__ or exc.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())

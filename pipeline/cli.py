"""`ftune`: the command-line entry point.

Every command that runs the pipeline takes the same configuration options: `--config FILE` (YAML/JSON, see
`ftune config`) and repeated `--set section.key=value`, applied over the defaults in pipeline/configs.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Tuple

from pipeline import outcome
from pipeline.configs import ConfigError, PipelineConfig, load_config
from pipeline.kubeflow_v2_runner import RUNTIME_KNOBS

RUN_PARAMETERS = ", ".join(RUNTIME_KNOBS)


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


def _add_verbose_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show every log line, including TensorFlow/absl/Beam start-up messages and warnings (hidden by default)",
    )


def package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ftune")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


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
        help=f"run parameter, repeatable: {RUN_PARAMETERS} (default: the values compiled into the package)",
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


def _quiet(args: argparse.Namespace):
    """Library noise filtered from stderr (this process and its children) unless --verbose; entered before the
    imports that load TensorFlow, which logs as it loads."""
    import contextlib

    from pipeline.local_runner import QuietStderr

    return contextlib.nullcontext() if args.verbose else QuietStderr()


def cmd_ingest(args: argparse.Namespace) -> int:
    config = _load(args)
    with _quiet(args):
        from pipeline.local_runner import run_local, say
        from pipeline.reporting.run_records import latest_artifact_uri
        from pipeline.reporting.summary import ingest_summary

        run_local(config, stop_after="ingest")
        examples_uri = latest_artifact_uri(config, "ImageExampleGen", "examples")
        say(ingest_summary(examples_uri))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import contextlib

    from pipeline.local_runner import StdoutToStderr, enable_progress_logging, run_local, say
    from pipeline.reporting.run_records import component_timings

    config = _load(args)
    enable_progress_logging(verbose=args.verbose)
    # --json: stdout carries the summary data only; progress and the text summary go to stderr.
    to_stderr = StdoutToStderr() if args.json else contextlib.nullcontext()
    with _quiet(args), to_stderr:
        from pipeline.reporting.summary import run_summary, run_summary_data

        result = run_local(config, stop_after="push", force=args.force)
        if result.get("skipped"):
            # The served version's record names these very files and settings: nothing to do.
            say(result["message"])
            data = {
                "outcome": outcome.outcome(outcome.NO_NEW_DATA, result["served_version"]),
                "message": result["message"],
                "spans": result.get("spans"),
            }
        else:
            timings = component_timings(config)
            data = run_summary_data(config, result, timings)
            say(run_summary(config, result, timings, data))
    if args.json:
        print(json.dumps(data, indent=2), flush=True)
    return data["outcome"]["exit_code"]


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.reporting.report import write_report

    config = _load(args)
    print(f"[ftune] report: {write_report(config, args.output)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    with _quiet(args):
        return _predict(args)


def _predict(args: argparse.Namespace) -> int:
    from serving import predict

    files, missing = predict.expand_paths(args.paths)
    if args.server:
        config = _load(args)
        labels = None
        if os.path.isdir(config.serving_model_dir) and predict.served_versions(config.serving_model_dir):
            labels = predict.read_labels(predict.resolve_version_dir(config.serving_model_dir, args.version)[0])
        predictor = predict.RestPredictor(args.server, config.push.model_name, args.version, labels=labels)
    elif args.model_dir:
        predictor = predict.LocalPredictor(args.model_dir)
    else:
        config = _load(args)
        version_dir, version = predict.resolve_version_dir(config.serving_model_dir, args.version)
        predictor = predict.LocalPredictor(version_dir)
    print(f"[ftune] predict: {len(files)} file(s) with {predictor.source}", file=sys.stderr, flush=True)
    progress = predict.stderr_progress if len(files) > predict.DEFAULT_BATCH else None
    rows = missing + predict.predict_files(files, predictor, top_k=args.top_k, progress=progress)
    print(predict.format_rows(rows, args.format, args.top_k), flush=True)
    print(f"[ftune] {predict.summarize(rows)}", file=sys.stderr, flush=True)
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


def cmd_versions(args: argparse.Namespace) -> int:
    from serving.model_record import read_record
    from serving.model_versions import served_versions

    config = _load(args)
    base = config.serving_model_dir
    versions = served_versions(base)
    listed = [
        {
            "version": v,
            "path": os.path.join(base, str(v)),
            "served": v == versions[-1],
            "record": read_record(os.path.join(base, str(v))),
        }
        for v in versions
    ]
    if args.json:
        print(json.dumps({"serving_model_dir": base, "versions": listed}, indent=2))
        return outcome.EXIT_OK
    if not listed:
        print(f"[ftune] no versions under {base}")
        return outcome.EXIT_OK
    print(versions_table(listed))
    return outcome.EXIT_OK


def versions_table(listed: List[dict]) -> str:
    """One line per version: version, push time, accuracy, macro recall, data fingerprint, origin, served."""

    def num(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    rows = [("version", "pushed (UTC)", "accuracy", "macro recall", "data", "from", "served")]
    for item in listed:
        record = item["record"] or {}
        metrics = record.get("metrics") or {}
        data = record.get("data") or {}
        fingerprint = (data.get("fingerprint") or "-").replace("sha256:", "")[:12]
        if record.get("kind") == "rollback":
            origin = f"rollback of {record.get('rollback_of')}"
        elif record:
            origin = ", ".join(data.get("roots") or []) or "-"
        else:
            origin = "(no record)"
        rows.append(
            (
                str(item["version"]),
                (record.get("pushed_at") or "-").replace("+00:00", ""),
                num(metrics.get("accuracy")),
                num(metrics.get("macro_recall")),
                fingerprint,
                origin,
                "<- TF Serving serves this" if item["served"] else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def cmd_rollback(args: argparse.Namespace) -> int:
    from serving.model_record import read_record, rollback_record
    from serving.model_versions import republish, served_versions

    config = _load(args)
    base = config.serving_model_dir
    versions = served_versions(base)
    if args.to is None and len(versions) < 2:
        raise RollbackError(f"nothing to roll back to: {base} holds {len(versions)} version(s)")
    target = args.to if args.to is not None else versions[-2]
    if target not in versions:
        raise RollbackError(f"--to {target}: no such version under {base} (versions: {versions or 'none'})")
    if target == versions[-1]:
        print(f"[ftune] version {target} is already the served (highest) version; nothing to do")
        return outcome.EXIT_OK
    source = os.path.join(base, str(target))
    version = republish(base, target, rollback_record(read_record(source), target))
    print(f"[ftune] rolled back: version {version} ({os.path.join(base, str(version))}) is version {target}'s model")
    return outcome.EXIT_OK


class RollbackError(ValueError):
    """`ftune rollback` was asked for something the serving folder cannot give."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftune",
        description="Folder of labelled images -> served image classifier (TFX, freeze-then-fine-tune transfer "
        "learning).",
    )
    parser.add_argument("--version", action="version", version=f"ftune {package_version()}")
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
    _add_verbose_option(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "run",
        help="run the whole pipeline locally (ingest -> train -> gate -> push)",
        description="Run ExampleGen, StatisticsGen, SchemaGen, ExampleValidator, Transform, Trainer, "
        "the served-model baseline, Evaluator and Pusher with LocalDagRunner (Beam "
        "DirectRunner on all cores, MLMD in SQLite under the pipeline root). Caching is "
        "on: re-running after a failure resumes. Without --data-root, sample data is "
        "generated and used. Ends with a summary and writes the HTML report. Exit codes: "
        f"{outcome.EXIT_OK} pushed (or already served), {outcome.EXIT_GATE_REFUSED} the gate refused the model, "
        f"{outcome.EXIT_UNUSABLE_INPUT} unusable input (data, weights), {outcome.EXIT_INVALID_SETTINGS} invalid "
        f"settings, {outcome.EXIT_ERROR} anything else.",
    )
    _add_config_options(p)
    p.add_argument(
        "--weights",
        metavar="PATH|imagenet|none",
        help="pretrained base weights (trainer.weights); default: $FTUNE_WEIGHTS, else Keras' ImageNet download",
    )
    _add_verbose_option(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print the run summary's data as JSON on stdout (progress and the text summary go to stderr)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="train even when the input files and settings are those the served version's record names "
        "(without it, such a run ends with 'no new data; version N stays served'); also turns caching off",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "versions",
        help="list the served versions with their records",
        description="List the versions in the serving folder (<serving_dir>/<model_name>/): push time, accuracy, "
        "macro recall, data fingerprint, where each came from, and which one TF Serving serves (the highest).",
    )
    _add_config_options(p)
    p.add_argument("--json", action="store_true", help="every version with its full record, as JSON")
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser(
        "rollback",
        help="serve an earlier version again (re-published as the new highest version)",
        description="Copy version N to the next version number (staged, then renamed: atomic for TF Serving), "
        "with a record saying 'rollback of N'. Nothing is deleted; the next run's gate compares against it.",
    )
    _add_config_options(p)
    p.add_argument(
        "--to", type=int, metavar="N", help="the version to serve again (default: the one below the served one)"
    )
    p.set_defaults(func=cmd_rollback)

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
        "predict",
        help="classify image files with the served model (or another version, folder or TF Serving)",
        description="Classify images: files, folders (recursively) or glob patterns. Calls the model's "
        "serving_default signature with the raw file bytes, as TF Serving does, in batches; by default the "
        "served version (the highest under the serving folder). A file that cannot be read or decoded gets a "
        "row with the reason; the others are still scored. The table/CSV/JSON goes to stdout, progress to stderr.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image file, folder or glob pattern (quote it)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model-dir", metavar="DIR", help="a SavedModel folder (e.g. a version folder)")
    which.add_argument(
        "--server",
        metavar="URL",
        help="TF Serving REST endpoint, e.g. http://localhost:8501: POST /v1/models/<push.model_name>"
        "[/versions/N]:predict with b64 instances",
    )
    p.add_argument("--version", type=int, metavar="N", help="this served version (default: the highest)")
    p.add_argument("--top-k", type=int, default=3, metavar="K", help="classes shown per image (default: 3)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output (default: table)")
    _add_config_options(p)
    _add_verbose_option(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "compile",
        help="compile the pipeline for Kubeflow Pipelines (KFP v2 package)",
        description="Compile the pipeline with TFX's KubeflowV2DagRunner into a KFP v2 package for "
        "open-source Kubeflow Pipelines: the Trainer on the GPU pool (kubeflow.*), the "
        "models PVC on the Pusher and the served-model baseline, run parameters "
        f"{RUN_PARAMETERS} with the configured values as defaults. Nothing is contacted.",
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
        known = classify_error(exc)
        if known is None:
            raise
        code, message = known
        print(f"ftune: error: {message}", file=sys.stderr)
        return code


def user_error(exc: BaseException) -> Optional[str]:
    """The message for errors that are the user's to fix; None for bugs."""
    known = classify_error(exc)
    return known[1] if known else None


def classify_error(exc: BaseException) -> Optional[Tuple[int, str]]:
    """(exit code, message) for errors that are the user's to fix (bad setting, missing file, unusable data, no
    weights), found anywhere in the exception chain (TFX wraps component errors); None for bugs."""
    # Imported here: they pull in TensorFlow, which `ftune --help` should not wait for.
    from components.image_example_gen import DataUnusableError
    from pipeline.local_runner import PipelineBusyError
    from serving.predict import PredictError
    from trainer.weights import WeightsUnavailableError

    seen = set()
    if type(exc).__name__ == "ApiException":  # kfp_server_api: the KFP server answered with an error
        message = f"KFP API {getattr(exc, 'status', '?')} {getattr(exc, 'reason', '')}: {getattr(exc, 'body', '')}"
        return outcome.EXIT_ERROR, message
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DataUnusableError):
            return outcome.EXIT_UNUSABLE_INPUT, f"unusable data: {exc}"
        if isinstance(exc, (ConfigError, RollbackError)):
            return outcome.EXIT_INVALID_SETTINGS, str(exc)
        if isinstance(exc, PipelineBusyError):
            return outcome.EXIT_BUSY, str(exc)
        if isinstance(exc, (FileNotFoundError, WeightsUnavailableError, PredictError)):
            return outcome.EXIT_UNUSABLE_INPUT, str(exc)
        exc = exc.__cause__ or exc.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())

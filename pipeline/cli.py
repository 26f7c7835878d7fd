"""`ftune`: the command-line entry point.

Every command that runs the pipeline takes the same configuration options: `--config FILE` (YAML/JSON, see
`ftune config`) and repeated `--set section.key=value`, applied over the defaults in pipeline/configs.py.

Every command has the same console and the same error path (`main`): library noise is filtered from stderr unless
`--verbose`; an error the user can fix (a wrong setting, flag, path or file, a refusal of the KFP API, nothing to
do) ends the command with one line `ftune: error: ...` and an exit code of pipeline/outcome.py; anything else is a
bug: a traceback, then a line saying so, exit 1 (pipeline/cli_errors.py). Commands that only read records or talk
to KFP (`versions`, `rollback`, `submit`, `schedule`) never import TensorFlow for local paths; `run` and `ingest`
check their settings and a local data root before they load it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from pipeline import kfp_client, object_stores, outcome
from pipeline.cli_errors import report_error
from pipeline.configs import PipelineConfig, load_config
from pipeline.kubeflow_v2_runner import RUNTIME_KNOBS
from pipeline.outcome import CommandError
from serving import sidecars

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
    if getattr(args, "func", None) is cmd_compile:
        return config
    config.absolute_paths()
    # Each bucket named answers, before anything loads (a missing bucket, refused credentials: one line); s3:// opens.
    object_stores.prepare(config)
    return config


def _add_verbose_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show every log line, including TensorFlow/absl/Beam start-up messages and warnings (hidden by default)",
    )


class _Parser(argparse.ArgumentParser):
    """A wrong flag or argument is one line like every other error, exit 2 (invalid settings)."""

    def error(self, message: str):
        self.exit(outcome.EXIT_INVALID_SETTINGS, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _class_count(text: str) -> int:
    from pipeline.sample_data import SHAPE_NAMES  # one class per shape kind

    value = _int_at_least(2)(text)
    if value > len(SHAPE_NAMES):
        raise argparse.ArgumentTypeError(f"must be at most {len(SHAPE_NAMES)} (one class per shape), got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ftune")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _add_kfp_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default=os.environ.get(kfp_client.HOST_ENV),
        metavar="URL",
        help=f"Kubeflow Pipelines API endpoint, e.g. http://ml-pipeline-ui.kubeflow (default: "
        f"${kfp_client.HOST_ENV}). Authenticates with the token file named by ${kfp_client.TOKEN_PATH_ENV} "
        "when set",
    )
    parser.add_argument("--package", required=True, metavar="FILE", help="compiled pipeline (`ftune compile`)")
    parser.add_argument(
        "--experiment",
        default=kfp_client.DEFAULT_EXPERIMENT,
        metavar="NAME",
        help=f"KFP experiment, created if missing (default: {kfp_client.DEFAULT_EXPERIMENT})",
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get(kfp_client.NAMESPACE_ENV),
        metavar="NS",
        help=f"namespace of a multi-user Kubeflow (default: ${kfp_client.NAMESPACE_ENV}; none: single-user)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=kfp_client.DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait for each answer of the KFP API (default: {kfp_client.DEFAULT_TIMEOUT_S:g}); no "
        f"answer, like an unreachable host or a server error (5xx), ends with exit code {outcome.EXIT_UNAVAILABLE}",
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


def quiet_console(verbose: bool):
    """Library noise filtered from stderr (this process and its children) unless --verbose; entered (by `main`)
    before the imports that load TensorFlow, which logs as it loads."""
    import contextlib

    from pipeline.local_runner import QuietStderr

    return contextlib.nullcontext() if verbose else QuietStderr()


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipeline.cli_review import check_label_fixes
    from pipeline.local_runner import check_data_root, run_local, say
    from pipeline.reporting.run_records import latest_artifact_uri
    from pipeline.reporting.summary import ingest_summary

    config = _load(args)
    check_data_root(config)  # before TensorFlow loads: a wrong --data-root is answered at once
    check_label_fixes(config)
    with object_stores.bucket_guard(config):
        run_local(config, stop_after="ingest")
    examples_uri = latest_artifact_uri(config, sidecars.EXAMPLE_GEN, "examples")
    say(ingest_summary(examples_uri))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import contextlib

    from pipeline.cli_review import check_label_fixes
    from pipeline.local_runner import StdoutToStderr, check_data_root, enable_progress_logging, run_local, say
    from pipeline.reporting.run_records import change_decision, component_timings, load_run
    from trainer.settings import resolve_weights

    config = _load(args)
    check_data_root(config)  # before TensorFlow loads: a wrong --data-root is answered at once
    resolve_weights(config.trainer.weights)  # likewise a weights file that is not there
    check_label_fixes(config)
    enable_progress_logging(verbose=args.verbose)
    # --json: stdout carries the summary data only; progress and the text summary go to stderr.
    to_stderr = StdoutToStderr() if args.json else contextlib.nullcontext()
    with to_stderr:
        from pipeline.reporting.summary import run_summary, run_summary_data

        with object_stores.bucket_guard(config):
            result = run_local(config, stop_after="push", force=args.force)
        decision = change_decision(load_run(config))
        if decision and not decision["changed"]:
            # The change check found the served version's record (or the last refused attempt) naming these very
            # files and settings: everything after it was skipped.
            say(decision["reason"])
            status = outcome.STILL_REFUSED if decision["refused"] else outcome.NO_NEW_DATA
            data = {
                "outcome": outcome.outcome(status, decision["served_version"]),
                "message": decision["reason"],
                "spans": result.get("spans"),
                "wall_s": round(result["wall_s"], 1),
            }
        else:
            timings = component_timings(config)
            data = run_summary_data(config, result, timings)
            say(run_summary(config, result, timings, data))
    if args.json:
        print(json.dumps(data, indent=2), flush=True)
    return data["outcome"]["exit_code"]


def cmd_review(args: argparse.Namespace) -> int:
    from pipeline.cli_review import write_review

    return write_review(_load(args), args.out, args.json)


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.reporting.run_records import load_run

    config = _load(args)
    run = load_run(config)
    if run.run_id is None:
        raise CommandError(
            f"no run to report on under {config.pipeline_root}: {run.absent_reason}. Run `ftune run` first, or "
            "pass the --pipeline-root of a run",
            outcome.EXIT_UNUSABLE_INPUT,
        )
    from pipeline.reporting.report import write_report

    print(f"[ftune] report: {write_report(config, args.output)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from serving import predict

    files, missing = predict.expand_paths(args.paths)
    # Which model first (a cheap look at the serving folder), then the files, then loading it (TensorFlow).
    if args.server:
        config = _load(args)
        labels = None
        if predict.served_versions(config.serving_model_dir):
            labels = sidecars.read_labels(predict.resolve_version_dir(config.serving_model_dir, args.version)[0])
        model_dir = None
    elif args.model_dir:
        model_dir = args.model_dir
        if object_stores.is_object_store(model_dir):
            object_stores.check_reachable(model_dir, "--model-dir")
            object_stores.register_filesystems([model_dir])
    else:
        config = _load(args)
        model_dir, _ = predict.resolve_version_dir(config.serving_model_dir, args.version)
    if not files:
        raise CommandError(f"nothing to score: {_reasons(missing)}", outcome.EXIT_UNUSABLE_INPUT)
    if model_dir is None:
        predictor = predict.RestPredictor(args.server, config.push.model_name, args.version, labels=labels)
    else:
        predictor = predict.LocalPredictor(model_dir)
    print(f"[ftune] predict: {len(files)} file(s) with {predictor.source}", file=sys.stderr, flush=True)
    progress = predict.stderr_progress if len(files) > predict.DEFAULT_BATCH else None
    rows = missing + predict.predict_files(files, predictor, top_k=args.top_k, progress=progress)
    print(predict.format_rows(rows, args.format, args.top_k), flush=True)
    print(f"[ftune] {predict.summarize(rows)}", file=sys.stderr, flush=True)
    if not any(row["ok"] for row in rows):
        raise CommandError(
            f"no image could be scored: {_reasons(rows)} (each file's row says why)", outcome.EXIT_UNUSABLE_INPUT
        )
    return 0


def _reasons(rows: List[dict], shown: int = 3) -> str:
    """The reasons of `ftune predict`'s error rows, e.g. "a.jpg: empty file; b: no such file or folder; and 4 more"."""
    text = "; ".join(f"{row['path']}: {row['error']}" for row in rows[:shown])
    return text + (f"; and {len(rows) - shown} more" if len(rows) > shown else "")


def cmd_compile(args: argparse.Namespace) -> int:
    from pipeline.kubeflow_v2_runner import compile_pipeline

    path = compile_pipeline(_load(args), args.output, image=args.image, beam_args=args.beam_args or None)
    print(f"[ftune] wrote {path}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    run_id = kfp_client.submit(
        args.host,
        args.package,
        run_name=args.run_name,
        experiment=args.experiment,
        params=kfp_client.parse_params(args.params),
        namespace=args.namespace,
        pipeline_root=args.pipeline_root,
        timeout_s=args.timeout,
    )
    print(f"[ftune] submitted run {run_id}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
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
        timeout_s=args.timeout,
    )
    print(f"[ftune] created recurring run {recurring_id} ({args.cron}, UTC)")
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from pipeline.cli_versions import list_versions

    return list_versions(_load(args), as_json=args.json)


def cmd_rollback(args: argparse.Namespace) -> int:
    from pipeline.cli_versions import roll_back

    return roll_back(_load(args), to=args.to)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    p.add_argument("--classes", type=_class_count, default=3, help="number of classes (2-8, default 3)")
    p.add_argument("--per-class", type=_int_at_least(1), default=60, help="images per class (default 60)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed; same seed, same files (default 0)")
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
        "the served-model baseline, Evaluator and Pusher with LocalDagRunner (Beam's "
        "FnApiRunner in this process, MLMD in SQLite under the pipeline root). Caching is "
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
    p.add_argument(
        "--json",
        action="store_true",
        help="print the run summary's data as JSON on stdout (progress and the text summary go to stderr)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="train even when the change check finds the input files and settings of the served version's record, "
        "or of the last batch the gate refused (without it, such a run ends with 'no new data; version N stays "
        "served' or 'no new data since the refused run of ...'); also turns caching off",
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
        "review",
        help="write the latest run's flagged images (suspected label errors) to a CSV to decide on",
        description="Write the images the latest run's check of the training data flagged as likely mislabelled "
        f"to a CSV ({', '.join(sidecars.REVIEW_COLUMNS)}): `action` empty, `class` the suggested class. Set "
        "`action` to relabel, drop or keep on the rows you decided (rows left empty are ignored) and save it as "
        f"<data_root>/{sidecars.LABEL_FIXES_FILE}: the next run applies it (docs/operating.md).",
    )
    _add_config_options(p)
    p.add_argument("--out", metavar="FILE", help=f"the CSV to write (default: <pipeline_root>/{sidecars.REVIEW_FILE})")
    p.add_argument("--json", action="store_true", help="also print the rows as JSON on stdout")
    p.set_defaults(func=cmd_review)

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
        "--max-concurrency",
        type=_int_at_least(1),
        default=1,
        metavar="N",
        help="runs of this schedule allowed at once (default: 1)",
    )
    p.add_argument(
        "--catchup", action="store_true", help="after a pause, start every missed run (default: only the latest)"
    )
    p.set_defaults(func=cmd_schedule)

    for command in sub.choices.values():  # the same console on every command
        _add_verbose_option(command)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with quiet_console(args.verbose):
            return args.func(args)
    except Exception as exc:  # the one error path: a user's mistake is one line, a bug a traceback
        return report_error(exc)


def run() -> None:
    """The `ftune` program: main's exit code, also when tensorflow-io's S3 client would abort the exit (134)."""
    code = main()
    if object_stores.s3_loaded():
        object_stores.exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    run()

"""Run the pipeline on this machine: LocalDagRunner, Beam DirectRunner on all cores, MLMD in SQLite.

Caching is on, so running the same command again after a failure resumes: components whose inputs and settings
did not change are not executed again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import sys
import time
from typing import Callable, Dict, List, Sequence

from pipeline import object_stores, outcome
from pipeline.configs import LOCAL_BEAM_ARGS, PipelineConfig
from pipeline.outcome import CommandError
from pipeline.scratch import run_scratch
from serving import sidecars
from trainer.weights_digest import weights_identity

log = logging.getLogger("ftune")


def say(message: str) -> None:
    """Progress line for the user (flushed at once, independent of TFX's logging)."""
    print(f"[ftune] {message}", flush=True)


def check_data_root(config: PipelineConfig) -> None:
    """A local data.data_root must be an existing folder. Cheap and without TensorFlow: `ftune run` and `ingest`
    call it before the heavy imports, so a mistyped --data-root is answered at once (exit 3, unusable input).
    Empty (sample data) and URIs (gs://, s3://: read through TFX's filesystem by the components) are not checked
    here."""
    path = config.data.data_root
    if not path or "://" in path:
        return
    root = os.path.abspath(path)
    if not os.path.isdir(root):
        problem = "is not a folder" if os.path.exists(root) else "does not exist"
        raise CommandError(
            f"data.data_root (--data-root) {root} {problem}: pass the image folder (one subfolder of images per "
            "class, or train/ and validation/ holding them), or leave it out to use generated sample data",
            outcome.EXIT_UNUSABLE_INPUT,
        )


def prepare_data_root(config: PipelineConfig, progress: Callable[[str], None] = say) -> str:
    """The configured image folder (absolute; a URI as it is), or freshly generated sample data when none is
    configured."""
    if config.data.data_root:
        check_data_root(config)
        path = config.data.data_root
        return path if "://" in path else os.path.abspath(path)
    return ensure_sample_data(config, progress)


def ensure_sample_data(config: PipelineConfig, progress: Callable[[str], None] = say) -> str:
    """Generates sample data under the pipeline root once per parameter set.

    Regenerating would rewrite identical files with new timestamps, which changes ExampleGen's input fingerprint
    and defeats caching, so an existing folder made with the same parameters is reused.
    """
    from pipeline.sample_data import generate_presplit_sample_data, generate_sample_data

    root = os.path.abspath(config.sample_data_dir)
    params = {
        "classes": config.data.sample_classes,
        "per_class": config.data.sample_per_class,
        "seed": config.data.sample_seed,
    }
    # Pre-split (train/ + validation/) unless the hash split was asked for: every class then gets its eval_fraction
    # share of eval images, enough for the per-class gate (a hash split left two demo classes below its minimum).
    presplit = config.data.split_mode != "hash"
    if presplit:
        params.update(
            eval_fraction=config.data.eval_fraction, train_dir=config.data.train_dir, eval_dir=config.data.eval_dir
        )
    marker = os.path.join(root, ".params.json")
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == params:
                progress(f"using sample data in {root}")
                return root
    if os.path.isdir(root):
        import shutil

        shutil.rmtree(root)
    progress(f"generating sample data in {root} ({params['classes']} classes x {params['per_class']} images)")
    if presplit:
        generate_presplit_sample_data(root, progress=progress, **params)
    else:
        generate_sample_data(root, progress=progress, **params)
    with open(marker, "w") as f:
        json.dump(params, f)
    return root


# How the Trainer's hardware warning starts (components/fine_tune_trainer.py logs "Trainer: " + ProfileChoice.line()).
PROFILE_WARNING = "Trainer: profile "


class _ProgressFilter(logging.Filter):
    """Lets through the lines a user follows a run by: component start/finish (TFX), cache hits, and the
    progress lines our components log (prefixed with their name). TFX's other INFO chatter stays hidden.

    TFX's "Component X is running." / "is finished." become "X started" / "X finished in N s" (with "(cached)"
    when TFX reused an earlier execution's outputs instead of running it); a node the change check's Cond skips
    ends on "X skipped (nothing to do)" instead."""

    PREFIXES = (
        "Component ",
        "A cached execution",
        "ImageExampleGen:",
        "Trainer:",
        "Evaluator:",
        "Pusher:",
        f"{sidecars.SERVED_MODEL_BASELINE}:",
        f"{sidecars.CHANGE_CHECK}:",
        "Fine-tune",
        "Phase",
    )

    _RUNNING = re.compile(r"^Component (\S+) is running\.$")
    _FINISHED = re.compile(r"^Component (\S+) is finished\.$")
    _SKIPPED = re.compile(r"^Skipping execution for (\S+)$")

    def __init__(self):
        super().__init__()
        self._started: Dict[str, float] = {}
        self._skipped: set = set()
        self._cached = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            # The Trainer's warning that it has other hardware than its profile was chosen for is shown too.
            return "quarantined" in message or message.startswith(PROFILE_WARNING) or record.levelno >= logging.ERROR
        if message.startswith("A cached execution"):
            self._cached = True
            return False
        running, finished = self._RUNNING.match(message), self._FINISHED.match(message)
        skipped = self._SKIPPED.match(message)
        if skipped:
            self._skipped.add(skipped.group(1))
            self._rewrite(record, f"{skipped.group(1)} skipped (nothing to do)")
            return True
        if finished and finished.group(1) in self._skipped:
            return False
        if running:
            self._started[running.group(1)] = time.time()
            self._cached = False
            self._rewrite(record, f"{running.group(1)} started")
        elif finished:
            node = finished.group(1)
            seconds = time.time() - self._started.pop(node, time.time())
            self._rewrite(record, f"{node} finished in {seconds:.1f} s{' (cached)' if self._cached else ''}")
            self._cached = False
        return message.startswith(self.PREFIXES)

    @staticmethod
    def _rewrite(record: logging.LogRecord, message: str) -> None:
        record.msg, record.args = message, None


# Lines of library start-up and housekeeping noise, from this process and from every Beam worker process (they
# share its stderr): TF/XLA C++ logs (cuDNN/cuFFT/cuBLAS factory registration, TensorRT, CPU instructions),
# absl's pre-init notice, absl/glog-formatted Python logs, Python's default-format log lines of Beam workers,
# Python warnings (FutureWarning & co.) with the source line printed after them, libjpeg's own complaints
# about a broken file (the file's row or quarantine entry already says so), the TFLite converter's and
# interpreter's notices, and an error TF's garbage collection ignores at exit (with its 3-line traceback).
NOISE_LINE = re.compile(
    r"""^(?:
        \d{4}-\d\d-\d\d\ \d\d:\d\d:\d\d\.\d+:\ [IWEF]\ |
        [IWEF]\d{4}\ [\d:.]+\s+\d+\ \S+:\d+\]|
        WARNING:\ All\ log\ messages\ before\ absl::InitializeLog|
        (?:DEBUG|INFO|WARNING):[\w.]+:|
        \S+:\d+:\ \w*Warning:|
        To\ enable\ the\ following\ instructions:|
        Improper\ call\ to\ JPEG\ library|Premature\ end\ of\ JPEG\ file|Corrupt\ JPEG\ data|
        Instructions\ for\ updating:|
        INFO:\ Created\ TensorFlow\ Lite|fully_quantize:\ |
        Exception\ ignored\ in:\ <function\ AtomicFunction\.__del__
    )""",
    re.VERBOSE,
)
_PYTHON_WARNING = re.compile(r"^\S+:\d+: \w*Warning:")
# Lines that start something worth showing: they end a dropped multi-line notice.
_RECORD_START = re.compile(r"^(?:\[ftune\]|ftune:|Traceback|Exception|\w*Error\b)")


def is_noise(line: str) -> bool:
    # A quarantined file matters to the user, whichever process logs it and in whatever format.
    return bool(NOISE_LINE.match(line)) and "quarantined" not in line


class HideExecutionFailed(logging.Filter):
    """Drops TFX's "Execution N failed." (its launcher logs it through absl at ERROR before re-raising a
    component's error): the command reports that error itself, in one line. Also TFX's warning that a component's
    temporary folder is gone, with its whole execution info (dozens of lines): on gs:// and s3:// an unused folder
    never existed (object stores have no empty folders). Both shown with --verbose."""

    _LINE = re.compile(r"^(?:Execution \d+ failed\.$|execution_info\.tmp_dir \S+ is not found)")

    def filter(self, record: logging.LogRecord) -> bool:
        return not self._LINE.match(record.getMessage())


class QuietStderr:
    """Filters library noise (NOISE_LINE) out of file descriptor 2 for this process and its children.

    Beam's DirectRunner workers are child processes writing to the same stderr, and TensorFlow's C++ logs bypass
    Python, so the filter sits on the file descriptor: fd 2 becomes a pipe whose reader thread forwards every
    line that is not noise to the real stderr. `with QuietStderr():` restores fd 2 on exit.

    One ERROR line is dropped before it is formatted (its format depends on which handler prints it): TFX's
    "Execution N failed." (HideExecutionFailed, on absl's logger), which only precedes the one-line error.
    """

    def __init__(self):
        self._saved = None
        self._thread = None
        self._hide = HideExecutionFailed()

    def __enter__(self) -> QuietStderr:
        import sys
        import threading

        # absl's own logger object (an ABSLLogger): creating a plain "absl" logger before absl loads would
        # replace it. absl.logging is light (no TensorFlow).
        from absl import logging as absl_logging

        absl_logging.get_absl_logger().addFilter(self._hide)
        sys.stderr.flush()
        self._saved = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._thread = threading.Thread(target=self._pump, args=(read_fd, self._saved), daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _pump(read_fd: int, out_fd: int) -> None:
        state, budget = None, 0
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            for raw in iter(pipe.readline, b""):
                line = raw.decode("utf-8", "replace")
                # A Python warning is followed by the indented source line that raised it; TF's deprecation
                # notices by a few lines of instructions.
                if state == "warning" and line[:1].isspace():
                    state = None
                    continue
                if state == "block" and budget > 0 and not _RECORD_START.match(line) and not is_noise(line):
                    budget -= 1
                    continue
                if state == "gc" and budget > 0 and not line.startswith("[ftune]"):
                    budget -= 1  # the traceback of an error TF's garbage collection ignores
                    continue
                state = None
                if is_noise(line):
                    if _PYTHON_WARNING.match(line):
                        state = "warning"
                    elif line.startswith("Instructions for updating:"):
                        state, budget = "block", 2  # TF's instructions: one or two lines
                    elif line.startswith("Exception ignored in:"):
                        state, budget = "gc", 3
                    continue
                try:
                    os.write(out_fd, raw)
                except OSError:  # stderr closed (e.g. a pipe whose reader left): keep draining, never block writers
                    pass

    def __exit__(self, *exc) -> None:
        import sys

        sys.stderr.flush()
        os.dup2(self._saved, 2)  # the pipe's last writer in this process is gone; workers have exited
        self._thread.join(timeout=2)
        os.close(self._saved)
        from absl import logging as absl_logging

        absl_logging.get_absl_logger().removeFilter(self._hide)


class StdoutToStderr:
    """Sends everything written to stdout, by Python or by C++ libraries and child processes (file descriptor 1),
    to stderr for the duration: `ftune run --json` keeps stdout for the JSON alone."""

    def __enter__(self) -> StdoutToStderr:
        import contextlib
        import sys

        sys.stdout.flush()
        self._saved = os.dup(1)
        os.dup2(2, 1)
        self._python = contextlib.redirect_stdout(sys.stderr)
        self._python.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        import sys

        self._python.__exit__(*exc)
        sys.stdout.flush()
        os.dup2(self._saved, 1)
        os.close(self._saved)


def enable_progress_logging(verbose: bool = False) -> None:
    """Shows component progress on stderr with timestamps, TFX's other INFO chatter filtered out (all of it shown
    when `verbose`).

    TFX logs through absl, which propagates to Python's root logger; our components log to the root logger too.
    So one filtered handler on the root logger sees both."""
    import sys
    import warnings

    if not verbose:
        # Google client libraries warn about Python 3.10 on import, in every Beam worker process too.
        os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
        warnings.filterwarnings("ignore", category=FutureWarning)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[ftune] %(asctime)s %(message)s", "%H:%M:%S"))
    if not verbose:
        handler.addFilter(_ProgressFilter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # Through absl's API, not logging.getLogger("absl").setLevel: code that lowers the verbosity for a while
    # (TFT while saving its graph) restores absl's own setting afterwards, which would otherwise be WARNING.
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)


def beam_args(config: PipelineConfig) -> List[str]:
    args = list(config.beam_args) or list(LOCAL_BEAM_ARGS)
    return object_stores.beam_plugin_args(config.storage_paths().values(), args)


def preflight_weights(config: PipelineConfig, progress: Callable[[str], None] = say) -> None:
    """Resolves the base's pretrained weights before anything runs (--weights/config, then FTUNE_WEIGHTS, then
    Keras' ImageNet download) and builds the base once with them, so a missing or incompatible weights file
    stops the run here with instructions instead of after ingestion. The resolved absolute path is written back
    into the config, so the Trainer (and its cache key) sees exactly this file."""
    from trainer.model import get_base_spec
    from trainer.weights import build_base, resolve_weights

    weights = resolve_weights(config.trainer.weights)
    if weights is None:
        progress("WARNING: trainer.weights=none: the frozen base is random, so the model will be near chance")
        return
    spec = get_base_spec(config.trainer.base_model)
    size = config.trainer.image_size
    build_base(spec.constructor, (size, size, 3), weights)
    config.trainer.weights = weights
    progress(f"base {config.trainer.base_model} with weights: {weights}")


LOCK_FILE = ".ftune.lock"


class PipelineBusyError(RuntimeError):
    """Another `ftune` process is running a pipeline on the same pipeline root (the message names it)."""


@contextlib.contextmanager
def pipeline_lock(pipeline_root: str):
    """Holds `<pipeline_root>/.ftune.lock` for the duration of a run, so two runs never share one MLMD database
    and one serving folder at once. An OS lock (flock): a killed run's lock goes with its process, and the file
    left behind only records who held it last. Raises PipelineBusyError naming the holder (pid, host, start)."""
    os.makedirs(pipeline_root, exist_ok=True)
    path = os.path.join(pipeline_root, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            holder = {}
        os.close(fd)
        raise PipelineBusyError(
            f"another ftune run is using the pipeline root {pipeline_root}: pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')}, started {holder.get('started', '?')} ({holder.get('command', '')}). Wait "
            f"for it to finish or stop that process; two runs at once would share one metadata store and one "
            f"serving folder (lock file: {path})"
        ) from None
    try:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv[:3]),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield record
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def resolve_config_weights(config: PipelineConfig) -> None:
    """trainer.weights as the Trainer will load it (--weights/config, then FTUNE_WEIGHTS, then "imagenet"),
    written into the config: the change check compares it with the served record, which holds the resolved value.
    Cheap (no model is built); a missing weights file stops the run here, before any data is touched."""
    from trainer.weights import resolve_weights

    weights = resolve_weights(config.trainer.weights)
    if weights is not None:
        config.trainer.weights = weights


def change_key(config: PipelineConfig, data_root: str, split_mode: str, spans: Sequence[str]) -> str:
    """What the change check's decision depends on, as seen now: the served versions, the selected input files'
    fingerprint, the refused attempt and the weights file's content (other bytes at the same path). MLMD reuses
    the last decision (and the cached components after it, e.g. after a crash) only while all four are
    unchanged."""
    import hashlib

    from components.image_listing import input_fingerprint, make_input_config
    from serving.model_versions import serving_state

    input_config = make_input_config(split_mode, config.data.train_dir, config.data.eval_dir)
    refused = sidecars.read_refused_attempt(config.serving_model_dir)
    refused_digest = hashlib.sha256(json.dumps(refused, sort_keys=True).encode()).hexdigest()[:16] if refused else ""
    return "\n".join(
        (
            serving_state(config.serving_model_dir),
            input_fingerprint(data_root, input_config, spans, config.data.label_fixes),
            refused_digest,
            weights_identity(config.trainer.weights),
        )
    )


def run_local(
    config: PipelineConfig,
    stop_after: str = "push",
    progress: Callable[[str], None] = say,
    force: bool = False,
) -> Dict:
    """Runs the pipeline locally; returns {'data_root', 'split_mode', 'spans', 'wall_s'}.

    A full run (stop_after="push") starts with the change check (components/change_check.py), as on Kubeflow: when
    the served version's record or the last refused attempt names the same input files and settings, every later
    component is skipped (the CLI reads the decision from MLMD: reporting/run_records.change_decision). `force`
    trains anyway and turns MLMD's cache off, so every component executes again."""
    config.validate().absolute_paths()
    with pipeline_lock(config.local_root), run_scratch():
        return _run_local_locked(config, stop_after, progress, force)


def _run_local_locked(config: PipelineConfig, stop_after: str, progress: Callable[[str], None], force: bool) -> Dict:
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    from components.image_listing import resolve_split_mode, select_spans

    if stop_after != "ingest":
        resolve_config_weights(config)
    data_root = prepare_data_root(config, progress)
    spans = select_spans(data_root, config.data.spans)
    split_mode = resolve_split_mode(
        data_root, config.data.split_mode, config.data.train_dir, config.data.eval_dir, spans
    )
    progress(f"data: {data_root} (split mode: {split_mode}); pipeline root: {config.pipeline_root}")
    if spans:
        progress(f"spans: {', '.join(spans)} (data.spans={config.data.spans})")
    if force and stop_after == "push":
        progress("--force: training without comparing with the served version, MLMD cache off")
    if stop_after != "ingest":
        preflight_weights(config, progress)
    key = change_key(config, data_root, split_mode, spans) if stop_after == "push" else ""
    pipeline = local_pipeline(config, data_root, split_mode, stop_after, enable_cache=not force, force=force, key=key)
    started = time.time()
    LocalDagRunner().run(pipeline)
    wall = time.time() - started
    progress(f"pipeline finished in {wall:.1f} s")
    return {"data_root": data_root, "split_mode": split_mode, "spans": spans, "wall_s": wall}


def local_pipeline(
    config: PipelineConfig,
    data_root: str,
    split_mode: str,
    stop_after: str = "push",
    enable_cache: bool = True,
    force: bool = False,
    key: str = "",
):
    """The pipeline `run_local` runs: MLMD in SQLite under the pipeline root, `beam_args(config)` for every
    Beam-based component, caching on unless `enable_cache` is False (`ftune run --force`)."""
    from tfx.orchestration import metadata

    from pipeline.pipeline import create_pipeline, resolve_profile
    from serving.model_versions import serving_state
    from trainer.profiles import local_hardware

    config, choice = resolve_profile(config, local_hardware())
    return create_pipeline(
        config,
        data_root=data_root,
        split_mode=split_mode,
        stop_after=stop_after,
        enable_cache=enable_cache,
        metadata_connection_config=metadata.sqlite_metadata_connection_config(config.metadata_path),
        beam_pipeline_args=beam_args(config),
        serving_state=serving_state(config.serving_model_dir),
        force=force,
        change_key=key,
        weights_digest=weights_identity(config.trainer.weights),
        profile_choice=choice,
    )

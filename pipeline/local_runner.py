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
import socket
import sys
import time
from typing import Callable, Dict, List

from pipeline.configs import LOCAL_BEAM_ARGS, PipelineConfig

log = logging.getLogger("ftune")


def say(message: str) -> None:
    """Progress line for the user (flushed at once, independent of TFX's logging)."""
    print(f"[ftune] {message}", flush=True)


def prepare_data_root(config: PipelineConfig, progress: Callable[[str], None] = say) -> str:
    """The configured image folder, or freshly generated sample data when none is configured."""
    if config.data.data_root:
        root = os.path.abspath(config.data.data_root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"data.data_root {root} does not exist or is not a directory")
        return root
    return ensure_sample_data(config, progress)


def ensure_sample_data(config: PipelineConfig, progress: Callable[[str], None] = say) -> str:
    """Generates sample data under the pipeline root once per parameter set.

    Regenerating would rewrite identical files with new timestamps, which changes ExampleGen's input fingerprint
    and defeats caching, so an existing folder made with the same parameters is reused.
    """
    from pipeline.sample_data import generate_sample_data

    root = os.path.abspath(config.sample_data_dir)
    params = {
        "classes": config.data.sample_classes,
        "per_class": config.data.sample_per_class,
        "seed": config.data.sample_seed,
    }
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
    generate_sample_data(root, progress=progress, **params)
    with open(marker, "w") as f:
        json.dump(params, f)
    return root


class _ProgressFilter(logging.Filter):
    """Lets through the lines a user follows a run by: component start/finish (TFX), cache hits, and the
    progress lines our components log (prefixed with their name). TFX's other INFO chatter stays hidden."""

    PREFIXES = (
        "Component ",
        "A cached execution",
        "ImageExampleGen:",
        "Trainer:",
        "Evaluator:",
        "Pusher:",
        "ServedModelBaseline:",
        "Fine-tune",
        "Phase",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return "quarantined" in message or record.levelno >= logging.ERROR
        return message.startswith(self.PREFIXES)


def enable_progress_logging() -> None:
    """Shows component progress on stderr with timestamps, TFX's other INFO chatter filtered out.

    TFX logs through absl, which propagates to Python's root logger; our components log to the root logger too.
    So one filtered handler on the root logger sees both."""
    import sys
    import warnings

    # Google client libraries warn about Python 3.10 on import, in every Beam worker process too.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    warnings.filterwarnings("ignore", category=FutureWarning)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[ftune] %(asctime)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_ProgressFilter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # Through absl's API, not logging.getLogger("absl").setLevel: code that lowers the verbosity for a while
    # (TFT while saving its graph) restores absl's own setting afterwards, which would otherwise be WARNING.
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)


def beam_args(config: PipelineConfig) -> List[str]:
    return list(config.beam_args) or list(LOCAL_BEAM_ARGS)


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


def run_local(config: PipelineConfig, stop_after: str = "push", progress: Callable[[str], None] = say) -> Dict:
    """Runs the pipeline locally, holding the pipeline root's lock; returns {'data_root', 'split_mode', 'wall_s'}."""
    config.validate().absolute_paths()
    with pipeline_lock(config.pipeline_root):
        return _run_local_locked(config, stop_after, progress)


def _run_local_locked(config: PipelineConfig, stop_after: str, progress: Callable[[str], None]) -> Dict:
    from tfx import v1 as tfx

    from components.image_example_gen import resolve_split_mode
    from pipeline.pipeline import create_pipeline
    from serving.model_versions import serving_state

    if stop_after != "ingest":
        preflight_weights(config, progress)
    data_root = prepare_data_root(config, progress)
    split_mode = resolve_split_mode(data_root, config.data.split_mode, config.data.train_dir, config.data.eval_dir)
    progress(f"data: {data_root} (split mode: {split_mode}); pipeline root: {os.path.abspath(config.pipeline_root)}")
    pipeline = create_pipeline(
        config,
        data_root=data_root,
        split_mode=split_mode,
        stop_after=stop_after,
        enable_cache=True,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path),
        beam_pipeline_args=beam_args(config),
        serving_state=serving_state(config.serving_model_dir),
    )
    started = time.time()
    tfx.orchestration.LocalDagRunner().run(pipeline)
    wall = time.time() - started
    progress(f"pipeline finished in {wall:.1f} s")
    return {"data_root": data_root, "split_mode": split_mode, "wall_s": wall}

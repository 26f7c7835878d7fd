"""Run the pipeline on this machine: LocalDagRunner, Beam DirectRunner on all cores, MLMD in SQLite.

Caching is on, so running the same command again after a failure resumes: components whose inputs and settings
did not change are not executed again.
"""

from __future__ import annotations

import json
import logging
import os
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


def run_local(config: PipelineConfig, stop_after: str = "push", progress: Callable[[str], None] = say) -> Dict:
    """Runs the pipeline locally; returns {'data_root', 'split_mode', 'wall_s'}."""
    from tfx import v1 as tfx

    from components.image_example_gen import resolve_split_mode

    config.validate().absolute_paths()
    os.makedirs(config.pipeline_root, exist_ok=True)
    if stop_after != "ingest":
        preflight_weights(config, progress)
    data_root = prepare_data_root(config, progress)
    split_mode = resolve_split_mode(data_root, config.data.split_mode, config.data.train_dir, config.data.eval_dir)
    progress(f"data: {data_root} (split mode: {split_mode}); pipeline root: {os.path.abspath(config.pipeline_root)}")
    pipeline = local_pipeline(config, data_root, split_mode, stop_after)
    started = time.time()
    tfx.orchestration.LocalDagRunner().run(pipeline)
    wall = time.time() - started
    progress(f"pipeline finished in {wall:.1f} s")
    return {"data_root": data_root, "split_mode": split_mode, "wall_s": wall}


def local_pipeline(config: PipelineConfig, data_root: str, split_mode: str, stop_after: str = "push"):
    """The pipeline `run_local` runs: MLMD in SQLite under the pipeline root, `beam_args(config)` for every
    Beam-based component, caching on."""
    from tfx import v1 as tfx

    from pipeline.pipeline import create_pipeline
    from serving.model_versions import serving_state

    return create_pipeline(
        config,
        data_root=data_root,
        split_mode=split_mode,
        stop_after=stop_after,
        enable_cache=True,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path),
        beam_pipeline_args=beam_args(config),
        serving_state=serving_state(config.serving_model_dir),
    )

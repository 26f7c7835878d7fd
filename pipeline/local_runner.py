"""Run the pipeline on this machine: LocalDagRunner, Beam DirectRunner on all cores, MLMD in SQLite.

Caching is on, so running the same command again after a failure resumes: components whose inputs and settings
did not change are not executed again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

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


def _flatten(value: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(value, dict):
        flat: Dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def _with_resolved_weights(config: PipelineConfig) -> PipelineConfig:
    """A copy of config with trainer.weights as preflight_weights will set it (without building the base)."""
    import copy

    from trainer.weights import resolve_weights

    resolved = copy.deepcopy(config)
    weights = resolve_weights(config.trainer.weights)
    if weights is not None:
        resolved.trainer.weights = weights
    return resolved


def unchanged_since_served(
    config: PipelineConfig, data_root: str, split_mode: str, spans: Sequence[str]
) -> Dict[str, Any]:
    """Compares this run's selected input files and settings with the served version's own record
    (serving/model_record.py), not with MLMD: a fresh pipeline root or another machine sees the same answer.

    Returns {"unchanged": bool, "version": served version or None, "reason": why training is (not) needed}."""
    from components.image_example_gen import input_fingerprint, make_input_config
    from serving.model_record import read_record
    from serving.model_versions import latest_served

    version, path = latest_served(config.serving_model_dir)
    if path is None:
        return {"unchanged": False, "version": None, "reason": "nothing is served yet"}
    record = read_record(path) or {}
    recorded_fingerprint = (record.get("data") or {}).get("fingerprint")
    if not recorded_fingerprint or record.get("settings") is None:
        return {"unchanged": False, "version": version, "reason": f"served version {version} has no data record"}
    input_config = make_input_config(split_mode, config.data.train_dir, config.data.eval_dir)
    if input_fingerprint(data_root, input_config, spans) != recorded_fingerprint:
        return {"unchanged": False, "version": version, "reason": f"input files differ from version {version}'s"}
    now = _flatten(json.loads(json.dumps(config.to_dict())))
    then = _flatten(record["settings"])
    changed = sorted(key for key in set(now) | set(then) if now.get(key) != then.get(key))
    if changed:
        detail = ", ".join(f"{k} ({then.get(k)!r} -> {now.get(k)!r})" for k in changed[:5])
        return {"unchanged": False, "version": version, "reason": f"settings differ from version {version}'s: {detail}"}
    return {"unchanged": True, "version": version, "reason": f"no new data; version {version} stays served"}


def run_local(
    config: PipelineConfig,
    stop_after: str = "push",
    progress: Callable[[str], None] = say,
    force: Optional[bool] = None,
) -> Dict:
    """Runs the pipeline locally; returns {'data_root', 'split_mode', 'spans', 'wall_s'}.

    For a full run (stop_after="push"), unless `force` is true, the run first compares the selected input files
    and the settings with the served version's record; when both are the same nothing runs and the result is
    {'skipped': True, 'served_version': N, 'message': ...}. `force` also turns MLMD's cache off, so every
    component executes again."""
    from tfx import v1 as tfx

    from components.image_example_gen import resolve_split_mode, select_spans
    from pipeline.pipeline import create_pipeline
    from serving.model_versions import serving_state

    config.validate().absolute_paths()
    os.makedirs(config.pipeline_root, exist_ok=True)
    if stop_after != "ingest":
        from trainer.weights import resolve_weights

        resolve_weights(config.trainer.weights)  # a missing weights file stops the run before any data is touched
    data_root = prepare_data_root(config, progress)
    spans = select_spans(data_root, config.data.spans)
    split_mode = resolve_split_mode(
        data_root, config.data.split_mode, config.data.train_dir, config.data.eval_dir, spans
    )
    progress(f"data: {data_root} (split mode: {split_mode}); pipeline root: {os.path.abspath(config.pipeline_root)}")
    if spans:
        progress(f"spans: {', '.join(spans)} (data.spans={config.data.spans})")
    if stop_after == "push" and force is not None:
        if force:
            progress("--force: training without comparing with the served version, MLMD cache off")
        else:
            # Before the weights preflight (which builds the base): a no-op run should end in seconds. The
            # settings are compared with trainer.weights resolved, as the preflight writes it and the record holds.
            check = unchanged_since_served(_with_resolved_weights(config), data_root, split_mode, spans)
            if check["unchanged"]:
                return {"skipped": True, "served_version": check["version"], "message": check["reason"], "spans": spans}
            progress(f"training: {check['reason']}")
    if stop_after != "ingest":
        preflight_weights(config, progress)
    pipeline = create_pipeline(
        config,
        data_root=data_root,
        split_mode=split_mode,
        stop_after=stop_after,
        enable_cache=not force,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path),
        beam_pipeline_args=beam_args(config),
        serving_state=serving_state(config.serving_model_dir),
    )
    started = time.time()
    tfx.orchestration.LocalDagRunner().run(pipeline)
    wall = time.time() - started
    progress(f"pipeline finished in {wall:.1f} s")
    return {"data_root": data_root, "split_mode": split_mode, "spans": spans, "wall_s": wall}

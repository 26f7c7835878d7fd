"""The one pipeline definition, shared by every runner (local LocalDagRunner and Kubeflow Pipelines v2).

Modelled on TFX's templates: `create_pipeline` takes plain values, builds the components in order and returns a
`tfx.dsl.Pipeline`. Runners decide where it runs (metadata store, Beam args, container image), never what runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, List, Mapping, Optional, Tuple

# TFX's modules, not its public `tfx.v1` package: importing `tfx.v1` also imports its Google Cloud extensions
# (aiplatform and more), ~2.5 s of every `ftune run`'s and every Kubeflow pod's start-up for nothing used here.
from tfx.components import ExampleValidator, SchemaGen, StatisticsGen, Transform
from tfx.dsl.experimental.conditionals.conditional import Cond
from tfx.orchestration.pipeline import Pipeline
from tfx.proto.trainer_pb2 import EvalArgs, TrainArgs

from components import atomic_pusher, change_check, evaluator_gate, fine_tune_trainer
from components.image_example_gen import ImageExampleGen
from components.served_model_baseline import ServedModelBaseline
from pipeline.configs import PipelineConfig
from serving import sidecars
from trainer import profiles
from trainer.weights_digest import is_digest

# Stages a caller can stop after (`ftune ingest` uses "ingest", trainer tests "train").
STAGES = ("ingest", "train", "push")
# The module functions are referenced by import path: the project is installed (editable locally, in the image
# on Kubeflow), so TFX imports them instead of packaging a copy of a source file.
PREPROCESSING_FN = "components.image_transform.preprocessing_fn"
RUN_FN = "components.fine_tune_trainer.run_fn"


def create_pipeline(
    config: PipelineConfig,
    data_root: str,
    split_mode: str,
    *,
    stop_after: str = "push",
    enable_cache: bool = True,
    metadata_connection_config: Optional[object] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    serving_state: str = "",
    runtime_parameters: Optional[Mapping[str, Any]] = None,
    force: bool = False,
    change_key: str = "",
    weights_digest: str = "",
    profile_choice: Optional[profiles.ProfileChoice] = None,
) -> Pipeline:
    """Builds the pipeline.

    Args:
      config: the typed configuration (knobs for every component).
      data_root: the image folder (already resolved: sample data generated, split mode decided).
      split_mode: "hash" or "presplit" (see components/image_example_gen.py).
      stop_after: one of STAGES; later components are left out.
      enable_cache: reuse outputs of unchanged component runs (a re-run after a failure resumes).
      metadata_connection_config: MLMD connection (local runner); None for Kubeflow, which brings its own.
      beam_pipeline_args: args for Beam-based components (DirectRunner settings or a distributed runner).
      serving_state: the served versions' fingerprint (ServedModelBaseline re-runs when it changes); "" when
        the runner cannot see the serving directory at build time (then disable caching for that node).
      runtime_parameters: Kubeflow run parameters {name: RuntimeParameter} (kubeflow_v2_runner.RUNTIME_KNOBS:
        data_root, the Trainer's RUNTIME_OVERRIDES, accuracy_floor, and `force`); None locally (the config's
        values are used).
      force: train even when the change check finds nothing new (`ftune run --force`; on Kubeflow the `force`
        run parameter).
      change_key: what the change check's decision depends on, seen by the local runner at build time (served
        versions, input fingerprint, refused attempt): MLMD reuses the decision, and what follows it, only while
        that is unchanged. "" on Kubeflow, where the check is never cached.
      weights_digest: trainer.weights as the local runner's change check compares it (`sha256:<hex>` of a weights
        file, trainer/weights_digest.py): in the Trainer's custom_config (which it does not read) so that MLMD
        trains again when other bytes sit at the same path. "" on Kubeflow and for keywords and URIs.
      profile_choice: what `trainer.profile` resolved to, `config` holding its trainer settings (the runners call
        `resolve_profile` with the Trainer's hardware: the local runner this machine's GPUs, Kubeflow
        kubeflow.gpu_count); None: resolved here for a Trainer without a GPU. Resolved once, before any component
        is built, because Transform resizes to the profile's image size; every component, the change check's
        settings included, sees the resolved trainer settings.

    A full pipeline (stop_after="push") starts with the change check (components/change_check.py); every other
    component runs under `tfx.dsl.Cond` on its decision, so a run with nothing new (or only a batch the gate already
    refused) ends after the check, locally and on Kubeflow alike.
    """
    if stop_after not in STAGES:
        raise ValueError(f"stop_after must be one of {STAGES}, got {stop_after!r}")
    if profile_choice is None:
        config, profile_choice = resolve_profile(config, None)
    components = []
    run_params = dict(runtime_parameters or {})
    guard = contextlib.nullcontext()
    check = None
    if stop_after == "push":
        check = change_check.ChangeCheck(
            data_root=run_params.get("data_root", data_root),
            split_mode=split_mode,
            train_dir=config.data.train_dir,
            eval_dir=config.data.eval_dir,
            spans=config.data.spans,
            settings=config.to_dict(),
            serving_model_dir=config.serving_model_dir,
            force=run_params.get("force", int(force)),
            cache_key=change_key,
            **{k: run_params[k] for k in change_check.OVERRIDES if k in run_params},
        ).with_id(sidecars.CHANGE_CHECK)
        components.append(check)
        # TFX compiles this into each guarded task's triggerPolicy.condition on Kubeflow; LocalDagRunner skips the
        # guarded nodes itself. The property is always set, so the condition can always be evaluated.
        decision = check.outputs[change_check.DECISION_KEY]
        guard = Cond(decision.future()[0].custom_property(change_check.CHANGED_PROPERTY) == 1)
    with guard:
        components += _pipeline_components(
            config, data_root, split_mode, stop_after, serving_state, run_params, check, weights_digest, profile_choice
        )

    return Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )


def resolve_profile(
    config: PipelineConfig, hardware: Optional[profiles.Hardware]
) -> Tuple[PipelineConfig, profiles.ProfileChoice]:
    """A copy of `config` whose trainer settings are those of the profile `trainer.profile` resolves to on the
    Trainer's `hardware` (None: no GPU), and that choice."""
    hardware = hardware or profiles.Hardware(0, "no GPU given to the pipeline")
    written = {key.split(".", 1)[1] for key in config.written_keys if key.startswith("trainer.")}
    trainer_config, choice = profiles.resolve(config.trainer, hardware, written)
    resolved = dataclasses.replace(config, trainer=trainer_config)
    resolved.written_keys = config.written_keys
    return resolved, choice


def _weights_digest_config(weights_digest: str) -> dict:
    """The Trainer's custom_config entry of the weights' digest (none without one: unchanged cache keys)."""
    return {fine_tune_trainer.WEIGHTS_DIGEST_KEY: weights_digest} if is_digest(weights_digest) else {}


def _pipeline_components(
    config: PipelineConfig,
    data_root: str,
    split_mode: str,
    stop_after: str,
    serving_state: str,
    run_params: Mapping[str, Any],
    check: Optional[change_check.ChangeCheck],
    weights_digest: str,
    choice: profiles.ProfileChoice,
) -> list:
    """ImageExampleGen to the Pusher (as far as `stop_after`), in order."""
    data = config.data
    components = []

    example_gen = ImageExampleGen(
        input_base=run_params.get("data_root", data_root), split_mode=split_mode, data=data
    ).with_id(sidecars.EXAMPLE_GEN)
    components.append(example_gen)

    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"]).with_id(sidecars.STATISTICS_GEN)
    components.append(statistics_gen)
    schema_gen = SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True).with_id(
        sidecars.SCHEMA_GEN
    )
    components.append(schema_gen)

    if stop_after != "ingest":
        example_validator = ExampleValidator(
            statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
        ).with_id(sidecars.EXAMPLE_VALIDATOR)
        components.append(example_validator)

        transform = Transform(
            examples=example_gen.outputs["examples"],
            schema=schema_gen.outputs["schema"],
            preprocessing_fn=PREPROCESSING_FN,
            custom_config={"image_size": config.trainer.image_size, "max_image_pixels": data.max_image_pixels},
            # Statistics over serialized image tensors say nothing useful and cost a pass over the data.
            disable_statistics=True,
        ).with_id(sidecars.TRANSFORM)
        components.append(transform)

        # The version TF Serving serves now: the Evaluator's baseline; for the Trainer, the warm-start source (when
        # trainer.warm_start=auto) and the data its training data is compared with (components/data_findings.py).
        baseline = ServedModelBaseline(serving_model_dir=config.serving_model_dir, serving_state=serving_state).with_id(
            sidecars.SERVED_MODEL_BASELINE
        )
        components.append(baseline)

        trainer = fine_tune_trainer.FineTuneTrainer(
            run_fn=RUN_FN,
            examples=transform.outputs["transformed_examples"],
            transform_graph=transform.outputs["transform_graph"],
            schema=schema_gen.outputs["schema"],
            # Epochs, early stopping and batch size come from the trainer config; TFX's step counts are unused.
            train_args=TrainArgs(num_steps=0),
            eval_args=EvalArgs(num_steps=0),
            custom_config={
                "trainer": dataclasses.asdict(config.trainer),
                fine_tune_trainer.TFLITE_KEY: {
                    "mode": config.push.tflite,
                    "max_accuracy_drop": config.eval.max_tflite_accuracy_drop,
                },
                fine_tune_trainer.PROFILE_KEY: choice.as_dict(),
                **_weights_digest_config(weights_digest),
            },
            base_model=baseline.outputs["baseline_model"],
            # The ingest report's kept files (label fixes): the check of the training data does not flag them.
            ingested_examples=example_gen.outputs["examples"],
            **{k: run_params[k] for k in fine_tune_trainer.RUNTIME_OVERRIDES if k in run_params},
        ).with_id(sidecars.TRAINER)
        components.append(trainer)

    if stop_after == "push":
        # The gate's baseline is what TF Serving serves now, not a Resolver (see served_model_baseline.py).
        evaluator = evaluator_gate.GatedEvaluator(
            examples=example_gen.outputs["examples"],
            example_splits=["eval"],
            model=trainer.outputs["model"],
            baseline_model=baseline.outputs["baseline_model"],
            schema=schema_gen.outputs["schema"],
            eval_config=evaluator_gate.make_eval_config(
                config.eval.accuracy_floor,
                config.eval.max_accuracy_drop,
                class_recall_floor=config.eval.class_recall_floor,
                max_class_recall_drop=config.eval.max_class_recall_drop,
            ),
            accuracy_floor=run_params.get("accuracy_floor"),
            min_class_examples=config.eval.min_class_examples,
        ).with_id(sidecars.EVALUATOR)
        components.append(evaluator)

        # Each pushed version carries its record (serving/model_record.py): the examples are an input for it.
        pusher = atomic_pusher.RecordingPusher(
            model=trainer.outputs["model"],
            model_blessing=evaluator.outputs["blessing"],
            examples=example_gen.outputs["examples"],
            # The decision names the data and settings tried; a refusal is remembered with them.
            change_decision=check.outputs[change_check.DECISION_KEY],
            serving_model_dir=config.serving_model_dir,
            custom_config={
                atomic_pusher.KEEP_VERSIONS_KEY: config.push.keep_versions,
                atomic_pusher.SETTINGS_KEY: config.to_dict(),
            },
        ).with_id(sidecars.PUSHER)
        components.append(pusher)

    return components

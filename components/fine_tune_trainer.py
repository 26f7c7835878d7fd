"""Trainer module file: TFX calls `run_fn` with the Transform output; we fine-tune and export for TF Serving.

Steps: read the transformed examples -> build base + new head (trainer/model.py) -> phase 1 with the base frozen,
phase 2 with its top unfrozen and the model recompiled at a lower learning rate (trainer/fine_tune.py) -> export a
SavedModel whose signatures apply the same TFT transform (serving/export.py). Written with the model artifact:
`training_history.json` (per epoch, both phases, phase boundary), `labels.txt`, TensorBoard logs (ModelRun
artifact) and a Keras copy of the model (`model.keras`, ModelRun artifact and `assets.extra/` of the export) for
inspection or further training.

Warm start (trainer.warm_start=auto): the pipeline hands the Trainer the served-model baseline as TFX's
`base_model` input; when that model has the same labels, base and image size, training starts from its weights
with the warm epoch settings (trainer/warm_start.py). The decision is written to the export as
`assets.extra/warm_start.json` ({"from_version": N or null, "reason": "..."}) and into training_history.json.

The check of the training data (trainer.label_issues, components/data_findings.py) reads the pretrained base's
features: on a cold start with cached phase-1 features (the defaults) from the feature cache, which is then built
in file order with file names; otherwise from a pass of its own before a warm start replaces the base's weights.
It writes suspected label errors (`label_issues.json`) and what changed since the served version
(`data_changes.json`) beside training_history.json, and this run's per-class feature profile in the export's
`assets.extra/`, so that it travels with the pushed version. Its seconds are `label_issues_s` in the history.

`eval_predictions.json` (beside training_history.json): the trained model's class probabilities for every eval
image by file name (trainer/eval_predictions.py), from which the run report draws its confusion matrix and
mistakes instead of running the exported model over the eval split once more.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Dict, List, Optional

import tensorflow as tf
import tensorflow_transform as tft
from tfx import types
from tfx.components.trainer import executor as trainer_executor
from tfx.components.trainer.component import Trainer
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import json_utils

from components import data_findings
from serving import sidecars
from serving.export import export_saved_model
from serving.tflite import export_tflite
from trainer import features, profiles
from trainer import warm_start as warm
from trainer.fine_tune import train_two_phase
from trainer.model import build_model
from trainer.settings import TrainerConfig, run_parameter_types, settings_lines

# custom_config key of the TFLite export: {"mode": push.tflite, "max_accuracy_drop": eval.max_tflite_accuracy_drop}
TFLITE_KEY = "tflite"
SHUFFLE_BUFFER = 4096
# custom_config key the executor adds: the served version the `base_model` input holds (absent: none).
SERVED_VERSION_KEY = "served_version"
# custom_config key the executor adds: the files a person's label fixes marked `keep` (the ingest report of the
# `ingested_examples` input, components/label_fixes.py): the check of the training data does not flag them.
KEPT_FILES_KEY = "kept_files"
# The Trainer's optional input: ImageExampleGen's Examples, for their ingest report.
INGESTED_EXAMPLES_KEY = "ingested_examples"
# custom_config key of the weights file's content digest (pipeline.create_pipeline, local runs): not read here, it
# only makes MLMD's cache key change when other bytes sit at the same trainer.weights path.
WEIGHTS_DIGEST_KEY = "weights_digest"
# custom_config key of the training profile the pipeline resolved (trainer/profiles.py ProfileChoice.as_dict()).
PROFILE_KEY = "profile"


def trainer_config(custom_config: Dict[str, Any]) -> TrainerConfig:
    """The pipeline passes `dataclasses.asdict(config.trainer)` as the Trainer's custom_config."""
    return TrainerConfig(**(custom_config or {}).get("trainer", {}))


def make_dataset(
    files: List[str],
    tf_transform_output: tft.TFTransformOutput,
    image_size: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    keep_in_memory: bool,
) -> tf.data.Dataset:
    """Transformed examples -> batches of (float32 [S, S, 3] in [0, 255], int64 label)."""
    feature_spec = tf_transform_output.transformed_feature_spec()
    # TFX hands over file patterns (".../Split-train/*"); sorted for a reproducible order.
    paths = sorted(path for pattern in files for path in tf.io.gfile.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no transformed examples match {files}")
    records = tf.data.TFRecordDataset(paths, compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE)
    # End-to-end epochs read every image once per epoch: keep the serialized uint8 images (~77 KB each at
    # 160 px) in memory rather than re-reading and un-gzipping the files. The cached modes (the defaults) read
    # them once, to build the feature caches, and a copy in memory would only grow the Trainer with the data
    # (~2.5 GB at 32k images; the run's peak went from 6.7 to 5.6 GB without it: benchmarks/README.md, "Scaling").
    if keep_in_memory:
        records = records.cache()
    if shuffle:
        records = records.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, feature_spec)
        images = features.parse_images(parsed[features.TRANSFORMED_IMAGE_KEY], image_size)
        return images, parsed[features.LABEL_KEY]

    return records.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def warmup_images(dataset: tf.data.Dataset, count: int) -> List[bytes]:
    """A few eval images, re-encoded as PNG: valid requests for TF Serving's warmup replay."""
    images: List[bytes] = []
    for batch, _ in dataset:
        for image in batch:
            if len(images) >= count:
                return images
            images.append(tf.io.encode_png(tf.cast(image, tf.uint8)).numpy())
    return images


def distribution_strategy(cfg: TrainerConfig) -> tf.distribute.Strategy:
    """MirroredStrategy over several GPUs; the default strategy otherwise (one GPU is used automatically)."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus and cfg.mixed_precision:
        import keras

        keras.mixed_precision.set_global_policy("mixed_float16")
    if len(gpus) > 1:
        logging.info("Trainer: MirroredStrategy over %d GPUs", len(gpus))
        return tf.distribute.MirroredStrategy()
    logging.info("Trainer: %s", f"1 GPU ({gpus[0].name})" if gpus else "CPU only")
    return tf.distribute.get_strategy()


def cache_spill_root(fn_args: FnArgs) -> Optional[str]:
    """Where feature caches over trainer.cache_max_mb spill to: a temporary folder (removed after training)
    inside the Trainer's working directory, else its ModelRun folder, on the pipeline root's disk. None (the
    system's temporary folder) when that is remote (gs://, s3://): the spill files are read by local syscalls."""
    for path in (fn_args.working_dir, fn_args.model_run_dir):
        if path and "://" not in path:
            os.makedirs(path, exist_ok=True)
            return path
    return None


def run_fn(fn_args: FnArgs) -> None:
    cfg = trainer_config(fn_args.custom_config)
    configured = dataclasses.asdict(cfg)
    tf.keras.utils.set_random_seed(cfg.seed)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    class_names = features.read_class_names(tf_transform_output)
    logging.info("Trainer: %d classes %s", len(class_names), class_names)
    for line in settings_lines(cfg):
        logging.info("Trainer: %s", line)
    choice = profiles.ProfileChoice.from_dict((fn_args.custom_config or {}).get(PROFILE_KEY))
    if choice is not None:
        logging.info("Trainer: %s", choice.line())
        mismatch = profiles.hardware_mismatch(choice, len(tf.config.list_physical_devices("GPU")))
        if mismatch:
            logging.warning("Trainer: %s", mismatch)

    in_memory = cfg.reads_images_every_epoch()
    train_ds = make_dataset(
        fn_args.train_files, tf_transform_output, cfg.image_size, cfg.batch_size, True, cfg.seed, in_memory
    )
    eval_ds = make_dataset(
        fn_args.eval_files, tf_transform_output, cfg.image_size, cfg.batch_size, False, cfg.seed, in_memory
    )

    import keras

    served_version = (fn_args.custom_config or {}).get(SERVED_VERSION_KEY)
    # The served SavedModel (TFX hands over sidecars.serving_model_dir of the ServedModelBaseline artifact); its
    # labels are read here and passed in: trainer/ does not read the files components hand each other.
    served_dir = fn_args.base_model if served_version is not None else None
    served_labels = sidecars.read_labels(served_dir) if served_dir else None
    started = time.time()
    with distribution_strategy(cfg).scope():
        model, base = build_model(cfg, num_classes=len(class_names))
        reason, served = warm.cold_reason(
            cfg,
            class_names,
            served_version,
            served_labels,
            sidecars.keras_model_path(served_dir) if served_dir else None,
        )
        # The check of the training data reads the pretrained base's features. On a cold start with cached phase-1
        # features (the defaults) the feature cache already holds them: built in file order with file names, it
        # hands them over once built. Otherwise (a warm start's caches come from the served model's fine-tuned
        # base, and examples without file names cannot be grouped by folder: its own pass then records why) the
        # check runs its own pass now, before the served weights are copied in.
        named = features.FILE_NAME_KEY in tf_transform_output.transformed_feature_spec()
        from_cache = cfg.label_issues and served is None and cfg.caches_pooled_features() and named
        findings_of_cache: List[data_findings.Findings] = []
        cache_train_ds, on_pooled_features = None, None
        if from_cache:
            # In file order with file names (the caches shuffle per epoch themselves).
            cache_train_ds = data_findings.named_batches(
                fn_args.train_files, tf_transform_output, cfg.image_size, cfg.batch_size
            )

            def on_pooled_features(pooled, labels, file_names):
                found = data_findings.examine_cached_features(
                    cfg, pooled, labels, file_names, class_names, served_version, served_dir
                )
                findings_of_cache.extend([found] if found else [])

            findings = None
        else:
            findings = data_findings.examine_training_data(
                cfg, model, base, fn_args.train_files, tf_transform_output, class_names, served_version, served_dir
            )
        if served is not None:
            warm.copy_weights(served, model)
            cfg = warm.warm_config(cfg)
        warm_start = warm.describe(served_version, reason)
        logging.info("Trainer: %s", warm_start["reason"])
        tensorboard = keras.callbacks.TensorBoard(log_dir=os.path.join(fn_args.model_run_dir, "logs"))
        # The trained model's predictions for every eval image, by file name, for the run report (the report no
        # longer runs the exported model over the eval split itself). Needs examples that carry file names.
        named_eval_ds, recorded = None, []
        if named:
            named_eval_ds = data_findings.named_batches(
                fn_args.eval_files, tf_transform_output, cfg.image_size, cfg.batch_size
            )
        history = train_two_phase(
            model,
            base,
            train_ds,
            eval_ds,
            cfg,
            callbacks=[tensorboard],
            work_dir=cache_spill_root(fn_args),
            cache_train_ds=cache_train_ds,
            on_pooled_features=on_pooled_features,
            named_eval_ds=named_eval_ds,
            on_eval_predictions=recorded.append,
        )
        if from_cache:
            findings = findings_of_cache[0] if findings_of_cache else None
        findings = data_findings.leave_out_kept(findings, (fn_args.custom_config or {}).get(KEPT_FILES_KEY) or [])
    history["train_wall_s"] = time.time() - started
    history["class_names"] = class_names
    # The settings in effect (run parameters included), for the pushed version's record: as configured, before a
    # warm start swapped in its own epoch counts, so that the next run's no-op check compares like with like.
    history["trainer_config"] = configured
    history["warm_start"] = warm_start
    # The recipe and why it was chosen (trainer.profile), for the summary and the version's record.
    history["profile"] = choice.as_dict() if choice is not None else None
    # The check of the training data, features included (0 when trainer.label_issues is off).
    history["label_issues_s"] = round(findings.seconds, 2) if findings else 0.0

    export_dir = fn_args.serving_model_dir
    export_saved_model(
        model,
        tf_transform_output,
        class_names,
        cfg.image_size,
        export_dir,
        warmup_images=warmup_images(eval_ds, cfg.warmup_requests),
        flip_average=cfg.test_time_flip,
    )
    tflite = (fn_args.custom_config or {}).get(TFLITE_KEY)  # absent: a pipeline built without the option
    if tflite and tflite["mode"] != "off":
        history["tflite"] = export_tflite(
            model, tflite["mode"], cfg.image_size, train_ds, eval_ds, float(tflite["max_accuracy_drop"]), export_dir
        )
    model_root = os.path.dirname(export_dir.rstrip("/"))
    write_model_files(model_root, export_dir, fn_args.model_run_dir, history, class_names, model)
    if recorded:
        sidecars.write_eval_predictions(model_root, recorded[0].as_dict(class_names))
    sidecars.write_warm_start(export_dir, warm_start)
    if findings:
        data_findings.write_findings(findings, model_root, export_dir)
    logging.info("Trainer: exported to %s; final eval accuracy per phase %s", export_dir, history.get("final_accuracy"))


def write_model_files(
    model_root: str, export_dir: str, model_run_dir: str, history: Dict[str, Any], class_names: List[str], model
) -> None:
    for directory in (model_root, sidecars.assets_extra(export_dir)):
        sidecars.write_labels(directory, class_names)
    sidecars.write_history(model_root, history)
    tf.io.gfile.makedirs(model_run_dir)
    model.save(os.path.join(model_run_dir, sidecars.KERAS_MODEL_FILE))
    # Travels with the served version: the next run's warm start loads it (TF Serving ignores assets.extra).
    model.save(sidecars.keras_model_path(export_dir))


# --- the component: TFX's Trainer plus per-run overrides --------------------------------------------------------

# TrainerConfig fields a Kubeflow run may override as run parameters. TFX 1.16 can only make a *whole* execution
# property a RuntimeParameter (nothing nested inside custom_config), so each overridable knob is its own
# execution property; None keeps custom_config's value.
RUNTIME_OVERRIDES = run_parameter_types()


class FineTuneTrainerSpec(standard_component_specs.TrainerSpec):
    PARAMETERS = {
        **standard_component_specs.TrainerSpec.PARAMETERS,
        **{name: ExecutionParameter(type=kind, optional=True) for name, kind in RUNTIME_OVERRIDES.items()},
    }
    INPUTS = {
        **standard_component_specs.TrainerSpec.INPUTS,
        INGESTED_EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }


def apply_overrides(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
    """exec_properties whose custom_config["trainer"] carries this run's overrides."""
    custom = json_utils.loads(exec_properties.get("custom_config") or "null") or {}
    trainer = dict(custom.get("trainer", {}))
    for name in RUNTIME_OVERRIDES:
        if exec_properties.get(name) is not None:
            trainer[name] = exec_properties[name]
    return {**exec_properties, "custom_config": json_utils.dumps({**custom, "trainer": trainer})}


def add_served_version(exec_properties: Dict[str, Any], input_dict: Dict[str, List[types.Artifact]]) -> Dict[str, Any]:
    """exec_properties whose custom_config names the served version in the `base_model` input (the
    ServedModelBaseline's artifact), when there is one."""
    base_models = input_dict.get(standard_component_specs.BASE_MODEL_KEY) or []
    if not base_models:
        return exec_properties
    from components.served_model_baseline import SERVED_VERSION_PROPERTY, is_served

    base_model = base_models[0]
    if not is_served(base_model):
        return exec_properties
    custom = json_utils.loads(exec_properties.get("custom_config") or "null") or {}
    custom[SERVED_VERSION_KEY] = base_model.get_int_custom_property(SERVED_VERSION_PROPERTY)
    return {**exec_properties, "custom_config": json_utils.dumps(custom)}


def add_kept_files(exec_properties: Dict[str, Any], input_dict: Dict[str, List[types.Artifact]]) -> Dict[str, Any]:
    """exec_properties whose custom_config lists the files the label fixes kept (the ingest report of the
    `ingested_examples` input), when there are any."""
    examples = input_dict.get(INGESTED_EXAMPLES_KEY) or []
    report = sidecars.read_ingest_report(examples[0].uri) if examples else None
    kept = ((report or {}).get("label_fixes") or {}).get("kept") or []
    if not kept:
        return exec_properties
    custom = json_utils.loads(exec_properties.get("custom_config") or "null") or {}
    custom[KEPT_FILES_KEY] = list(kept)
    return {**exec_properties, "custom_config": json_utils.dumps(custom)}


class FineTuneExecutor(trainer_executor.GenericExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        exec_properties = add_kept_files(add_served_version(apply_overrides(exec_properties), input_dict), input_dict)
        # The GenericExecutor builds its FnArgs from the stock inputs only.
        stock = {key: value for key, value in input_dict.items() if key != INGESTED_EXAMPLES_KEY}
        super().Do(stock, output_dict, exec_properties)


class FineTuneTrainer(Trainer):
    SPEC_CLASS = FineTuneTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(FineTuneExecutor)

    def __init__(
        self,
        *,
        examples,
        transform_graph,
        schema,
        run_fn,
        custom_config,
        train_args,
        eval_args,
        base_model=None,
        ingested_examples=None,
        **overrides,
    ):
        unknown = set(overrides) - set(RUNTIME_OVERRIDES)
        if unknown:
            raise TypeError(f"unknown trainer overrides {sorted(unknown)}")
        spec = FineTuneTrainerSpec(
            examples=examples,
            transform_graph=transform_graph,
            schema=schema,
            base_model=base_model,
            ingested_examples=ingested_examples,
            train_args=train_args,
            eval_args=eval_args,
            run_fn=run_fn,
            custom_config=json_utils.dumps(custom_config),
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun),
            **overrides,
        )
        # Trainer.__init__ builds the stock TrainerSpec; skip it (as ImageExampleGen does).
        base_component.BaseComponent.__init__(self, spec=spec)

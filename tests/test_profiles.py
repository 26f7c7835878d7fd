"""The training profile (`trainer.profile`, trainer/profiles.py): chosen by the Trainer's hardware (faked device
lists here), resolved once when the pipeline is built (Transform's image size, the Trainer's settings, the change
check's and the record's settings all see the resolved one), compared as resolved by the change check, and the
strong augmentation the `best` recipe (and `trainer.augmentation=strong`) trains with. Seconds; no pipeline runs.
"""

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from components import change_check as cc
from components import fine_tune_trainer
from pipeline.configs import PipelineConfig, load_config
from trainer import profiles
from trainer.settings import ConfigError, TrainerConfig

CPU = profiles.Hardware(0, "this machine")
ONE_GPU = profiles.Hardware(1, "this machine")


def fake_devices(monkeypatch, gpus):
    """tf.config.list_physical_devices as on a machine with `gpus` GPUs (and one CPU)."""
    devices = {
        "GPU": [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(gpus)],
        "CPU": [tf.config.PhysicalDevice("/physical_device:CPU:0", "CPU")],
    }
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: devices.get(kind, []))


@pytest.mark.parametrize("gpus", [0, 1, 4])
def test_auto_resolves_by_the_gpus_the_trainer_has(monkeypatch, gpus):
    fake_devices(monkeypatch, gpus)
    hardware = profiles.local_hardware()
    assert hardware == profiles.Hardware(gpus, "this machine")
    choice = profiles.choose("auto", hardware)
    # With a GPU, auto is fast for now (best measured below it: trainer/profiles.py) and says so.
    assert choice.resolved == "fast"
    counted = f"this machine: {gpus} GPU{'' if gpus == 1 else 's'}"
    assert choice.why == (counted if gpus == 0 else f"{counted}; the GPU recipe (best) measured below fast, see "
                          "docs/benchmarks.md")  # fmt: skip
    assert choice.line() == f"profile fast (trainer.profile=auto: {choice.why})"
    # The mechanism, with best as auto's choice for GPU Trainers (the one line to change once it measures better).
    monkeypatch.setattr(profiles, "AUTO_WITH_GPU", profiles.BEST)
    assert profiles.choose("auto", hardware).resolved == ("best" if gpus else "fast")


def test_a_profile_written_out_is_kept_whatever_the_hardware():
    assert profiles.choose("fast", ONE_GPU).resolved == "fast"
    assert profiles.choose("best", CPU) == profiles.ProfileChoice("best", "best", "as set (this machine: 0 GPUs)")


def test_best_sets_the_gpu_recipe_only_where_the_user_left_the_default():
    cfg, choice = profiles.resolve(TrainerConfig(profile="best", image_size=192, phase2_epochs=4), ONE_GPU)
    assert choice.resolved == "best" and cfg.profile == "best"
    assert (cfg.image_size, cfg.phase2_epochs) == (192, 4)  # set by the user: kept
    assert cfg.phase2_mode == "end_to_end" and cfg.augmentation == "strong" and cfg.mixed_precision
    assert cfg.fine_tune_layer() == 54  # about a third of MobileNetV2's 154 layers, against the default 100
    fast, _ = profiles.resolve(TrainerConfig(), CPU)
    assert fast == dataclasses.replace(TrainerConfig(), profile="fast")
    # Resolving a resolved config changes nothing.
    assert profiles.resolve(cfg, CPU)[0] == cfg


def test_a_value_the_user_wrote_is_kept_even_where_it_is_the_default(tmp_path):
    # Found by benchmarking `trainer.profile=best` with `--set trainer.augmentation=basic`: the run trained with
    # strong augmentation, bit for bit the plain best run, because basic is the default.
    from pipeline.pipeline import resolve_profile

    config_file = tmp_path / "ftune.yaml"
    config_file.write_text("trainer:\n  profile: best\n  image_size: 160\n")
    config = load_config(str(config_file), ["trainer.augmentation=basic", "trainer.phase2_epochs=12"])
    assert {"trainer.profile", "trainer.image_size", "trainer.augmentation"} <= config.written_keys
    resolved, choice = resolve_profile(config, ONE_GPU)
    assert choice.resolved == "best"
    # Said where the choice is logged and recorded (a file copied whole from `ftune config` writes every key).
    assert choice.why.endswith(
        "set by the user over the profile: image_size=160, phase2_epochs=12, augmentation='basic'"
    )
    t = resolved.trainer
    assert (t.image_size, t.augmentation, t.phase2_epochs) == (160, "basic", 12)  # written: kept, defaults or not
    assert t.phase2_mode == "end_to_end" and t.fine_tune_layer() == 54  # not written: the profile's
    assert resolved.written_keys == config.written_keys  # resolving again keeps them
    # Not a setting: not in what the records and the change check compare.
    assert "written_keys" not in resolved.to_dict()


def test_a_profile_that_does_not_exist_is_a_settings_error():
    with pytest.raises(ConfigError, match="trainer.profile must be one of auto, fast, best; got 'gpu'"):
        load_config(None, ["trainer.profile=gpu"])
    with pytest.raises(ConfigError, match="trainer.augmentation must be one of basic, strong"):
        load_config(None, ["trainer.augmentation=heavy"])


def test_the_trainer_warns_when_its_hardware_is_not_what_the_profile_was_chosen_for(monkeypatch):
    best = profiles.choose("best", profiles.Hardware(1, "kubeflow.gpu_count"))
    assert profiles.hardware_mismatch(best, 1) is None
    assert "sees no GPU: the GPU recipe runs on the CPU" in profiles.hardware_mismatch(best, 0)
    fast = profiles.choose("auto", CPU)
    assert profiles.hardware_mismatch(fast, 0) is None and profiles.hardware_mismatch(fast, 2) is None
    # Once auto picks best for GPUs: a pipeline built for a CPU Trainer whose pod has GPUs is named.
    monkeypatch.setattr(profiles, "AUTO_WITH_GPU", profiles.BEST)
    assert "sees 2 GPU(s), for which auto is best" in profiles.hardware_mismatch(fast, 2)
    assert profiles.hardware_mismatch(profiles.choose("fast", CPU), 2) is None  # asked for by name


# --- the pipeline: resolved once, seen by every component ----------------------------------------------------


def trainer_and_transform(pipeline):
    nodes = {node.id: node for node in pipeline.components}
    return nodes["Trainer"].exec_properties, nodes["Transform"].exec_properties, nodes["ChangeCheck"]


def local(monkeypatch, tmp_path, gpus, *overrides):
    from pipeline.local_runner import local_pipeline

    fake_devices(monkeypatch, gpus)
    config = load_config(None, [f"pipeline_root={tmp_path}", *overrides])
    return local_pipeline(config, str(tmp_path / "data"), "hash")


@pytest.mark.parametrize("gpus, size, profile", [(0, 160, "fast"), (1, 224, "best")])
def test_the_local_runner_resolves_by_this_machines_gpus(monkeypatch, tmp_path, gpus, size, profile):
    monkeypatch.setattr(profiles, "AUTO_WITH_GPU", profiles.BEST)  # the mechanism (auto is fast for now)
    trainer, transform, check = trainer_and_transform(local(monkeypatch, tmp_path, gpus))
    custom = json.loads(trainer["custom_config"])
    assert custom["trainer"]["profile"] == profile and custom["trainer"]["image_size"] == size
    assert custom[fine_tune_trainer.PROFILE_KEY] == {
        "setting": "auto",
        "resolved": profile,
        "why": f"this machine: {gpus} GPU{'' if gpus == 1 else 's'}",
    }
    assert json.loads(transform["custom_config"])["image_size"] == size  # Transform resizes for the profile
    settings = json.loads(check.exec_properties[cc.SETTINGS_KEY])
    assert settings["trainer"]["profile"] == profile and settings["trainer"]["image_size"] == size


def test_kubeflow_resolves_by_the_trainer_pods_gpus_before_the_run_parameters_take_their_defaults(monkeypatch):
    from pipeline import kubeflow_v2_runner as runner

    monkeypatch.setattr(profiles, "AUTO_WITH_GPU", profiles.BEST)  # the mechanism (auto is fast for now)
    for gpus, profile, phase2_epochs in ((0, "fast", 8), (1, "best", 20)):
        config = runner.kubeflow_config(
            load_config(None, [f"kubeflow.gpu_count={gpus}", "data.data_root=gs://b/images", "data.split_mode=hash"]),
            pipeline_root="gs://b/root",
        )
        pipeline = runner.build_pipeline(config)
        trainer, _, _ = trainer_and_transform(pipeline)
        custom = json.loads(trainer["custom_config"])
        assert custom[fine_tune_trainer.PROFILE_KEY]["resolved"] == profile
        assert custom[fine_tune_trainer.PROFILE_KEY]["why"].startswith("kubeflow.gpu_count: ")
        assert trainer["phase2_epochs"].default == phase2_epochs  # the run parameter's default is the profile's


# --- the change check compares the resolved profile ---------------------------------------------------------


def served_record(trainer_config):
    config = PipelineConfig()
    config.trainer = trainer_config
    return {"data": {"fingerprint": "sha256:same", "spans": ["span-1"]}, "settings": config.to_dict()}


def decide(now_config, record):
    config = PipelineConfig()
    config.trainer = now_config
    return cc.decide(
        fingerprint="sha256:same",
        spans=["span-1"],
        settings=cc.training_settings(config.to_dict()),
        served_version=1,
        served_record=record,
        refused=None,
        force=False,
    )


def test_auto_and_fast_written_out_are_the_same_training_on_the_same_hardware():
    record = served_record(profiles.resolve(TrainerConfig(profile="auto"), CPU)[0])
    assert not decide(profiles.resolve(TrainerConfig(profile="auto"), ONE_GPU)[0], record).changed  # auto: fast
    assert not decide(profiles.resolve(TrainerConfig(profile="auto"), CPU)[0], record).changed
    assert not decide(profiles.resolve(TrainerConfig(profile="fast"), CPU)[0], record).changed
    # Another recipe (best by name, or auto once it picks best for a GPU): trained again, the profile named first.
    moved = decide(profiles.resolve(TrainerConfig(profile="best"), ONE_GPU)[0], record)
    assert moved.changed and "trainer.profile ('fast' -> 'best')" in moved.reason


# --- strong augmentation --------------------------------------------------------------------------------------


def tiny_base(size):
    inputs = keras.Input((size, size, 3))
    outputs = keras.layers.Conv2D(4, 3, strides=2, name="conv")(inputs)
    return keras.Model(inputs, outputs)


def test_strong_augmentation_crops_and_recolours_in_training_only_and_feeds_the_cached_versions():
    from trainer.feature_cache import _augmentation_layers, cache_variants
    from trainer.model import LAYER_BRIGHTNESS, LAYER_CONTRAST, LAYER_ZOOM, build_model

    cfg = TrainerConfig(image_size=32, augmentation="strong", weights="none", rotation_factor=0.0)
    model, _ = build_model(cfg, 3, base_override=tiny_base(32))
    names = [layer.name for layer in _augmentation_layers(model)]
    assert names[-3:] == [LAYER_ZOOM, LAYER_BRIGHTNESS, LAYER_CONTRAST]
    # Without rotations the basic augmentation has only the image and its flip; the strong one draws more.
    assert cache_variants(cfg) == cfg.cache_variants == 4
    assert cache_variants(dataclasses.replace(cfg, augmentation="basic")) == 2
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)), tf.float32)
    augmented = images
    for layer in _augmentation_layers(model):
        augmented = layer(augmented, training=True)
    assert float(tf.reduce_min(augmented)) >= 0 and float(tf.reduce_max(augmented)) <= 255
    assert float(tf.reduce_mean(tf.abs(augmented - images))) > 1.0
    assert np.allclose(model(images, training=False), model(images, training=False))  # identity at inference


def test_the_hardware_warning_reaches_the_console_where_library_warnings_do_not():
    import logging

    from pipeline.local_runner import _ProgressFilter

    warning = profiles.hardware_mismatch(profiles.choose("best", CPU), 0)

    def shown(message):
        return _ProgressFilter().filter(logging.LogRecord("x", logging.WARNING, "", 0, message, None, None))

    assert shown(f"Trainer: {warning}")
    assert not shown("some library: deprecated")

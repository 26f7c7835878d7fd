"""Spans, the no-op check against the served version's record, and the warm-start decision, without a pipeline
run (the whole flow through the CLI is in test_scheduled_retraining.py)."""

import json
import os

import image_corpus
import pytest

from components import change_check as cc
from components import image_listing as listing
from pipeline.configs import ConfigError, PipelineConfig, load_config
from serving import sidecars
from trainer import warm_start

HASH = listing.make_input_config("hash", "train", "validation")


def spans_folder(tmp_path, spans):
    """{span number: {class: count}} -> data root with span-<n>/<class>/<images>."""
    root = tmp_path / "data"
    for number, counts in spans.items():
        image_corpus.write_plain(str(root / f"span-{number}"), counts, seed=number)
    return str(root)


@pytest.mark.parametrize("value, window", [("all", None), ("latest", 1), ("1", 1), ("3", 3), ("ALL", None)])
def test_span_settings(value, window):
    from pipeline.configs import span_window

    assert span_window(value) == window
    assert load_config(None, [f"data.spans={value}"]).data.spans == value


@pytest.mark.parametrize("value", ["0", "-2", "newest", "2.5", ""])
def test_bad_span_setting_names_key_allowed_values_and_value(value):
    with pytest.raises(ConfigError, match=r"data\.spans must be all, latest, or a whole number N >= 1.*got"):
        load_config(None, [f"data.spans={value}"])


def test_bad_warm_start_setting():
    with pytest.raises(ConfigError, match=r"trainer\.warm_start must be one of auto, off; got 'sometimes'"):
        load_config(None, ["trainer.warm_start=sometimes"])


def test_spans_are_ordered_by_number_and_windowed(tmp_path):
    root = spans_folder(tmp_path, {n: {"a": 1, "b": 1} for n in (1, 2, 10)})
    os.makedirs(os.path.join(root, "span-x"))  # not a span folder
    assert listing.list_spans(root) == ["span-1", "span-2", "span-10"]
    assert listing.select_spans(root, "all") == ["span-1", "span-2", "span-10"]
    assert listing.select_spans(root, "2") == ["span-2", "span-10"]
    assert listing.select_spans(root, "latest") == ["span-10"]


def test_plain_layout_has_no_spans(tmp_path):
    image_corpus.write_plain(str(tmp_path), {"a": 2, "b": 2})
    assert listing.select_spans(str(tmp_path), "latest") == []
    assert listing.check_layout(str(tmp_path), HASH, []) == ["a", "b"]


def test_vocabulary_is_the_union_of_the_spans_classes(tmp_path):
    root = spans_folder(tmp_path, {1: {"a": 2, "b": 2}, 2: {"b": 1, "c": 1}})
    assert listing.check_layout(root, HASH, ["span-1", "span-2"]) == ["a", "b", "c"]
    files = listing.list_input(root, HASH, ["span-2"]).files()
    assert sorted(f.path for f in files) == sorted(f"span-2/{c}/{n}" for c, n in _names(root, "span-2"))


def _names(root, span):
    for c in sorted(os.listdir(os.path.join(root, span))):
        for n in sorted(os.listdir(os.path.join(root, span, c))):
            yield c, n


def test_a_span_with_an_empty_class_fails_naming_the_span(tmp_path):
    root = spans_folder(tmp_path, {1: {"a": 2, "b": 2}, 2: {"a": 1, "b": 1}})
    os.makedirs(os.path.join(root, "span-2", "c"))
    with pytest.raises(listing.DataUnusableError, match=r"span-2: c"):
        listing.check_layout(root, HASH, ["span-1", "span-2"])


def test_spans_mixing_presplit_and_plain_layouts_are_an_error(tmp_path):
    root = spans_folder(tmp_path, {1: {"a": 1, "b": 1}})
    for split in ("train", "validation"):
        image_corpus.write_plain(os.path.join(root, "span-2", split), {"a": 1, "b": 1})
    assert listing.resolve_split_mode(root, "auto", "train", "validation", ["span-2"]) == "presplit"
    with pytest.raises(listing.DataUnusableError, match=r"span\(s\) span-1 .* not split into train/ and validation/"):
        listing.resolve_split_mode(root, "auto", "train", "validation", ["span-1", "span-2"])


# --- the no-op check: the served version's own record is the reference ------------------------------------------


def served_with_record(tmp_path, config, data_root, spans, **changes):
    """A served version 1 (a stub saved_model.pb) whose record names these files and settings."""
    version_dir = os.path.join(config.serving_model_dir, "1")
    os.makedirs(version_dir)
    open(os.path.join(version_dir, "saved_model.pb"), "wb").close()
    record = {
        "version": 1,
        "data": {"spans": spans, "fingerprint": listing.input_fingerprint(data_root, HASH, spans)},
        "settings": json.loads(json.dumps(config.to_dict())),
    }
    record.update(changes)
    sidecars.write_model_record(version_dir, record)
    return version_dir


def decide(config, data_root, spans_setting="all"):
    """The change check's decision for these settings and this data (the component's own function)."""
    return cc.check(
        {
            cc.DATA_ROOT_KEY: data_root,
            cc.SPLIT_MODE_KEY: "hash",
            cc.TRAIN_DIR_KEY: config.data.train_dir,
            cc.EVAL_DIR_KEY: config.data.eval_dir,
            cc.SPANS_KEY: spans_setting,
            cc.SETTINGS_KEY: json.dumps(config.to_dict()),
            cc.SERVING_MODEL_DIR_KEY: config.serving_model_dir,
            cc.FORCE_KEY: 0,
        }
    )


def test_same_files_and_settings_are_a_no_op_and_any_change_is_not(tmp_path):
    """A record written the way the Pusher writes it (full settings, the selected spans' fingerprint) is what the
    change check compares with."""
    root = spans_folder(tmp_path, {1: {"a": 2, "b": 2}, 2: {"a": 1, "b": 1}})
    config = PipelineConfig(pipeline_root=str(tmp_path / "p")).absolute_paths()
    config.data.data_root = root
    assert decide(config, root, "1").reason == "nothing served yet"
    served_with_record(tmp_path, config, root, ["span-1"])

    check = decide(config, root)
    assert check.changed and check.reason == "new data: span-2"  # the record names span-1 only
    os.rename(os.path.join(root, "span-2"), str(tmp_path / "span-2-aside"))
    check = decide(config, root, "all")
    assert not check.changed and check.reason == "no new data; version 1 stays served" and check.served_version == 1
    # The record, not MLMD: no metadata database exists under this pipeline root at all.
    assert not os.path.exists(config.metadata_path)

    # A setting changed, a file touched: each is a reason to train, and the reason says which.
    config.trainer.learning_rate = 0.002
    assert "trainer.learning_rate (0.001 -> 0.002)" in decide(config, root).reason
    config.trainer.learning_rate = 0.001
    touched = os.path.join(root, "span-1", "a", sorted(os.listdir(os.path.join(root, "span-1", "a")))[0])
    os.utime(touched, ns=(0, 10**18))
    assert decide(config, root).reason == "new data: the input files differ from version 1's"


def test_a_served_version_without_a_record_is_retrained(tmp_path):
    image_corpus.write_plain(str(tmp_path / "data"), {"a": 2, "b": 2})
    config = PipelineConfig(pipeline_root=str(tmp_path / "p")).absolute_paths()
    version_dir = os.path.join(config.serving_model_dir, "1")
    os.makedirs(version_dir)
    open(os.path.join(version_dir, "saved_model.pb"), "wb").close()
    check = decide(config, str(tmp_path / "data"))
    assert check.changed and check.served_version == 1
    assert check.reason == "served version 1 has no data record (pushed by hand or an older ftune)"


# --- the warm-start decision -------------------------------------------------------------------------------------


def test_warm_start_is_cold_when_off_nothing_served_or_labels_changed(tmp_path):
    cfg = PipelineConfig().trainer
    assert warm_start.cold_reason(cfg, ["a", "b"], None, None, None) == ("nothing is served yet", None)
    cfg.warm_start = "off"
    assert warm_start.cold_reason(cfg, ["a", "b"], 3, ["a", "b"], "x") == ("trainer.warm_start=off", None)
    cfg.warm_start = "auto"
    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(b"stub: never loaded when the labels differ")
    reason, _ = warm_start.cold_reason(cfg, ["a", "b", "c"], 3, ["a", "b"], str(keras_file))
    assert reason == "the labels changed since served version 3 (classes added: c)"
    reason, _ = warm_start.cold_reason(cfg, ["a"], 3, ["a", "b"], str(keras_file))
    assert reason == "the labels changed since served version 3 (classes removed: b)"
    reason, _ = warm_start.cold_reason(cfg, ["a", "b"], 3, ["a", "b"], str(tmp_path / "missing.keras"))
    assert reason == "served version 3 has no Keras weights (assets.extra/model.keras)"
    assert warm_start.describe(3, None) == {"from_version": 3, "reason": "warm start from served version 3"}
    assert warm_start.describe(None, reason)["from_version"] is None


def _tiny_base(size=32):
    import keras

    images = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(images)
    return keras.Model(images, keras.layers.BatchNormalization()(x))


def test_warm_start_copies_the_served_weights_when_labels_base_and_size_match(tmp_path):
    import numpy as np

    from pipeline.configs import TrainerConfig
    from trainer.model import build_model

    cfg = TrainerConfig(weights="none", image_size=32, warm_phase1_epochs=1, warm_phase2_epochs=0)
    served, _ = build_model(cfg, 3, base_override=_tiny_base())
    for layer in ("base", "logits"):  # weights no fresh model starts with
        served.get_layer(layer).set_weights([w + 0.5 for w in served.get_layer(layer).get_weights()])
    path = str(tmp_path / "model.keras")
    served.save(path)

    reason, loaded = warm_start.cold_reason(cfg, ["a", "b", "c"], 4, ["a", "b", "c"], path)
    assert reason is None
    fresh, _ = build_model(cfg, 3, base_override=_tiny_base())
    warm_start.copy_weights(loaded, fresh)
    for a, b in zip(fresh.get_weights(), served.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    warm = warm_start.warm_config(cfg)
    assert (warm.phase1_epochs, warm.phase2_epochs) == (1, 0)
    # A warm start nudges the served model's fine-tuned layers at its own rate, not the cold start's.
    assert (cfg.fine_tune_lr_factor, warm.fine_tune_lr_factor) == (0.3, 0.1)

    bigger = TrainerConfig(weights="none", image_size=64)
    reason, _ = warm_start.cold_reason(bigger, ["a", "b", "c"], 4, ["a", "b", "c"], path)
    assert reason == "served version 4 uses image size 32, this run 64"


def test_trainer_learns_the_served_version_from_its_base_model_input(tmp_path):
    from tfx.types import standard_artifacts
    from tfx.utils import json_utils, path_utils

    from components import fine_tune_trainer as ft
    from components.served_model_baseline import SERVED_VERSION_PROPERTY

    baseline = standard_artifacts.Model()
    baseline.uri = str(tmp_path / "baseline")
    baseline.set_int_custom_property(SERVED_VERSION_PROPERTY, 3)
    props = {"custom_config": json_utils.dumps({"trainer": {"warm_start": "auto"}})}
    added = ft.add_served_version(props, {"base_model": [baseline]})
    assert json_utils.loads(added["custom_config"])[ft.SERVED_VERSION_KEY] == 3
    # TFX hands run_fn the folder ServedModelBaseline copies the served version into (sidecars names it too).
    # (fn_args_utils computes fn_args.base_model exactly so.)
    path = path_utils.serving_model_path(baseline.uri, path_utils.is_old_model_artifact(baseline))
    assert path == sidecars.serving_model_dir(baseline.uri)

    baseline.set_int_custom_property(SERVED_VERSION_PROPERTY, -1)  # nothing served: no version, cold start
    assert ft.add_served_version(props, {"base_model": [baseline]}) == props

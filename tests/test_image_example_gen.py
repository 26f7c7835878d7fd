"""ImageExampleGen: every good image exactly once, every bad file quarantined with a reason, stable splits."""

import json
import os
import shutil

import image_corpus
import pytest
import tensorflow as tf
from conftest import IN_MEMORY_BEAM
from tfx.components.example_gen.base_example_gen_executor import _PartitionFn
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from components import evaluator_gate as eg_gate
from components import image_example_gen as eg
from components import image_inspection, image_listing
from components.settings import DataConfig
from pipeline.configs import PipelineConfig
from pipeline.local_runner import run_local
from pipeline.reporting.run_records import latest_artifact_uri
from serving import sidecars
from serving.model_record import files_fingerprint


def read_examples(examples_uri: str):
    """{split: {file_name: tf.train.Example}}; fails on duplicates within the whole output."""
    out, seen = {}, set()
    for split_dir in sorted(os.listdir(examples_uri)):
        if not split_dir.startswith("Split-"):
            continue
        split = split_dir[len("Split-") :]
        files = tf.io.gfile.glob(os.path.join(examples_uri, split_dir, "*"))
        out[split] = {}
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
            example = tf.train.Example.FromString(record)
            name = example.features.feature["file_name"].bytes_list.value[0].decode()
            assert name not in seen, f"{name} appears more than once in the output"
            seen.add(name)
            out[split][name] = example
    return out


def ingest(tmp_path, data_root: str, beam_args=IN_MEMORY_BEAM, root_name="root", **data_overrides):
    config = PipelineConfig(pipeline_root=str(tmp_path / root_name), beam_args=list(beam_args))
    config.data.data_root = data_root
    for key, value in data_overrides.items():
        setattr(config.data, key, value)
    run_local(config, stop_after="ingest", progress=lambda m: None)
    return config, latest_artifact_uri(config, "ImageExampleGen", "examples")


def test_good_images_once_bad_files_quarantined_with_reason(tmp_path):
    data = tmp_path / "images"
    good, bad = image_corpus.write_corpus(str(data))
    assert len({os.path.basename(k) for k in bad}) >= 10, "the corpus must hold at least 10 kinds of bad file"

    # Multi-processing Beam here (Kubeflow's default; locally the runner is in-process), so the DoFn really is
    # pickled into worker processes.
    config, uri = ingest(
        tmp_path,
        str(data),
        beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        max_quarantine_fraction=0.6,
    )

    examples = read_examples(uri)
    produced = {name: ex for split in examples.values() for name, ex in split.items()}
    assert set(produced) == set(good)
    for name, example in produced.items():
        feature = example.features.feature
        class_name = feature["class_name"].bytes_list.value[0].decode()
        assert class_name == good[name]
        assert feature["label"].int64_list.value[0] == ["cat", "dog"].index(class_name)
        image = tf.io.decode_image(feature["image"].bytes_list.value[0], channels=3, expand_animations=False)
        assert image.shape == (48, 64, 3)

    report = sidecars.read_ingest_report(uri)
    quarantined = {record["file_name"]: record["reason"] for record in report["quarantined"]}
    assert set(quarantined) == set(bad)
    for name, expected in bad.items():
        assert expected in quarantined[name], (name, quarantined[name])
    assert report["scanned"] == len(good) + len(bad)
    assert report["accepted"] == len(good)
    assert report["class_names"] == ["cat", "dog"]

    # StatisticsGen and SchemaGen ran on the output in the same pipeline.
    schema_uri = latest_artifact_uri(config, "SchemaGen", "schema")
    assert schema_uri and os.path.exists(os.path.join(schema_uri, "schema.pbtxt"))
    with open(os.path.join(schema_uri, "schema.pbtxt")) as f:
        schema_text = f.read()
    for feature_name in ("image", "label", "class_name", "file_name"):
        assert f'name: "{feature_name}"' in schema_text


def test_presplit_layout_keeps_folder_splits(tmp_path):
    data = tmp_path / "images"
    image_corpus.write_plain(str(data / "train"), {"a": 6, "b": 5})
    image_corpus.write_plain(str(data / "validation"), {"a": 3, "b": 2}, seed=1)
    _, uri = ingest(tmp_path, str(data))  # split_mode "auto" finds train/ + validation/
    examples = read_examples(uri)
    assert {s: len(v) for s, v in examples.items()} == {"train": 11, "eval": 5}
    # file_name is relative to the data root, so the same class/file name in both folders stays distinct
    assert all(name.startswith("train/") for name in examples["train"])
    assert all(name.startswith("validation/") for name in examples["eval"])


def test_spans_are_read_together_or_as_a_window_and_named_in_the_report(tmp_path):
    data = tmp_path / "images"
    for span, seed in (("span-1", 1), ("span-2", 2)):
        image_corpus.write_plain(str(data / span / "train"), {"a": 3, "b": 3}, seed=seed)
        image_corpus.write_plain(str(data / span / "validation"), {"a": 1, "b": 1}, seed=seed + 10)
    image_corpus.write_plain(str(data / "span-2" / "train"), {"c": 2}, seed=3)  # span 2 adds class c
    image_corpus.write_plain(str(data / "span-2" / "validation"), {"c": 1}, seed=4)

    _, uri = ingest(tmp_path, str(data), root_name="all")
    examples = read_examples(uri)
    assert {s: len(v) for s, v in examples.items()} == {"train": 14, "eval": 5}
    assert {n.split("/")[0] for v in examples.values() for n in v} == {"span-1", "span-2"}
    assert all(n.split("/")[1] == "train" for n in examples["train"])
    labels = {ex.features.feature["class_name"].bytes_list.value[0].decode(): ex for ex in examples["train"].values()}
    assert {c: e.features.feature["label"].int64_list.value[0] for c, e in labels.items()} == {"a": 0, "b": 1, "c": 2}
    report = sidecars.read_ingest_report(uri)
    assert report["spans"] == ["span-1", "span-2"]
    assert report["input_fingerprint"] == image_listing.input_fingerprint(
        str(data), image_listing.make_input_config("presplit", "train", "validation"), ["span-1", "span-2"]
    )

    _, uri = ingest(tmp_path, str(data), root_name="latest", spans="latest")
    names = [n for v in read_examples(uri).values() for n in v]
    assert len(names) == 11 and all(n.startswith("span-2/") for n in names)


def test_hash_split_is_deterministic_across_runs_and_respects_ratio(tmp_path):
    data = tmp_path / "images"
    image_corpus.write_plain(str(data), {"a": 40, "b": 40})
    _, first = ingest(tmp_path, str(data), root_name="first", eval_fraction=0.25)
    _, second = ingest(tmp_path, str(data), root_name="second", eval_fraction=0.25)
    a, b = read_examples(first), read_examples(second)
    assert {s: set(v) for s, v in a.items()} == {s: set(v) for s, v in b.items()}
    assert set(a) == {"train", "eval"}


def test_hash_split_ratio_on_many_files():
    """The configured ratio holds within tolerance, using TFX's own partition function with our config."""
    output = eg.make_output_config("hash", eval_fraction=0.2)
    buckets, total = [], 0
    for split in output.split_config.splits:
        total += split.hash_buckets
        buckets.append(total)
    assignments = []
    for i in range(4000):
        example = eg.make_example(b"x", 0, "c", f"class_{i % 7}/image_{i:05d}.jpg", {"height": 1, "width": 1})
        assignments.append(_PartitionFn(example, len(buckets), buckets, output.split_config))
    eval_share = assignments.count(1) / len(assignments)
    assert abs(eval_share - 0.2) < 0.02, eval_share


# --- unusable data: clear errors, report kept ------------------------------------------------------------------


def run_executor(tmp_path, data_root: str, max_quarantine_fraction: float = 0.1):
    """Runs the component's executor directly (the same Do the pipeline runs) and returns the output uri."""
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "ImageExampleGen" / "examples" / "7")  # TFX's <root>/<node>/<output>/<id>
    exec_properties = {
        standard_component_specs.INPUT_BASE_KEY: data_root,
        standard_component_specs.INPUT_CONFIG_KEY: proto_utils.proto_to_json(
            image_listing.make_input_config("hash", "train", "validation")
        ),
        standard_component_specs.OUTPUT_CONFIG_KEY: proto_utils.proto_to_json(eg.make_output_config("hash", 0.2)),
        standard_component_specs.OUTPUT_DATA_FORMAT_KEY: example_gen_pb2.FORMAT_TF_EXAMPLE,
        standard_component_specs.OUTPUT_FILE_FORMAT_KEY: example_gen_pb2.FORMAT_TFRECORDS_GZIP,
        eg.MAX_QUARANTINE_FRACTION_KEY: max_quarantine_fraction,
        eg.MAX_IMAGE_PIXELS_KEY: 50_000_000,
        eg.MAX_FILE_BYTES_KEY: 100_000_000,
        eg.SPANS_KEY: "all",
    }
    eg.Executor().Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]}, exec_properties)
    return examples.uri


def test_fewer_than_two_classes_is_an_error(tmp_path):
    image_corpus.write_plain(str(tmp_path / "data"), {"only": 3})
    with pytest.raises(eg.DataUnusableError, match="at least 2"):
        run_executor(tmp_path, str(tmp_path / "data"))


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    image_corpus.write_plain(str(tmp_path / "data"), {"a": 3, "b": 3})
    os.makedirs(tmp_path / "data" / "c_empty")
    with pytest.raises(eg.DataUnusableError, match="c_empty"):
        run_executor(tmp_path, str(tmp_path / "data"))


def test_class_with_only_bad_files_is_an_error(tmp_path):
    image_corpus.write_plain(str(tmp_path / "data"), {"a": 4, "b": 4})
    shutil.rmtree(tmp_path / "data" / "b")
    os.makedirs(tmp_path / "data" / "b")
    (tmp_path / "data" / "b" / "x.jpg").write_bytes(b"")
    with pytest.raises(eg.DataUnusableError, match="no usable training image left for class.*b"):
        run_executor(tmp_path, str(tmp_path / "data"), max_quarantine_fraction=0.5)


def test_quarantine_above_limit_fails_but_keeps_the_report(tmp_path):
    image_corpus.write_plain(str(tmp_path / "data"), {"a": 4, "b": 4})
    for i in range(3):
        (tmp_path / "data" / "a" / f"bad{i}.jpg").write_bytes(b"not an image")
    with pytest.raises(eg.DataUnusableError, match=r"3 of 11 files .* quarantined.*max_quarantine_fraction") as err:
        run_executor(tmp_path, str(tmp_path / "data"), max_quarantine_fraction=0.2)
    # TFX deletes a failed execution's output folder; the copy outside it survives and the error names it.
    kept = tmp_path / "ImageExampleGen" / "failed_ingest_reports" / "7.json"
    assert str(kept) in str(err.value)
    with open(kept) as f:
        report = json.load(f)
    assert report["quarantined_count"] == 3 and report["accepted"] == 8
    assert all(r["reason"].startswith("not an image") for r in report["quarantined"])


def test_gate_has_overall_and_per_class_thresholds_narrowed_to_gated_classes():
    config = eg_gate.make_eval_config(
        accuracy_floor=0.8, max_accuracy_drop=0.01, class_recall_floor=0.5, max_class_recall_drop=0.1
    )
    (metric,) = [m for m in config.metrics_specs[0].metrics if m.class_name == "SparseCategoricalAccuracy"]
    assert not metric.HasField("threshold")
    overall, per_class = metric.per_slice_thresholds
    assert list(overall.slicing_specs) == [eg_gate.tfma.SlicingSpec()]
    assert overall.threshold.value_threshold.lower_bound.value == 0.8
    assert overall.threshold.change_threshold.absolute.value == pytest.approx(-0.01)
    assert list(per_class.slicing_specs) == [eg_gate.tfma.SlicingSpec(feature_keys=["class_name"])]
    assert per_class.threshold.value_threshold.lower_bound.value == 0.5
    assert per_class.threshold.change_threshold.absolute.value == pytest.approx(-0.1)
    assert [list(s.feature_keys) for s in config.slicing_specs] == [[], ["class_name"]]  # reported per class

    props = {"eval_config": eg_gate.proto_utils.proto_to_json(config), "accuracy_floor": 0.9}
    # The run's accuracy floor (a Kubeflow run parameter) replaces the overall floor, not the class floors.
    floored = eg_gate.thresholds_of(eg_gate._load_eval_config(eg_gate.with_accuracy_floor(props)))
    assert floored["accuracy_floor"] == 0.9 and floored["class_recall_floor"] == 0.5
    # Only the classes with enough eval images keep a per-class threshold; none left: no per-class threshold.
    narrowed = eg_gate._load_eval_config(eg_gate.with_gated_classes(props, ["cat", "dog"]))
    specs = list(narrowed.metrics_specs[0].metrics[0].per_slice_thresholds[1].slicing_specs)
    assert [dict(s.feature_values) for s in specs] == [{"class_name": "cat"}, {"class_name": "dog"}]
    none_gated = eg_gate._load_eval_config(eg_gate.with_gated_classes(props, []))
    assert len(none_gated.metrics_specs[0].metrics[0].per_slice_thresholds) == 1


def test_missing_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(eg.DataUnusableError, match="does not exist"):
        run_executor(tmp_path, str(tmp_path / "nowhere"))


# --- one listing, one fingerprint, the settings from DataConfig (fast) --------------------------------------------


def test_the_executor_walks_the_tree_once_and_records_the_files_fingerprint(tmp_path, monkeypatch):
    data = tmp_path / "data"
    image_corpus.write_plain(str(data), {"a": 3, "b": 3})
    walked, walk_files = [], image_listing.walk_files

    def counting_walk(split_root, classes):
        walked.append(split_root)
        return walk_files(split_root, classes)

    monkeypatch.setattr(image_listing, "walk_files", counting_walk)
    uri = run_executor(tmp_path, str(data))
    # One walk feeds the layout checks, the Beam source and the fingerprint.
    assert walked == [str(data)]
    # The value is serving/model_record.files_fingerprint over (relative path, size, mtime in ns): the format the
    # served versions' records hold, so the no-op check still recognises a version pushed before this listing.
    paths = [os.path.join(folder, name) for folder, _, names in os.walk(data) for name in names]
    expected = files_fingerprint((os.path.relpath(p, data), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths)
    report = sidecars.read_ingest_report(uri)
    assert report["accepted"] == 6
    assert report["input_fingerprint"] == expected


def test_error_reasons_quote_the_first_line_of_a_message():
    error = ValueError("Unknown image file format. One of JPEG, PNG, GIF, BMP required.\n  [Op:DecodeImage] name:")
    assert image_inspection.first_line(error) == "Unknown image file format. One of JPEG, PNG, GIF, BMP required."
    assert image_inspection.first_line(ValueError("")) == "ValueError"


def test_the_component_takes_its_settings_from_data_config():
    data = DataConfig(
        train_dir="tr", eval_dir="va", max_quarantine_fraction=0.05, max_image_pixels=1000, spans="2", max_file_bytes=9
    )
    props = eg.ImageExampleGen(input_base="/images", split_mode="presplit", data=data).exec_properties
    input_config = proto_utils.json_to_proto(props[standard_component_specs.INPUT_CONFIG_KEY], example_gen_pb2.Input())
    assert [s.pattern for s in input_config.splits] == ["tr/*/*", "va/*/*"]
    assert props[eg.MAX_QUARANTINE_FRACTION_KEY] == 0.05
    assert props[eg.MAX_IMAGE_PIXELS_KEY] == 1000
    assert props[eg.SPANS_KEY] == "2"
    assert props[eg.MAX_FILE_BYTES_KEY] == 9
    props = eg.ImageExampleGen(
        input_base="/images", split_mode="hash", data=DataConfig(eval_fraction=0.3)
    ).exec_properties
    output_config = proto_utils.json_to_proto(
        props[standard_component_specs.OUTPUT_CONFIG_KEY], example_gen_pb2.Output()
    )
    assert [s.hash_buckets for s in output_config.split_config.splits] == [70, 30]


def test_the_drivers_cache_key_is_the_span_selection_and_the_files_fingerprint(tmp_path):
    root = str(tmp_path / "data")
    image_corpus.write_plain(os.path.join(root, "span-1"), {"a": 2, "b": 2})
    config = image_listing.make_input_config("hash", "train", "validation")
    processor = eg._ImageFolderInputProcessor(root, config.splits, None, "all")
    assert processor.resolve_span_and_version() == (1, None)
    fingerprint = image_listing.input_fingerprint(root, config, ["span-1"])
    assert processor.get_input_fingerprint(1, None) == f"spans:span-1\n{fingerprint}"
    # A new span folder, even one without files yet, is a new input: the last run's Examples are not reused.
    os.makedirs(os.path.join(root, "span-2"))
    assert processor.resolve_span_and_version() == (2, None)
    assert processor.get_input_fingerprint(2, None) == f"spans:span-1,span-2\n{fingerprint}"

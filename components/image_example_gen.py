"""ImageExampleGen: a class-per-folder image tree -> tf.Examples, with a quarantine for bad files.

Input layouts (relative to `input_base`; listing, spans and layout checks: components/image_listing.py):
  * hash split:  `<class>/**/<image>`; each file's split is decided by a hash of its relative path (stable across
    runs and machines: TFX's own `partition_feature_name` mechanism hashing the `file_name` feature).
  * pre-split:   `train/<class>/**/<image>` and `validation/<class>/**/<image>` (folder names configurable).
  * spans:       `span-1/...`, `span-2/...`, each laid out as one of the above (TFX's `{SPAN}` convention). The
    `spans` setting (data.spans: all, latest, or the newest N) selects which are read; their files are read
    together (file names keep the span folder, `span-2/cats/1.jpg`), the label vocabulary is the union of their
    class folders, and the report and the Examples artifact name the spans used and the selected files'
    fingerprint (serving/model_record.files_fingerprint), which a later run compares to skip retraining.

Each accepted image becomes one tf.Example:
  image      bytes  the encoded file as it is on disk (JPEG/PNG/GIF), so that Transform decodes exactly what TF
                    Serving will receive from clients. BMP is the exception: TensorFlow's BMP decoder mis-reads
                    palette BMPs (measured: pixel errors up to 240/255), so BMPs are re-encoded losslessly as PNG.
  label      int64  index of the class folder name in the sorted list of class names
  class_name bytes  the class folder name
  file_name  bytes  path relative to input_base, e.g. `train/cats/cat.1.jpg` (also the hash-split key)
  height, width int64  pixel size, for statistics

Which files are accepted: components/image_inspection.py. Everything else goes to the quarantine report
(serving/sidecars.INGEST_REPORT_FILE in the Examples artifact) with its path and reason, is counted in the logs,
and never reaches training. The run fails, after writing the report, only when the data is unusable: fewer than
two classes, an empty class, or more than `max_quarantine_fraction` of the files quarantined.

The component reuses TFX's FileBasedExampleGen machinery (driver, split partitioning, TFRecord writing); only the
source PTransform, a report step around the stock `Do`, and the driver's input fingerprint are ours. The driver
and the executor each walk the input tree once (they may run in different containers); the executor's one
listing feeds the layout checks, every split's Beam source and the recorded input fingerprint.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Tuple

import apache_beam as beam
import tensorflow as tf
from tfx import types
from tfx.components.example_gen import input_processor
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.components.example_gen.driver import FileBasedDriver
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import proto_utils

from components import label_fixes as lf

# The names marked "re-exported" live in the listing and inspection modules; other modules and tests still import
# them from here.
from components.image_inspection import (
    inspect_image,  # noqa: F401  re-exported
    read_and_inspect,
)
from components.image_listing import (
    DataUnusableError,
    InputListing,
    apply_label_fixes,
    check_layout,  # noqa: F401  re-exported
    check_listing,
    input_files,  # noqa: F401  re-exported
    input_fingerprint,
    list_classes,  # noqa: F401  re-exported
    list_files,  # noqa: F401  re-exported
    list_input,
    list_spans,
    make_input_config,
    resolve_split_mode,  # noqa: F401  re-exported
    select_spans,
    span_number,
    split_root_of,
)
from components.settings import DataConfig
from serving import sidecars
from serving.sidecars import write_ingest_report

PROGRESS_EVERY = 500

MAX_QUARANTINE_FRACTION_KEY = "max_quarantine_fraction"
MAX_IMAGE_PIXELS_KEY = "max_image_pixels"
SPANS_KEY = "spans"
MAX_FILE_BYTES_KEY = "max_file_bytes"
# data.label_fixes: the fixes file, or "" for `<input_base>/label_fixes.csv` when it exists (components/label_fixes.py).
LABEL_FIXES_KEY = "label_fixes"
# Examples artifact properties (JSON list of span folders read; fingerprint of the selected input files).
SPANS_PROPERTY = "spans"
INPUT_FINGERPRINT_PROPERTY = "input_fingerprint"
# Private exec properties the executor adds for its Beam sources: where the Beam job writes quarantine records
# before the report is assembled, the label vocabulary, and the executor's one InputListing (an in-memory object:
# the sources are built in the executor's own process).
_QUARANTINE_DIR_KEY = "_quarantine_dir"
_CLASS_NAMES_KEY = "_class_names"
_LISTING_KEY = "_input_listing"


# --- split layout ----------------------------------------------------------------------------------------------


def make_output_config(split_mode: str, eval_fraction: float) -> example_gen_pb2.Output:
    """Pre-split folders keep their splits; otherwise hash `file_name` into train/eval buckets (out of 100)."""
    if split_mode == "presplit":
        return example_gen_pb2.Output()
    eval_buckets = max(1, min(99, round(eval_fraction * 100)))
    return example_gen_pb2.Output(
        split_config=example_gen_pb2.SplitConfig(
            splits=[
                example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=100 - eval_buckets),
                example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=eval_buckets),
            ],
            partition_feature_name="file_name",
        )
    )


# --- the Beam source -------------------------------------------------------------------------------------------


def make_example(data: bytes, label: int, class_name: str, file_name: str, info: Dict[str, Any]) -> tf.train.Example:
    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image": _bytes(data),
                "label": _int(label),
                "class_name": _bytes(class_name.encode()),
                "file_name": _bytes(file_name.encode()),
                "height": _int(info["height"]),
                "width": _int(info["width"]),
            }
        )
    )


class _ReadAndInspect(beam.DoFn):
    """(class_name, relative path) -> tf.Example, or a quarantine record on the 'quarantine' output."""

    QUARANTINE = "quarantine"

    def __init__(
        self, input_base: str, split_name: str, class_names: List[str], max_image_pixels: int, max_file_bytes: int
    ):
        self._input_base = input_base
        self._split_name = split_name
        self._labels = {name: i for i, name in enumerate(class_names)}
        self._max_image_pixels = max_image_pixels
        self._max_file_bytes = max_file_bytes
        self._seen = 0
        self._accepted = beam.metrics.Metrics.counter(sidecars.EXAMPLE_GEN, "accepted")
        self._quarantined = beam.metrics.Metrics.counter(sidecars.EXAMPLE_GEN, "quarantined")

    def process(self, item: Tuple[str, str]):
        # rel_path is relative to input_base, so names are unique across pre-split folders and spans too
        # (train/cats/1.jpg, span-2/cats/1.jpg).
        class_name, rel_path = item
        full = os.path.join(self._input_base, rel_path)
        data, info, reason = read_and_inspect(full, self._max_file_bytes, self._max_image_pixels)
        self._seen += 1
        if self._seen % PROGRESS_EVERY == 0:
            logging.info("ImageExampleGen: this worker has scanned %d files of split %s", self._seen, self._split_name)
        if reason is not None:
            self._quarantined.inc()
            logging.warning("ImageExampleGen: quarantined %s: %s", full, reason)
            record = {"path": full, "file_name": rel_path, "class_name": class_name, "reason": reason}
            yield beam.pvalue.TaggedOutput(self.QUARANTINE, json.dumps(record, sort_keys=True))
            return
        self._accepted.inc()
        yield make_example(data, self._labels[class_name], class_name, rel_path, info)


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _ImagesToExample(pipeline: beam.Pipeline, exec_properties: Dict[str, Any], split_pattern: str):
    """Reads the images of one input split (from the executor's listing). Quarantine records are written beside,
    to the private quarantine dir."""
    input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    split_name = split_root_of(split_pattern) or "all"
    class_names = json.loads(exec_properties[_CLASS_NAMES_KEY])
    listing: InputListing = exec_properties[_LISTING_KEY]
    files = [(f.class_name, f.path) for f in listing.files(split_pattern)]
    logging.info(
        "ImageExampleGen: %d files in %d classes under %s%s",
        len(files),
        len(class_names),
        input_base,
        f" (spans {', '.join(listing.spans)}, split {split_name})" if listing.spans else f" (split {split_name})",
    )
    results = (
        pipeline
        | "ListFiles" >> beam.Create(files, reshuffle=True)
        | "ReadAndInspect"
        >> beam.ParDo(
            _ReadAndInspect(
                input_base,
                split_name,
                class_names,
                int(exec_properties[MAX_IMAGE_PIXELS_KEY]),
                int(exec_properties[MAX_FILE_BYTES_KEY]),
            )
        ).with_outputs(_ReadAndInspect.QUARANTINE, main="examples")
    )
    # skip_if_empty: no file when nothing is quarantined. Beam's S3 writer cannot write an empty file (a multipart
    # upload with no part: S3 and MinIO answer MalformedXML), and the report reads whatever *.jsonl there is.
    _ = results[_ReadAndInspect.QUARANTINE] | "WriteQuarantine" >> beam.io.WriteToText(
        os.path.join(exec_properties[_QUARANTINE_DIR_KEY], split_name.replace("/", "_")),
        file_name_suffix=".jsonl",
        skip_if_empty=True,
    )
    return results["examples"]


class Executor(BaseExampleGenExecutor):
    """The stock ExampleGen `Do`, wrapped: one listing and the layout checks before, ingest report and usability
    checks after."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _ImagesToExample

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        spans = select_spans(input_base, exec_properties[SPANS_KEY])
        if spans:
            logging.info("ImageExampleGen: reading spans %s of %s", spans, list_spans(input_base))
        listing = list_input(input_base, input_config, spans)
        class_names = check_listing(listing)
        logging.info("ImageExampleGen: classes (label ids in this order): %s", class_names)
        # A person's label fixes, checked before anything is read (a bad row stops the run here).
        fixes = lf.load_label_fixes(input_base, exec_properties.get(LABEL_FIXES_KEY) or "")
        listing = apply_label_fixes(listing, fixes, class_names)
        if listing.label_fixes:
            logging.info(
                "ImageExampleGen: label fixes %s: %s",
                listing.label_fixes["path"],
                lf.counts_text(listing.label_fixes["counts"]),
            )

        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        quarantine_dir = os.path.join(examples.uri, "_quarantine")
        exec_properties = dict(exec_properties)
        exec_properties[_CLASS_NAMES_KEY] = json.dumps(class_names)
        exec_properties[_LISTING_KEY] = listing
        exec_properties[_QUARANTINE_DIR_KEY] = quarantine_dir
        write_dropped(quarantine_dir, input_base, listing)

        super().Do(input_dict, output_dict, exec_properties)

        report = build_report(examples.uri, input_base, input_config, class_names, quarantine_dir)
        report["spans"] = spans
        report["input_fingerprint"] = listing.fingerprint()
        if listing.label_fixes:
            report["label_fixes"] = listing.label_fixes
        report_path = write_report(examples, report)
        try:
            check_usable(report, float(exec_properties[MAX_QUARANTINE_FRACTION_KEY]), report_path)
        except DataUnusableError as exc:
            # TFX deletes a failed execution's output folder, report included, exactly when people need the
            # quarantine list: keep a copy beside it, and name that copy in the error.
            kept = keep_failed_report(examples.uri, report)
            raise DataUnusableError(str(exc).replace(report_path, kept)) from None


# --- report ----------------------------------------------------------------------------------------------------


def write_dropped(quarantine_dir: str, input_base: str, listing: InputListing) -> None:
    """Quarantine records of the files a `drop` fix took out (beside the Beam sources' records)."""
    if not listing.dropped:
        return
    tf.io.gfile.makedirs(quarantine_dir)
    with tf.io.gfile.GFile(os.path.join(quarantine_dir, "label_fixes.jsonl"), "w") as f:
        for dropped in listing.dropped:
            record = {
                "path": os.path.join(input_base, dropped.path),
                "file_name": dropped.path,
                "class_name": dropped.class_name,
                "reason": lf.DROP_REASON,
            }
            f.write(json.dumps(record, sort_keys=True) + "\n")


def count_examples(split_uri: str) -> Dict[str, int]:
    """Accepted examples per class in one written split."""
    counts: Dict[str, int] = {}
    files = tf.io.gfile.glob(os.path.join(split_uri, "*"))
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        example = tf.train.Example.FromString(record)
        name = example.features.feature["class_name"].bytes_list.value[0].decode()
        counts[name] = counts.get(name, 0) + 1
    return counts


def build_report(
    examples_uri: str, input_base: str, input_config: example_gen_pb2.Input, class_names: List[str], quarantine_dir: str
) -> Dict[str, Any]:
    quarantined = []
    for path in sorted(tf.io.gfile.glob(os.path.join(quarantine_dir, "*.jsonl"))):
        with tf.io.gfile.GFile(path) as f:
            quarantined.extend(json.loads(line) for line in f if line.strip())
    quarantined.sort(key=lambda r: r["path"])
    accepted = {}
    for split_dir in sorted(tf.io.gfile.listdir(examples_uri)):
        split_dir = split_dir.rstrip("/")
        if split_dir.startswith("Split-"):
            accepted[split_dir[len("Split-") :]] = count_examples(os.path.join(examples_uri, split_dir))
    n_accepted = sum(sum(c.values()) for c in accepted.values())
    scanned = n_accepted + len(quarantined)
    # Files a person dropped are listed, not counted against data.max_quarantine_fraction.
    dropped = sum(1 for r in quarantined if r.get("reason") == lf.DROP_REASON)
    bad, read = len(quarantined) - dropped, scanned - dropped
    return {
        "input_base": input_base,
        "splits": [{"name": s.name, "pattern": s.pattern} for s in input_config.splits],
        "class_names": class_names,
        "scanned": scanned,
        "accepted": n_accepted,
        "accepted_per_split": accepted,
        "quarantined_count": len(quarantined),
        "quarantined_fraction": (bad / read) if read else 0.0,
        "quarantined": quarantined,
    }


def write_report(examples: types.Artifact, report: Dict[str, Any]) -> str:
    """Writes the ingest report into the Examples artifact and copies its headline numbers into the artifact's
    custom properties; returns the report's path."""
    path = write_ingest_report(examples.uri, report)
    examples.set_string_custom_property("class_names", json.dumps(report["class_names"]))
    examples.set_int_custom_property("accepted_count", report["accepted"])
    examples.set_int_custom_property("quarantined_count", report["quarantined_count"])
    examples.set_string_custom_property(SPANS_PROPERTY, json.dumps(report.get("spans", [])))
    if report.get("input_fingerprint"):
        examples.set_string_custom_property(INPUT_FINGERPRINT_PROPERTY, report["input_fingerprint"])
    logging.info(
        "ImageExampleGen: scanned %d files: %d accepted %s, %d quarantined (report: %s)",
        report["scanned"],
        report["accepted"],
        {split: sum(c.values()) for split, c in report["accepted_per_split"].items()},
        report["quarantined_count"],
        path,
    )
    return path


def keep_failed_report(examples_uri: str, report: Dict[str, Any]) -> str:
    """Writes the report to `<component dir>/failed_ingest_reports/<execution>.json` (outside the output
    artifact, which TFX removes when the execution fails); returns the path."""
    component_dir = os.path.dirname(os.path.dirname(examples_uri.rstrip("/")))
    path = os.path.join(component_dir, "failed_ingest_reports", f"{os.path.basename(examples_uri.rstrip('/'))}.json")
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    return path


def check_usable(report: Dict[str, Any], max_quarantine_fraction: float, report_path: str) -> None:
    if report["quarantined_fraction"] > max_quarantine_fraction:
        dropped = (report.get("label_fixes") or {}).get("counts", {}).get("dropped", 0)
        raise DataUnusableError(
            f"{report['quarantined_count'] - dropped} of {report['scanned'] - dropped} files "
            f"({report['quarantined_fraction']:.1%}) were quarantined, above data.max_quarantine_fraction="
            f"{max_quarantine_fraction}; see the quarantine list in {report_path}"
        )
    train = report["accepted_per_split"].get("train", {})
    empty = [c for c in report["class_names"] if train.get(c, 0) == 0]
    if empty:
        raise DataUnusableError(
            f"no usable training image left for class(es) {', '.join(empty)} after quarantine; see {report_path}"
        )


# --- the driver: input fingerprint for caching ------------------------------------------------------------------


class _ImageFolderInputProcessor(input_processor.FileBasedInputProcessor):
    def __init__(self, input_base_uri, splits, range_config, spans_setting: str, label_fixes: str = ""):
        super().__init__(input_base_uri, splits, range_config)
        self._spans_setting = spans_setting
        self._label_fixes = label_fixes

    def resolve_span_and_version(self):
        spans = select_spans(self._input_base_uri, self._spans_setting)
        # MLMD's cache key: the spans selected (a new, still empty span must not reuse the last run's Examples)
        # and the input fingerprint, recursive below the class folders (TFX's own only globs the split pattern),
        # with the label fixes file's content.
        fingerprint = input_fingerprint(
            self._input_base_uri, example_gen_pb2.Input(splits=self._splits), spans, self._label_fixes
        )
        self._fingerprint = f"spans:{','.join(spans)}\n{fingerprint}"
        # The Examples' `span` property: the newest span read (0 without spans). No patterns to rewrite.
        return (span_number(spans[-1]) if spans else 0), None


class ImageFolderDriver(FileBasedDriver):
    """The stock file-based driver, fingerprinting the spans the `spans` execution property selects."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._spans_setting = None  # set from the execution property before the input processor is made
        self._label_fixes = ""

    def resolve_exec_properties(self, exec_properties, pipeline_info, component_info):
        self._spans_setting = exec_properties[SPANS_KEY]
        self._label_fixes = exec_properties.get(LABEL_FIXES_KEY) or ""
        return super().resolve_exec_properties(exec_properties, pipeline_info, component_info)

    def get_input_processor(self, splits, range_config=None, input_base_uri=None):
        return _ImageFolderInputProcessor(input_base_uri, splits, range_config, self._spans_setting, self._label_fixes)


# --- the component ---------------------------------------------------------------------------------------------


class ImageExampleGenSpec(standard_component_specs.FileBasedExampleGenSpec):
    PARAMETERS = {
        **standard_component_specs.FileBasedExampleGenSpec.PARAMETERS,
        MAX_QUARANTINE_FRACTION_KEY: ExecutionParameter(type=float),
        MAX_IMAGE_PIXELS_KEY: ExecutionParameter(type=int),
        SPANS_KEY: ExecutionParameter(type=str),
        MAX_FILE_BYTES_KEY: ExecutionParameter(type=int),
        LABEL_FIXES_KEY: ExecutionParameter(type=str, optional=True),
    }


class ImageExampleGen(FileBasedExampleGen):
    """FileBasedExampleGen over class-per-folder images (subclassed so TFX's driver and KFP compiler treat it as
    one: the KFP v2 compiler adds the file-fingerprinting driver to FileBasedExampleGen instances only)."""

    SPEC_CLASS = ImageExampleGenSpec
    DRIVER_CLASS = ImageFolderDriver
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, input_base: str, split_mode: str, data: DataConfig):
        """input_base: the image folder (a Kubeflow run parameter there); split_mode: "hash" or "presplit", already
        resolved (not data.split_mode, which may be "auto"); data: every other ingestion setting."""
        spec = ImageExampleGenSpec(
            input_base=input_base,
            input_config=make_input_config(split_mode, data.train_dir, data.eval_dir),
            output_config=make_output_config(split_mode, data.eval_fraction),
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            max_quarantine_fraction=data.max_quarantine_fraction,
            max_image_pixels=data.max_image_pixels,
            spans=data.spans,
            max_file_bytes=data.max_file_bytes,
            label_fixes=data.label_fixes,
            examples=types.Channel(type=types.standard_artifacts.Examples),
        )
        # Skip FileBasedExampleGen.__init__ (it builds the stock spec); the base class does the rest.
        base_beam_component.BaseBeamComponent.__init__(self, spec=spec)

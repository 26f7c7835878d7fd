"""The files one piece of ftune writes and another reads: their names, readers and writers, in one place.

Every such file is named here once; nothing else opens them by name. The component ids are here too, because a
reader finds a file as `<pipeline_root>/<component id>/<output key>/<execution id>/<file>`.

file                   where                                     written by        read by
ingest_report.json     <Examples artifact>/                      ImageExampleGen   Evaluator, Pusher, summary, report
gate.json              <ModelEvaluation>/, <ModelBlessing>/      Evaluator         Pusher, summary, report
training_history.json  <Model artifact>/ (beside Format-Serving)  Trainer          Pusher, report, benchmarks
labels.txt             <Model>/, <SavedModel>/assets.extra/      Trainer           Evaluator, warm start, predict
warm_start.json        <SavedModel>/assets.extra/                Trainer           report
model.keras            <SavedModel>/assets.extra/                Trainer           Trainer (warm start)
tflite.json            <SavedModel>/assets.extra/                Trainer           report, summary
model_record.json      <serving dir>/<version>/assets.extra/     Pusher, rollback  versions, no-op check, report
                                                                                   (schema: serving/model_record.py)
refused_attempt.json   <serving dir>/ (beside the versions)      Pusher (refused)  ChangeCheck, versions, report
                                                                 (keys: components/change_check.py)
label_issues.json      <Model artifact>/ (beside Format-Serving)  Trainer          summary, report
data_changes.json      <Model artifact>/ (beside Format-Serving)  Trainer          summary, report
feature_profile.json   <SavedModel>/assets.extra/                Trainer          Trainer (the next run's
                                                                                   data_changes.json)
                       (keys of all three: components/data_findings.py)
eval_predictions.json  <Model artifact>/ (beside Format-Serving)  Trainer          report
                       (keys: trainer/eval_predictions.py)
review.csv             <pipeline_root>/ (or `ftune review --out`)  `ftune review`   a person (it is a fixes file)
label_fixes.csv        <data_root>/ (or data.label_fixes)        a person          ImageExampleGen, ChangeCheck,
                                                                                   `ftune run`/`ingest` (checks)
                       (columns and rules: components/label_fixes.py; ingest_report.json's "label_fixes" holds
                       what was applied, and the Trainer reads its kept list from there)

Local paths are read with Python's own file functions, so that commands that only read records (`ftune
versions`, `rollback`) start without TensorFlow; a URI with a scheme (gs://, s3://) goes through TFX's fileio.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional

from serving.signatures import ASSETS_EXTRA

# --- component ids: the node ids `create_pipeline` gives, and the folders their outputs live in -----------------

EXAMPLE_GEN = "ImageExampleGen"
STATISTICS_GEN = "StatisticsGen"
SCHEMA_GEN = "SchemaGen"
EXAMPLE_VALIDATOR = "ExampleValidator"
TRANSFORM = "Transform"
TRAINER = "Trainer"
SERVED_MODEL_BASELINE = "ServedModelBaseline"
EVALUATOR = "Evaluator"
PUSHER = "Pusher"
# The change check at the head of the pipeline (components/change_check.py); its decision artifact is in MLMD.
CHANGE_CHECK = "ChangeCheck"
# In DAG order.
COMPONENT_IDS = (
    CHANGE_CHECK,
    EXAMPLE_GEN,
    STATISTICS_GEN,
    SCHEMA_GEN,
    EXAMPLE_VALIDATOR,
    TRANSFORM,
    TRAINER,
    SERVED_MODEL_BASELINE,
    EVALUATOR,
    PUSHER,
)

# --- file names ------------------------------------------------------------------------------------------------

INGEST_REPORT_FILE = "ingest_report.json"
GATE_FILE = "gate.json"
HISTORY_FILE = "training_history.json"
LABELS_FILE = "labels.txt"
WARM_START_FILE = "warm_start.json"
KERAS_MODEL_FILE = "model.keras"
TFLITE_RECORD_FILE = "tflite.json"
MODEL_RECORD_FILE = "model_record.json"
# Beside the versions: TF Serving and serving/model_versions.py take only integer-named entries for versions.
REFUSED_ATTEMPT_FILE = "refused_attempt.json"
# The Trainer's findings about its training data (components/data_findings.py): beside training_history.json, and
# the per-class feature profile that travels with the pushed version.
LABEL_ISSUES_FILE = "label_issues.json"
DATA_CHANGES_FILE = "data_changes.json"
FEATURE_PROFILE_FILE = "feature_profile.json"
# The trained model's class probabilities for every eval image, by file name (trainer/eval_predictions.py).
EVAL_PREDICTIONS_FILE = "eval_predictions.json"
# A person's decisions on the flagged images (components/label_fixes.py), and the list `ftune review` writes for them.
LABEL_FIXES_FILE = "label_fixes.csv"
REVIEW_FILE = "review.csv"
# review.csv's columns: the first three are a fixes file's (action empty, class prefilled with the suggestion).
REVIEW_COLUMNS = ("file", "action", "class", "span", "given_class", "suggested_class", "probability")
# The SavedModel's folder inside a TFX Model artifact (tfx.utils.path_utils.serving_model_path names it too;
# it is spelled here so that readers need not import TFX).
SERVING_MODEL_DIR = "Format-Serving"

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


# --- plain file access: local paths without TensorFlow, URIs through TFX's fileio -------------------------------


def _is_uri(path: str) -> bool:
    return bool(_SCHEME.match(path))


def exists(path: str) -> bool:
    if _is_uri(path):
        from tfx.dsl.io import fileio

        return fileio.exists(path)
    return os.path.exists(path)


def _read(path: str, binary: bool = False):
    """The file's text (UTF-8) or bytes, or None when it does not exist; a URI through TFX's fileio."""
    if not exists(path):
        return None
    if _is_uri(path):
        from tfx.dsl.io import fileio

        with fileio.open(path, "rb" if binary else "r") as f:
            return f.read()
    with open(path, "rb") if binary else open(path, encoding="utf-8") as f:
        return f.read()


def _read_text(path: str) -> Optional[str]:
    return _read(path)


def _write_text(path: str, text: str) -> str:
    if _is_uri(path):
        from tfx.dsl.io import fileio

        fileio.makedirs(os.path.dirname(path))
        with fileio.open(path, "w") as f:
            f.write(text)
    else:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return path


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    text = _read_text(path)
    return None if text is None else json.loads(text)


def _write_json(path: str, data: Dict[str, Any]) -> str:
    return _write_text(path, json.dumps(data, indent=2, sort_keys=True))


# --- paths -----------------------------------------------------------------------------------------------------


def serving_model_dir(model_uri: str) -> str:
    """The SavedModel inside a TFX Model artifact (what the Evaluator and the Pusher read)."""
    return os.path.join(model_uri, SERVING_MODEL_DIR)


def assets_extra(saved_model_dir: str) -> str:
    """`<SavedModel or served version>/assets.extra`: files TF Serving serves with a version but ignores."""
    return os.path.join(saved_model_dir, ASSETS_EXTRA)


def ingest_report_path(examples_uri: str) -> str:
    return os.path.join(examples_uri, INGEST_REPORT_FILE)


def history_path(model_uri: str) -> str:
    return os.path.join(model_uri, HISTORY_FILE)


def keras_model_path(saved_model_dir: str) -> str:
    return os.path.join(assets_extra(saved_model_dir), KERAS_MODEL_FILE)


def model_record_path(version_dir: str) -> str:
    return os.path.join(assets_extra(version_dir), MODEL_RECORD_FILE)


# --- ingest_report.json: ImageExampleGen's accepted counts and quarantine list ----------------------------------


def read_ingest_report(examples_uri: Optional[str]) -> Optional[Dict[str, Any]]:
    """{scanned, accepted, accepted_per_split: {split: {class: n}}, class_names, quarantined: [{path, reason}],
    quarantined_count, quarantined_fraction, input_base, spans, input_fingerprint}; None when absent."""
    if not examples_uri:
        return None
    return _read_json(ingest_report_path(examples_uri))


def write_ingest_report(examples_uri: str, report: Dict[str, Any]) -> str:
    return _write_json(ingest_report_path(examples_uri), report)


def eval_class_counts(examples_uri: str, eval_split: str = "eval") -> Dict[str, int]:
    """Accepted images per class of one split (the eval split by default); {} without a report."""
    report = read_ingest_report(examples_uri) or {}
    return {str(k): int(v) for k, v in (report.get("accepted_per_split") or {}).get(eval_split, {}).items()}


# --- gate.json: what the Evaluator's gate checked and found -----------------------------------------------------


def read_gate(artifact_uri: str) -> Optional[Dict[str, Any]]:
    """The gate summary in an evaluation or blessing artifact (keys: components/evaluator_gate.py), or None."""
    return _read_json(os.path.join(artifact_uri, GATE_FILE))


def write_gate(artifact_uri: str, summary: Dict[str, Any]) -> str:
    return _write_json(os.path.join(artifact_uri, GATE_FILE), summary)


# --- training_history.json: per epoch, both phases, timings, the settings in effect, the warm start -------------


def read_history(model_uri: str) -> Optional[Dict[str, Any]]:
    return _read_json(history_path(model_uri))


def write_history(model_uri: str, history: Dict[str, Any]) -> str:
    return _write_text(history_path(model_uri), json.dumps(history, indent=2))


# --- labels.txt: class names in label-id order ------------------------------------------------------------------


def read_labels(directory: str) -> Optional[List[str]]:
    """Class names from `<directory>/labels.txt`, or from `<directory>/assets.extra/labels.txt` (a SavedModel or
    a served version), or from the SavedModel inside a Model artifact; None when there are none."""
    for path in (
        os.path.join(directory, LABELS_FILE),
        os.path.join(assets_extra(directory), LABELS_FILE),
        os.path.join(assets_extra(serving_model_dir(directory)), LABELS_FILE),
    ):
        text = _read_text(path)
        if text is not None:
            return [line.strip() for line in text.splitlines() if line.strip()]
    return None


def write_labels(directory: str, class_names: List[str]) -> str:
    """`<directory>/labels.txt` (a Model artifact's root, or a SavedModel's assets.extra)."""
    return _write_text(os.path.join(directory, LABELS_FILE), "".join(f"{name}\n" for name in class_names))


# --- warm_start.json: where the Trainer started from, and why ----------------------------------------------------


def read_warm_start(saved_model_dir: str) -> Optional[Dict[str, Any]]:
    """{"from_version": N or None, "reason": "..."} or None."""
    return _read_json(os.path.join(assets_extra(saved_model_dir), WARM_START_FILE))


def write_warm_start(saved_model_dir: str, warm_start: Dict[str, Any]) -> str:
    return _write_json(os.path.join(assets_extra(saved_model_dir), WARM_START_FILE), warm_start)


# --- tflite.json: the TFLite conversion and its accuracy check ---------------------------------------------------


def read_tflite_record(saved_model_dir: str) -> Optional[Dict[str, Any]]:
    return _read_json(os.path.join(assets_extra(saved_model_dir), TFLITE_RECORD_FILE))


def write_tflite_record(saved_model_dir: str, record: Dict[str, Any]) -> str:
    return _write_text(os.path.join(assets_extra(saved_model_dir), TFLITE_RECORD_FILE), json.dumps(record, indent=2))


# --- model_record.json: what every pushed version carries (schema: serving/model_record.py) ----------------------


def read_model_record(version_dir: str) -> Optional[Dict[str, Any]]:
    """The version's record, or None when it has none (pushed by an older ftune, or by hand)."""
    return _read_json(model_record_path(version_dir))


def write_model_record(version_dir: str, record: Dict[str, Any]) -> str:
    return _write_json(model_record_path(version_dir), record)


# --- refused_attempt.json: the last attempt the gate refused (keys: components/change_check.py) -------------------


def refused_attempt_path(serving_model_dir: str) -> str:
    return os.path.join(serving_model_dir, REFUSED_ATTEMPT_FILE)


def read_refused_attempt(serving_model_dir: str) -> Optional[Dict[str, Any]]:
    """{fingerprint, settings, served_version, failed_checks, pipeline_run, time} of the last attempt the gate
    refused, or None when none ever was. It is kept after later pushes (`ftune versions` shows it); the change check
    applies it only while `served_version` is still the one served."""
    return _read_json(refused_attempt_path(serving_model_dir))


def write_refused_attempt(serving_model_dir: str, attempt: Dict[str, Any]) -> str:
    """Replaces the file in one step on local/PVC paths (a temporary name, then a rename), so that a change check
    never reads half of it; an object store's write is whole already."""
    path = refused_attempt_path(serving_model_dir)
    if _is_uri(path):
        return _write_json(path, attempt)
    temporary = f"{path}.{os.getpid()}.tmp"
    _write_json(temporary, attempt)
    os.replace(temporary, path)
    return path


# --- label_issues.json, data_changes.json, feature_profile.json: the Trainer's findings about its training data ----
# (keys: components/data_findings.py)


def label_issues_path(model_uri: str) -> str:
    return os.path.join(model_uri, LABEL_ISSUES_FILE)


def read_label_issues(model_uri: str) -> Optional[Dict[str, Any]]:
    """Suspected label errors among the training images, grouped by span and class folder; None when absent
    (trainer.label_issues=false, or a model trained by an older ftune)."""
    return _read_json(label_issues_path(model_uri))


def write_label_issues(model_uri: str, findings: Dict[str, Any]) -> str:
    return _write_json(label_issues_path(model_uri), findings)


def data_changes_path(model_uri: str) -> str:
    return os.path.join(model_uri, DATA_CHANGES_FILE)


def read_data_changes(model_uri: str) -> Optional[Dict[str, Any]]:
    """What changed in the training data since the served version (images per class and span, per-class feature
    distances of the new spans); None when absent."""
    return _read_json(data_changes_path(model_uri))


def write_data_changes(model_uri: str, changes: Dict[str, Any]) -> str:
    return _write_json(data_changes_path(model_uri), changes)


def read_feature_profile(saved_model_dir: str) -> Optional[Dict[str, Any]]:
    """The per-class feature profile of the data a model (or a served version) was trained on, or None."""
    return _read_json(os.path.join(assets_extra(saved_model_dir), FEATURE_PROFILE_FILE))


def write_feature_profile(saved_model_dir: str, profile: Dict[str, Any]) -> str:
    # Compact: the profile holds a mean vector per class (1280 numbers for MobileNetV2).
    return _write_text(os.path.join(assets_extra(saved_model_dir), FEATURE_PROFILE_FILE), json.dumps(profile))


# --- eval_predictions.json: the trained model's predictions for the eval split (keys: trainer/eval_predictions.py) --


def eval_predictions_path(model_uri: str) -> str:
    return os.path.join(model_uri, EVAL_PREDICTIONS_FILE)


def read_eval_predictions(model_uri: str) -> Optional[Dict[str, Any]]:
    """Class probabilities, labels and file names of every eval image; None when absent (the examples carried no
    file names, or a model trained by an older ftune)."""
    return _read_json(eval_predictions_path(model_uri))


def write_eval_predictions(model_uri: str, predictions: Dict[str, Any]) -> str:
    # Compact: a row of probabilities per eval image.
    return _write_text(eval_predictions_path(model_uri), json.dumps(predictions))


# --- label_fixes.csv, review.csv: a person's decisions on flagged images (rules: components/label_fixes.py) ----------


def label_fixes_path(data_root: str, setting: str = "") -> Optional[str]:
    """The fixes file a run applies: `setting` (data.label_fixes) when given, else `<data_root>/label_fixes.csv`
    when it exists, else None."""
    if setting:
        return setting
    if not data_root:
        return None
    path = os.path.join(data_root, LABEL_FIXES_FILE)
    return path if exists(path) else None


def read_label_fixes(path: str) -> Optional[bytes]:
    """The fixes file's bytes (hashed as they are, then decoded as UTF-8), or None when it does not exist."""
    return _read(path, binary=True)


def review_path(pipeline_root: str) -> str:
    return os.path.join(pipeline_root, REVIEW_FILE)


def write_review(path: str, rows: List[Dict[str, Any]]) -> str:
    """review.csv: one row per flagged image, REVIEW_COLUMNS in that order."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(REVIEW_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in REVIEW_COLUMNS})
    return _write_text(path, out.getvalue())

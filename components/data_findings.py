"""What the Trainer finds out about its training data besides the model: suspected label errors, grouped by span
and class folder, and what changed since the served version. The arithmetic is trainer/label_issues.py; this module
computes the features, groups by folder, words the findings and writes the files (names: serving/sidecars.py).

The features: the model's pretrained base (and its pooling) over the un-augmented training images, in the order
of the Transform output and with each image's `file_name`. The pretrained base's features never saw these labels,
so the heads' probabilities are out of sample, and they are one feature space in every run with the same base and
image size, warm start or cold, so a served version's profile can be compared with a later run's images. Where
they come from:
  * a cold start with phase 1 on cached features (the defaults, `examine_cached_features`): the phase-1 feature
    cache's version 0 (the image itself), which the Trainer builds in file order with file names for this; no
    extra pass of the base;
  * otherwise (`examine_training_data`, called before a warm start copies the served weights in, because a warm
    start's caches come from the served model's fine-tuned base): one pass of the pretrained base of its own,
    3.8 ms per image at 160 px on a 2-core CPU.
Plus a few seconds of numpy; the Trainer logs the time and records it as `label_issues_s` in training_history.json
(label_issues.json says where the features came from: "features_from").

Files (all JSON):
  label_issues.json, in the Model artifact beside training_history.json:
    {"rule", "feature_space", "images", "flagged_count", "flagged_fraction", "folds", "rounds", "dimensions",
     "thresholds": {class: t}, "groups": [{"folder", "span", "class", "images", "flagged",
     "looks_like": {class: n}}] (every class folder, most flagged first), "flagged": [{"file_name", "given",
     "suggested", "given_probability", "suggested_probability"}] (most contradicted first), "features_from",
     "seconds"},
    or {"error": "..."} when the check could not be made (training goes on).
  data_changes.json, in the Model artifact:
    {"served_version", "compared", "note" (why not compared), "threshold", "min_images", "images_per_span"
     ({span: {class: n}}, training images of this run), "served_spans", "served_images_per_span", "new_spans",
     "compared_spans": [{"span", "new", "images", "classes": {class: {"images", "distance",
     "nearest_served_class", "different", "note"}}, "different_classes"}]}
  feature_profile.json, in the SavedModel's assets.extra (pushed with the version; the next run reads the served
  one through the Trainer's `base_model` input, the ServedModelBaseline's copy of the served version):
    {"feature_space": {"base_model", "image_size", "weights"}, "spans", "images_per_span",
     "classes": {class: {"count", "spread", "mean": [...]}}}
The span "" stands for images outside span folders (a data root without span-<N> folders): "the training data".
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np
import tensorflow as tf

from components.image_listing import SPAN_FOLDER, span_number
from serving import sidecars
from trainer import features as feature_keys
from trainer import label_issues as li
from trainer.settings import TrainerConfig
from trainer.sub_models import POOLED, extractor
from trainer.weights import IMAGENET, resolve_weights

log = logging.getLogger(__name__)

SPANLESS = ""
# A class of a new span with fewer training images than this is listed, not compared: the distance of a handful of
# images scatters (measured on the sample shapes, same distribution: up to 0.57 with 5 images, 0.33 with 10).
DRIFT_MIN_IMAGES = 10
RULE = (
    "confident learning (Northcutt et al. 2021): out-of-sample probabilities from k-fold softmax heads on the "
    "pretrained base's pooled features; an image is flagged when the class it confidently belongs to is not its label"
)
# How many class folders the summary line names.
LINE_GROUPS = 2
# Where the features came from (label_issues.json "features_from").
FROM_FEATURE_CACHE = "the phase-1 feature cache (cold start: the pretrained base)"
FROM_OWN_PASS = "a pass of the pretrained base over the training images"


@dataclasses.dataclass
class TrainingFeatures:
    """Pooled features of the pretrained base for every training image, in the Transform output's order."""

    features: np.ndarray  # float32 [n, d]
    labels: np.ndarray  # int64 [n]
    file_names: List[str]  # relative to the data root: span-3/train/circle/x.png, cats/1.jpg
    seconds: float
    source: str = FROM_OWN_PASS  # or FROM_FEATURE_CACHE


@dataclasses.dataclass
class Findings:
    label_issues: Dict[str, Any]  # label_issues.json
    data_changes: Optional[Dict[str, Any]]  # data_changes.json; None: no features
    profile: Optional[Dict[str, Any]]  # feature_profile.json; None: no features
    seconds: float  # all of it, features included


# --- the Trainer's entry point -------------------------------------------------------------------------------------


def examine_training_data(
    cfg: TrainerConfig,
    model,
    base,
    train_files: List[str],
    tf_transform_output,
    class_names: List[str],
    served_version: Optional[int],
    served_dir: Optional[str],
) -> Optional[Findings]:
    """Label issues, data changes and this run's feature profile, from one pass of the base over the training
    images; None when trainer.label_issues is off.

    Call it before a warm start copies the served weights into `model` (the features are the pretrained base's).
    `served_dir`: the served SavedModel (the Trainer's `base_model` input) when a version is served. A failure is
    logged and recorded in label_issues.json: the model still trains."""
    if not cfg.label_issues:
        return None
    return _examine(
        cfg,
        lambda: training_features(model, base, train_files, tf_transform_output, cfg.image_size, cfg.batch_size),
        class_names,
        served_version,
        served_dir,
    )


def examine_cached_features(
    cfg: TrainerConfig,
    features: np.ndarray,
    labels: np.ndarray,
    file_names: List[str],
    class_names: List[str],
    served_version: Optional[int],
    served_dir: Optional[str],
) -> Optional[Findings]:
    """The same findings from the phase-1 feature cache's pooled features of the un-augmented training images
    (trainer/fine_tune.py `on_pooled_features`), which are these very features on a cold start: no second pass
    of the base. Only for a cold start (a warm start's caches hold the served model's fine-tuned base)."""
    if not cfg.label_issues:
        return None
    return _examine(
        cfg,
        lambda: TrainingFeatures(features, labels, file_names, 0.0, FROM_FEATURE_CACHE),
        class_names,
        served_version,
        served_dir,
    )


def _examine(
    cfg: TrainerConfig,
    get_features: Callable[[], TrainingFeatures],
    class_names: List[str],
    served_version: Optional[int],
    served_dir: Optional[str],
) -> Findings:
    started = time.perf_counter()
    try:
        data = get_features()
        issues = label_issue_report(data, class_names, cfg)
        checked = time.perf_counter()
        profile = feature_profile(data, class_names, cfg)
        served_profile = sidecars.read_feature_profile(served_dir) if served_dir else None
        why_not = not_compared_reason(cfg, served_version, served_profile)
        changes = data_changes_report(data, class_names, cfg, served_version, served_profile, why_not)
    except Exception as exc:  # the model matters more than the check: record why, train on
        log.warning("Trainer: the check of the training data failed; training goes on", exc_info=True)
        lines = str(exc).strip().splitlines()
        error = {"error": f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"}
        return Findings(error, None, None, time.perf_counter() - started)
    issues["features_from"] = data.source
    issues["seconds"] = {
        "features": round(data.seconds, 2),
        "label_issues": round(checked - started - data.seconds, 2),
        "data_changes": round(time.perf_counter() - checked, 2),
    }
    findings = Findings(issues, changes, profile, time.perf_counter() - started)
    log.info("Trainer: %s", label_issues_line(issues))
    changed = data_changes_line(changes)
    if changed:
        log.info("Trainer: %s", changed)
    log.info("Trainer: the training data's check took %.1f s (features %.1f s)", findings.seconds, data.seconds)
    return findings


def leave_out_kept(findings: Optional[Findings], kept: Iterable[str]) -> Optional[Findings]:
    """The findings without the flagged images a person's label fixes marked `keep` (components/label_fixes.py):
    they leave the flagged list, the counts and their folders' groups; `kept_left_out` says how many. The images
    still train and still count in `images`."""
    kept = set(kept)
    issues = findings.label_issues if findings else None
    if not kept or not issues or "flagged" not in issues:
        return findings
    out = [entry for entry in issues["flagged"] if entry["file_name"] in kept]
    if not out:
        return findings
    groups = {g["folder"]: dict(g, looks_like=dict(g.get("looks_like") or {})) for g in issues["groups"]}
    for entry in out:
        group = groups.get(class_folder(entry["file_name"], entry["given"]))
        if group is None:
            continue
        group["flagged"] -= 1
        like = group["looks_like"]
        like[entry["suggested"]] = like.get(entry["suggested"], 0) - 1
        if like[entry["suggested"]] <= 0:
            del like[entry["suggested"]]
    flagged = [entry for entry in issues["flagged"] if entry["file_name"] not in kept]
    updated = {
        **issues,
        "flagged": flagged,
        "flagged_count": len(flagged),
        "flagged_fraction": len(flagged) / issues["images"] if issues.get("images") else 0.0,
        "groups": sorted(groups.values(), key=lambda g: (-g["flagged"], -g["flagged"] / g["images"], g["folder"])),
        "kept_left_out": len(out),
    }
    log.info("Trainer: %d flagged image(s) left out: a person's label fixes kept their labels", len(out))
    return dataclasses.replace(findings, label_issues=updated)


def write_findings(findings: Findings, model_root: str, export_dir: str) -> None:
    """label_issues.json and data_changes.json beside the training history; the profile into the export's
    assets.extra, so that it is pushed with the version."""
    sidecars.write_label_issues(model_root, findings.label_issues)
    if findings.data_changes is not None:
        sidecars.write_data_changes(model_root, findings.data_changes)
    if findings.profile is not None:
        sidecars.write_feature_profile(export_dir, findings.profile)


# --- the features --------------------------------------------------------------------------------------------------


def training_features(
    model, base, train_files: List[str], tf_transform_output, image_size: int, batch_size: int
) -> TrainingFeatures:
    """One pass of the model's preprocessing, frozen base and pooling (inference mode, no augmentation)."""
    started = time.perf_counter()
    run = extractor(model, base, [POOLED], None)

    @tf.function(reduce_retracing=True)
    def pooled(images):
        return run(images, training=False)[POOLED]

    chunks, labels, names = [], [], []
    for images, batch_labels, batch_names in named_batches(train_files, tf_transform_output, image_size, batch_size):
        chunks.append(np.asarray(pooled(images), dtype=np.float32))
        labels.append(np.asarray(batch_labels).reshape(-1))
        names.extend(name.decode("utf-8", "replace") for name in np.asarray(batch_names).reshape(-1))
    if not chunks:
        raise ValueError(f"no training examples in {train_files}")
    features = np.concatenate(chunks)
    labels = np.concatenate(labels).astype(np.int64)
    return TrainingFeatures(features, labels, names, time.perf_counter() - started)


def named_batches(files: List[str], tf_transform_output, image_size: int, batch_size: int) -> tf.data.Dataset:
    """Transformed examples in file order: (images float32 [0, 255], labels, file names). The check's own pass
    reads the training split so; on a cold start the Trainer builds its feature caches from them instead, and the
    check takes the features from there (`examine_cached_features`). The Trainer reads the eval split so too, for
    its predictions by file name (trainer/eval_predictions.py)."""
    spec = tf_transform_output.transformed_feature_spec()
    paths = sorted(path for pattern in files for path in tf.io.gfile.glob(pattern))
    records = tf.data.TFRecordDataset(paths, compression_type="GZIP")

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        images = feature_keys.parse_images(parsed[feature_keys.TRANSFORMED_IMAGE_KEY], image_size)
        return images, parsed[feature_keys.LABEL_KEY], parsed[feature_keys.FILE_NAME_KEY]

    return records.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def feature_space(cfg: TrainerConfig) -> Dict[str, Any]:
    """What the features are: a profile is comparable with this run's images only in the same space."""
    weights = resolve_weights(cfg.weights)  # "imagenet", a file path, or None (random weights)
    return {
        "base_model": cfg.base_model,
        "image_size": int(cfg.image_size),
        "weights": "none" if weights is None else (weights if weights == IMAGENET else os.path.basename(weights)),
        "features": "pooled output of the pretrained base, before any fine-tuning",
    }


# --- spans and class folders ---------------------------------------------------------------------------------------


def span_of(file_name: str) -> str:
    """`span-3/train/circle/x.png` -> `span-3`; SPANLESS outside span folders."""
    first = file_name.split("/", 1)[0]
    return first if SPAN_FOLDER.match(first) else SPANLESS


def class_folder(file_name: str, class_name: str) -> str:
    """The class folder an image was read from: `span-3/train/circle`, `train/cats`, `cats` (its path up to the
    class's own folder, so that images in sub-folders of a class count with it)."""
    parts = file_name.split("/")
    for index, part in enumerate(parts[:-1]):
        if part == class_name:
            return "/".join(parts[: index + 1])
    return os.path.dirname(file_name) or class_name


def _span_order(span: str):
    return (0, 0) if span == SPANLESS else (1, span_number(span))


def images_per_span(file_names: List[str], labels: np.ndarray, class_names: List[str]) -> Dict[str, Dict[str, int]]:
    """{span: {class: training images}}, spans in order (SPANLESS first)."""
    counts: Dict[str, Dict[str, int]] = {}
    for name, label in zip(file_names, labels, strict=True):
        per_class = counts.setdefault(span_of(name), {})
        per_class[class_names[label]] = per_class.get(class_names[label], 0) + 1
    return {span: dict(sorted(counts[span].items())) for span in sorted(counts, key=_span_order)}


# --- suspected label errors ----------------------------------------------------------------------------------------


def label_issue_report(data: TrainingFeatures, class_names: List[str], cfg: TrainerConfig) -> Dict[str, Any]:
    """label_issues.json's content (without "seconds")."""
    report: Dict[str, Any] = {"rule": RULE, "feature_space": feature_space(cfg), "images": len(data.labels)}
    if len(data.labels) < li.MIN_IMAGES:
        return {**report, "error": f"{len(data.labels)} training images are too few (at least {li.MIN_IMAGES})"}
    issues = li.find_label_issues(data.features, data.labels, len(class_names), cfg.label_issue_folds, cfg.seed)
    flagged = int(issues.flagged.sum())
    return {
        **report,
        "flagged_count": flagged,
        "flagged_fraction": flagged / len(data.labels),
        "folds": issues.folds,
        "rounds": issues.rounds,
        "dimensions": issues.dimensions,
        "thresholds": {name: _rounded(t) for name, t in zip(class_names, issues.thresholds, strict=True)},
        "groups": folder_groups(data.file_names, data.labels, issues.flagged, issues.suggested, class_names),
        "flagged": flagged_images(data.file_names, data.labels, issues, class_names),
    }


def folder_groups(
    file_names: List[str], labels: np.ndarray, flagged: np.ndarray, suggested: np.ndarray, class_names: List[str]
) -> List[Dict[str, Any]]:
    """One entry per class folder: images, flagged, and what the flagged ones look like; most flagged first."""
    groups: Dict[str, Dict[str, Any]] = {}
    for index, (name, label) in enumerate(zip(file_names, labels, strict=True)):
        given = class_names[label]
        folder = class_folder(name, given)
        group = groups.setdefault(
            folder, {"folder": folder, "span": span_of(name), "class": given, "images": 0, "flagged": 0}
        )
        group.setdefault("looks_like", {})
        group["images"] += 1
        if flagged[index]:
            group["flagged"] += 1
            like = class_names[suggested[index]]
            group["looks_like"][like] = group["looks_like"].get(like, 0) + 1
    for group in groups.values():
        group["looks_like"] = dict(sorted(group["looks_like"].items(), key=lambda item: (-item[1], item[0])))
    return sorted(groups.values(), key=lambda g: (-g["flagged"], -g["flagged"] / g["images"], g["folder"]))


def flagged_images(
    file_names: List[str], labels: np.ndarray, issues: li.LabelIssues, class_names: List[str]
) -> List[Dict[str, Any]]:
    """The flagged images, the most contradicted first (suggested minus given probability)."""
    rows = []
    for index in np.flatnonzero(issues.flagged):
        given, suggested = int(labels[index]), int(issues.suggested[index])
        p = issues.probabilities[index]
        rows.append(
            {
                "file_name": file_names[index],
                "given": class_names[given],
                "suggested": class_names[suggested],
                "given_probability": _rounded(p[given]),
                "suggested_probability": _rounded(p[suggested]),
            }
        )
    return sorted(rows, key=lambda r: (r["given_probability"] - r["suggested_probability"], r["file_name"]))


# --- what changed since the served version -------------------------------------------------------------------------


def feature_profile(data: TrainingFeatures, class_names: List[str], cfg: TrainerConfig) -> Dict[str, Any]:
    """feature_profile.json: per class, the mean pooled feature vector, the image count and the spread."""
    classes = {}
    for label, name in enumerate(class_names):
        rows = data.features[data.labels == label]
        if len(rows):
            stats = li.class_stats(rows)
            classes[name] = {"count": stats.count, "spread": _precise(stats.spread), "mean": _vector(stats.mean)}
    per_span = images_per_span(data.file_names, data.labels, class_names)
    return {
        "feature_space": feature_space(cfg),
        "spans": [span for span in per_span if span != SPANLESS],
        "images_per_span": per_span,
        "classes": classes,
    }


def not_compared_reason(
    cfg: TrainerConfig, served_version: Optional[int], served_profile: Optional[Dict[str, Any]]
) -> str:
    """Why this run's images cannot be compared with the served version's training data; "" when they can."""
    if served_version is None:
        return "nothing is served yet"
    if served_profile is None:
        return (
            f"served version {served_version} has no feature profile (trained by an older ftune or with "
            "trainer.label_issues=false)"
        )
    space, ours = served_profile.get("feature_space") or {}, feature_space(cfg)
    if (space.get("base_model"), space.get("image_size")) != (ours["base_model"], ours["image_size"]):
        return (
            f"served version {served_version}'s profile was made with {space.get('base_model')} at "
            f"{space.get('image_size')} px, this run uses {ours['base_model']} at {ours['image_size']} px"
        )
    return ""


def data_changes_report(
    data: TrainingFeatures,
    class_names: List[str],
    cfg: TrainerConfig,
    served_version: Optional[int],
    served_profile: Optional[Dict[str, Any]],
    not_compared: str,
) -> Dict[str, Any]:
    """data_changes.json: the spans read and their images per class against the served version's, and, per class
    of each new span (all training images when no span is new), the distance from the served class."""
    per_span = images_per_span(data.file_names, data.labels, class_names)
    report: Dict[str, Any] = {
        "served_version": served_version,
        "compared": False,
        "note": not_compared,
        "threshold": float(cfg.drift_threshold),
        "min_images": DRIFT_MIN_IMAGES,
        "images_per_span": per_span,
        "served_spans": None,
        "served_images_per_span": None,
        "new_spans": [],
        "compared_spans": [],
    }
    if not_compared:
        return report
    served_spans = list(served_profile.get("spans") or [])
    new = [span for span in per_span if span != SPANLESS and span not in served_spans]
    reference = {
        name: li.ClassStats(np.asarray(c["mean"], dtype=np.float64), int(c["count"]), float(c["spread"]))
        for name, c in served_profile["classes"].items()
    }
    spans = np.array([span_of(name) for name in data.file_names])
    compared = []
    for span in new or [SPANLESS]:
        rows = spans == span if span != SPANLESS else np.ones(len(spans), dtype=bool)
        classes = _compare_classes(data, rows, class_names, reference, cfg.drift_threshold, served_version)
        different = [name for name, c in classes.items() if c["different"]]
        compared.append(
            {
                "span": span,
                "new": span in new,
                "images": int(rows.sum()),
                "classes": classes,
                "different_classes": different,
            }
        )
    report.update(
        compared=True,
        served_spans=served_spans,
        served_images_per_span=served_profile.get("images_per_span"),
        new_spans=new,
        compared_spans=compared,
    )
    return report


def _compare_classes(
    data: TrainingFeatures,
    rows: np.ndarray,
    class_names: List[str],
    reference: Dict[str, li.ClassStats],
    threshold: float,
    served_version: int,
) -> Dict[str, Dict[str, Any]]:
    classes = {}
    for label, name in enumerate(class_names):
        members = rows & (data.labels == label)
        count = int(members.sum())
        if not count:
            continue
        entry = {"images": count, "distance": None, "nearest_served_class": None, "different": False, "note": ""}
        classes[name] = entry
        if name not in reference:
            entry["note"] = f"not a class of version {served_version}"
            continue
        if count < DRIFT_MIN_IMAGES:
            entry["note"] = f"too few images to compare (fewer than {DRIFT_MIN_IMAGES})"
            continue
        stats = li.class_stats(data.features[members])
        distances = {other: li.drift_distance(stats, ref) for other, ref in reference.items()}
        known = {other: d for other, d in distances.items() if d is not None}
        distance = distances[name]
        entry["distance"] = None if distance is None else _rounded(distance)
        entry["nearest_served_class"] = min(known, key=lambda other: (known[other], other)) if known else None
        entry["different"] = distance is not None and distance > threshold
    return classes


# --- the findings in words: the Trainer's log, the run summary, the report -----------------------------------------


def group_phrase(group: Dict[str, Any]) -> str:
    """ "span-3/train/circle: 57 of 60 look like 'square'" (or several look-alikes, counted)."""
    flagged, looks_like = group["flagged"], group.get("looks_like") or {}
    verb = "looks" if flagged == 1 else "look"
    head = f"{group['folder']}: {flagged} of {group['images']}"
    if len(looks_like) == 1:
        return f"{head} {verb} like '{next(iter(looks_like))}'"
    likes = ", ".join(f"{n} '{name}'" for name, n in looks_like.items())
    return f"{head} {verb} mislabelled ({likes})"


def label_issues_line(issues: Dict[str, Any]) -> str:
    """The run summary's line for label_issues.json."""
    return f"label issues: {label_issues_text(issues)}"


def label_issues_text(issues: Dict[str, Any]) -> str:
    if issues.get("error"):
        return f"not checked: {issues['error']}"
    images, flagged = issues["images"], issues["flagged_count"]
    if not flagged:
        return f"none of the {images} training images looks mislabelled"
    groups = [g for g in issues["groups"] if g["flagged"]]
    shown = "; ".join(group_phrase(g) for g in groups[:LINE_GROUPS])
    hidden = len(groups) - LINE_GROUPS
    more = f"; and {hidden} more folder{'s' if hidden > 1 else ''}" if hidden > 0 else ""
    verb = "looks" if flagged == 1 else "look"
    return f"{flagged} of {images} training images ({flagged / images:.1%}) {verb} mislabelled: {shown}{more}"


def span_label(span: str) -> str:
    return span or "the training data"


def data_changes_line(changes: Optional[Dict[str, Any]]) -> Optional[str]:
    """The run summary's line for data_changes.json; None when there is nothing to say (nothing served yet)."""
    text = data_changes_text(changes)
    return f"data changes: {text}" if text else None


def data_changes_text(changes: Optional[Dict[str, Any]]) -> str:
    if not changes or changes["note"] == "nothing is served yet":
        return ""
    if not changes["compared"]:
        return f"not compared: {changes['note']}"
    version = changes["served_version"]
    return "; ".join(_span_phrase(entry, changes, version) for entry in changes["compared_spans"])


def _span_phrase(entry: Dict[str, Any], changes: Dict[str, Any], version: int) -> str:
    span = span_label(entry["span"])
    threshold = changes["threshold"]
    different = entry["different_classes"]
    if different:
        classes = "; ".join(_class_phrase(name, entry["classes"][name], version) for name in different)
        return (
            f"{span} looks different from the data version {version} was trained on (class distance above "
            f"{threshold}): {classes}"
        )
    distances = [c["distance"] for c in entry["classes"].values() if c["distance"] is not None]
    counts = ", ".join(f"{name} {c['images']}" for name, c in entry["classes"].items())
    largest = f"largest class distance {max(distances):.2f}, " if distances else ""
    unserved = [name for name, c in entry["classes"].items() if c["note"].startswith("not a class")]
    added = f"; classes version {version} does not know: {', '.join(unserved)}" if unserved else ""
    return (
        f"{span} ({entry['images']} training images: {counts}) looks like the data version {version} was trained on "
        f"({largest}threshold {threshold}){added}"
    )


def _class_phrase(name: str, entry: Dict[str, Any], version: int) -> str:
    nearest = entry["nearest_served_class"]
    closest = f", closest to version {version}'s '{nearest}'" if nearest and nearest != name else ""
    return f"'{name}' {entry['distance']:.2f}{closest}"


# --- small helpers ---------------------------------------------------------------------------------------------


def _rounded(value: float) -> float:
    return float(f"{float(value):.4g}")


def _precise(value: float) -> float:
    # 6 significant digits: the distances need no more, and the profile stays small (a vector per class).
    return float(f"{float(value):.6g}")


def _vector(values: np.ndarray) -> List[float]:
    return [_precise(v) for v in values.tolist()]

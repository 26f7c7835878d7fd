"""The Trainer's findings about its training data, for the run summary and the report: suspected label errors, what
changed since the served version, image sizes and formats per span, and, when the gate refuses, the one or two
most likely causes among them. The findings themselves, and their wording, are components/data_findings.py's.

    label_issues_part(run) -> dict | None        label_issues.json, the flagged images trimmed to MAX_FLAGGED
    data_changes_part(run) -> dict | None        data_changes.json
    span_images_and_grid(run, issues, keep_images)   sizes and formats per span, and the flagged images' grid
    split_images(examples_uri, split, names) -> {file name: bytes}   images of one split, by file name
    likely_causes(data) -> [str]                 for a refused model: the strongest findings, those that name a
                                                 class the gate failed on first
    summary_lines(data) -> [str]                 the summary's lines for all of the above but the causes

A part is None when its file is absent (trainer.label_issues=false, a model trained by an older ftune, or the
Trainer did not run, which the training part already says).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from pipeline.reporting.run_records import RunView
from serving import sidecars

# Flagged images listed in the report data (all of them are in label_issues.json).
MAX_FLAGGED = 50
# Examples read for the sizes and formats per span: enough for medians and shares; the examples are written in
# shuffled order, so the first ones are a sample of every span.
MAX_STATS_EXAMPLES = 20000
# A class folder is named as a likely cause of a refusal when at least this many of its images, and this share of
# them, look mislabelled.
CAUSE_MIN_FLAGGED = 3
CAUSE_MIN_SHARE = 0.25
# Image formats below this share of a span are not counted as a difference; median sides this many times apart are.
FORMAT_MIN_SHARE = 0.1
SIZE_RATIO = 1.5
MAX_CAUSES = 2


# --- the parts -----------------------------------------------------------------------------------------------------


def label_issues_part(run: RunView) -> Optional[Dict[str, Any]]:
    uri = run.uri(sidecars.TRAINER, "model")
    issues = sidecars.read_label_issues(uri) if uri else None
    if issues is None:
        return None
    part = {**issues, "path": sidecars.label_issues_path(uri)}
    if "groups" in issues:
        part["folders"] = len(issues["groups"])
        part["groups"] = [group for group in issues["groups"] if group["flagged"]]
        part["flagged"] = issues["flagged"][:MAX_FLAGGED]
    return part


def data_changes_part(run: RunView) -> Optional[Dict[str, Any]]:
    uri = run.uri(sidecars.TRAINER, "model")
    changes = sidecars.read_data_changes(uri) if uri else None
    return None if changes is None else {**changes, "path": sidecars.data_changes_path(uri)}


def span_images_and_grid(
    run: RunView, issues: Optional[Dict[str, Any]], keep_images: bool
) -> Tuple[Optional[Dict[str, Dict[str, Any]]], List[Dict[str, Any]]]:
    """(sizes and formats per span, or None without examples; the most contradicted flagged images with their
    bytes, for the report's grid, when `keep_images`)."""
    from pipeline.reporting.figures import GRID_COLUMNS, GRID_ROWS

    uri = run.uri(sidecars.EXAMPLE_GEN, "examples")
    if uri is None:
        return None, []
    shown = ((issues or {}).get("flagged") or [])[: GRID_ROWS * GRID_COLUMNS] if keep_images else []
    stats, images = span_images(uri, {entry["file_name"] for entry in shown})
    grid = [
        {
            "file_name": entry["file_name"],
            "true": entry["given"],
            "predicted": entry["suggested"],
            "probability": entry["suggested_probability"],
            "image": images[entry["file_name"]],
        }
        for entry in shown
        if entry["file_name"] in images
    ]
    return stats, grid


def span_images(examples_uri: str, wanted: Set[str]) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, bytes]]:
    """({span: {"images", "formats": {format: n}, "width"/"height": {"min", "median", "max"}, "sampled"}},
    {file name: encoded bytes} of the `wanted` training images), from ImageExampleGen's examples: the formats as
    stored (a BMP is stored as PNG), the sizes as the files declared them."""
    import numpy as np
    import tensorflow as tf

    from components.data_findings import span_of

    seen: Dict[str, Dict[str, Any]] = {}
    images: Dict[str, bytes] = {}
    counted = 0
    for split in sorted(tf.io.gfile.glob(os.path.join(examples_uri, "Split-*"))):
        for names, heights, widths, encoded in _raw_batches(tf.io.gfile.glob(os.path.join(split, "*"))):
            for name, height, width, data in zip(names, heights, widths, encoded, strict=True):
                name = name.decode("utf-8", "replace")
                if name in wanted and split.rstrip("/").endswith("Split-train"):
                    images[name] = data
                if counted < MAX_STATS_EXAMPLES:
                    counted += 1
                    span = seen.setdefault(span_of(name), {"formats": {}, "width": [], "height": []})
                    fmt = _format(data)
                    span["formats"][fmt] = span["formats"].get(fmt, 0) + 1
                    span["width"].append(int(width))
                    span["height"].append(int(height))
            if counted >= MAX_STATS_EXAMPLES and len(images) == len(wanted):
                break
    stats = {}
    for span, values in sorted(seen.items()):
        sides = {
            side: {"min": int(np.min(v)), "median": float(np.median(v)), "max": int(np.max(v))}
            for side, v in (("width", values["width"]), ("height", values["height"]))
        }
        formats = dict(sorted(values["formats"].items(), key=lambda item: (-item[1], item[0])))
        stats[span] = {"images": len(values["width"]), "formats": formats, **sides}
        stats[span]["sampled"] = counted >= MAX_STATS_EXAMPLES
    return stats, images


def split_images(examples_uri: str, split: str, wanted: Iterable[str]) -> Dict[str, bytes]:
    """{file name: encoded bytes} of the `wanted` images of one split of ImageExampleGen's examples (the report's
    grids of eval predictions); stops reading once all are found."""
    import tensorflow as tf

    wanted, images = set(wanted), {}
    if not wanted:
        return images
    for names, _, _, encoded in _raw_batches(tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*"))):
        for name, data in zip(names, encoded, strict=True):
            name = name.decode("utf-8", "replace")
            if name in wanted:
                images[name] = data
        if len(images) == len(wanted):
            break
    return images


def _raw_batches(files: List[str]):
    import tensorflow as tf

    spec = {
        "file_name": tf.io.FixedLenFeature([], tf.string),
        "height": tf.io.FixedLenFeature([], tf.int64),
        "width": tf.io.FixedLenFeature([], tf.int64),
        "image": tf.io.FixedLenFeature([], tf.string),
    }
    records = tf.data.TFRecordDataset(sorted(files), compression_type="GZIP").batch(256)
    for batch in records.map(lambda serialized: tf.io.parse_example(serialized, spec)).as_numpy_iterator():
        yield batch["file_name"], batch["height"], batch["width"], batch["image"]


_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"))


def _format(data: bytes) -> str:
    return next((fmt for magic, fmt in _MAGIC if data.startswith(magic)), "other")


# --- a refusal's likely causes -------------------------------------------------------------------------------------


def likely_causes(data: Dict[str, Any]) -> List[str]:
    """For a model the gate refused: up to MAX_CAUSES findings, strongest first, those naming a class the gate
    failed on before the others: class folders with many suspected label errors, classes of a new span far from
    the served data, a new span's images in other formats or sizes. [] when the model was blessed or nothing was
    checked; one line saying nothing stands out when the checks found nothing."""
    from components.data_findings import group_phrase, span_label

    gate, issues, changes = data.get("gate"), data.get("label_issues"), data.get("data_changes")
    if not gate or gate.get("blessed") or not (issues or changes):
        return []
    failed = {f.get("class") for f in gate.get("failure_details") or [] if f.get("class")}
    found = []  # (names a failed class, strength, images, text)
    for group in (issues or {}).get("groups") or []:
        share = group["flagged"] / group["images"]
        if group["flagged"] >= CAUSE_MIN_FLAGGED and share >= CAUSE_MIN_SHARE:
            named = {group["class"], *group.get("looks_like", {})}
            found.append((bool(named & failed), 1.0 + share, group["flagged"], group_phrase(group)))
    version = (changes or {}).get("served_version")
    for entry in (changes or {}).get("compared_spans") or []:
        for name in entry["different_classes"]:
            c = entry["classes"][name]
            nearest = c.get("nearest_served_class")
            closest = f", closest to its '{nearest}'" if nearest and nearest != name else ""
            text = (
                f"{span_label(entry['span'])}: '{name}' looks different from version {version}'s '{name}' "
                f"(distance {c['distance']:.2f}{closest})"
            )
            found.append((bool({name, nearest} & failed), min(float(c["distance"]), 1.0), c["images"], text))
    for text in image_changes(data):
        found.append((False, 0.1, 0, text))
    if not found:
        return [
            "nothing in the training data stands out (no class folder with many suspected label errors, no class "
            "of a new span far from the served version's data)"
        ]
    found.sort(key=lambda item: item[:3], reverse=True)
    return [text for *_, text in found[:MAX_CAUSES]]


# --- image sizes and formats of the new spans ----------------------------------------------------------------------


def image_changes(data: Dict[str, Any]) -> List[str]:
    """For each new span whose images differ from the other spans read in this run (formats of at least
    FORMAT_MIN_SHARE, or median sides SIZE_RATIO apart): "span-3: PNG 100%, median 128x128 px; other spans: ..."."""
    stats = data.get("images_per_span") or {}
    new = ((data.get("data_changes") or {}).get("new_spans")) or []
    others = [span for span in stats if span not in new]
    if not others:
        return []
    old = _merged([stats[span] for span in others])
    lines = []
    for span in new:
        if span in stats and _differ(stats[span], old):
            lines.append(f"{span}: {_describe(stats[span])}; other spans: {_describe(old)}")
    return lines


def _merged(parts: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The other spans together: formats added up; the medians weighted by images (close enough for a ratio)."""
    total = sum(p["images"] for p in parts)
    formats: Dict[str, int] = {}
    for part in parts:
        for fmt, n in part["formats"].items():
            formats[fmt] = formats.get(fmt, 0) + n
    median = {
        side: {"median": sum(p[side]["median"] * p["images"] for p in parts) / max(total, 1)}
        for side in ("width", "height")
    }
    return {"images": total, "formats": formats, **median}


def _shares(stats: Dict[str, Any]) -> Dict[str, float]:
    return {fmt: n / max(stats["images"], 1) for fmt, n in stats["formats"].items()}


def _differ(new: Dict[str, Any], old: Dict[str, Any]) -> bool:
    kinds = {fmt for fmt, share in _shares(new).items() if share >= FORMAT_MIN_SHARE}
    if kinds != {fmt for fmt, share in _shares(old).items() if share >= FORMAT_MIN_SHARE}:
        return True
    for side in ("width", "height"):
        a, b = new[side]["median"], old[side]["median"]
        if min(a, b) > 0 and max(a, b) / min(a, b) >= SIZE_RATIO:
            return True
    return False


def _describe(stats: Dict[str, Any]) -> str:
    formats = ", ".join(f"{fmt} {share:.0%}" for fmt, share in _shares(stats).items())
    return f"{formats}, median {stats['width']['median']:.0f}x{stats['height']['median']:.0f} px"


# --- the summary's lines -------------------------------------------------------------------------------------------


def summary_lines(data: Dict[str, Any]) -> List[str]:
    """label issues, data changes and (when a new span's images differ) image formats and sizes; [] when the run
    checked nothing."""
    from components.data_findings import data_changes_line, label_issues_line

    lines = []
    issues = data.get("label_issues")
    if issues:
        lines.append(label_issues_line(issues))
    changes = data_changes_line(data.get("data_changes"))
    if changes:
        lines.append(changes)
    lines += [f"images: {text}" for text in image_changes(data)]
    return lines

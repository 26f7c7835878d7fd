"""Score image files with a served model: what `ftune predict` runs.

Both ways send the request TF Serving serves, the `serving_default` signature with encoded image bytes in:

    LocalPredictor(version_dir)      loads the SavedModel and calls its serving_default signature in-process
    RestPredictor(url, model_name)   POSTs to TF Serving's REST API, `/v1/models/<name>[/versions/N]:predict`,
                                     `{"signature_name": "serving_default", "instances": [{"b64": "..."}]}`

so what `ftune predict` prints is what the service answers. `predict_files` reads the files, sends them in
batches and turns every file that cannot be read or decoded into a row with the reason, never an abort: a batch
that fails is retried one image at a time to find the culprit (TF Serving, like the signature, rejects a whole
request when one image in it does not decode).
"""

from __future__ import annotations

import base64
import csv
import glob
import io
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from serving.model_versions import served_versions
from serving.signatures import (
    IMAGE_BYTES_INPUT,
    OUTPUT_CLASS_NAMES,
    OUTPUT_PROBABILITIES,
    SERVING_SIGNATURE,
)

DEFAULT_BATCH = 32
# What the signature decodes (tf.io.decode_image); anything else is reported before it is sent.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


class PredictError(Exception):
    """A user-facing problem with the request as a whole (no model, server unreachable); the message says what."""


class ImageError(Exception):
    """One image cannot be scored; the message is the reason shown in its row."""


# --- which files ---------------------------------------------------------------------------------------------------


def expand_paths(paths: Sequence[str]) -> Tuple[List[str], List[Dict]]:
    """(files, error rows): each argument is a file, a folder (every file below it, recursively, hidden ones
    skipped) or a glob pattern; an argument that matches nothing becomes an error row, not an abort."""
    files: List[str] = []
    errors: List[Dict] = []
    for arg in paths:
        if os.path.isdir(arg):
            found = []
            for dirpath, dirnames, filenames in os.walk(arg):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
            if not found:
                errors.append(_error_row(arg, "folder holds no files"))
            files += found
        elif os.path.exists(arg):
            files.append(arg)
        elif glob.has_magic(arg):
            found = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
            if not found:
                errors.append(_error_row(arg, "pattern matches no file"))
            files += found
        else:
            errors.append(_error_row(arg, "no such file or folder"))
    seen = set()
    unique = [f for f in files if not (f in seen or seen.add(f))]
    return unique, errors


def read_image(path: str) -> bytes:
    """The file's bytes, or ImageError when it is unreadable, empty or not a format the signature decodes."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from exc
    if not data:
        raise ImageError("empty file")
    if not data.startswith(_MAGIC):
        raise ImageError("not a JPEG, PNG, GIF or BMP image")
    return data


# --- which model -----------------------------------------------------------------------------------------------------


def resolve_version_dir(serving_model_dir: str, version: Optional[int] = None) -> Tuple[str, int]:
    """(folder, version) of `version`, or of the served one (the highest, as TF Serving picks) when None."""
    versions = served_versions(serving_model_dir)
    if not versions:
        raise PredictError(
            f"no served model in {serving_model_dir}: run `ftune run` first, or pass --model-dir or --server"
        )
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise PredictError(f"version {version} is not in {serving_model_dir} (versions: {versions})")
    return os.path.join(serving_model_dir, str(version)), version


# --- the two ways to ask ---------------------------------------------------------------------------------------


class LocalPredictor:
    """The SavedModel's serving_default signature, called in-process as TF Serving calls it."""

    def __init__(self, model_dir: str):
        import tensorflow as tf

        if not tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
            raise PredictError(f"no SavedModel (saved_model.pb) in {model_dir}")
        self._tf = tf
        self._loaded = tf.saved_model.load(model_dir)
        if SERVING_SIGNATURE not in self._loaded.signatures:
            raise PredictError(f"the model in {model_dir} has no {SERVING_SIGNATURE} signature")
        self._fn = self._loaded.signatures[SERVING_SIGNATURE]
        self.labels: Dict[int, str] = dict(enumerate(n.decode() for n in self._loaded.class_names.numpy()))
        self.source = model_dir

    def __call__(self, images: Sequence[bytes]) -> List[List[float]]:
        tf = self._tf
        try:
            outputs = self._fn(**{IMAGE_BYTES_INPUT: tf.constant(list(images), dtype=tf.string)})
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
            raise ImageError(_first_line(exc.message)) from exc
        return outputs[OUTPUT_PROBABILITIES].numpy().tolist()


class RestPredictor:
    """TF Serving's REST predict API: POST `<url>/v1/models/<name>[/versions/<n>]:predict` with b64 instances."""

    def __init__(
        self,
        url: str,
        model_name: str,
        version: Optional[int] = None,
        labels: Optional[Sequence[str]] = None,
        timeout: float = 60,
    ):
        path = f"/v1/models/{model_name}" + (f"/versions/{version}" if version is not None else "") + ":predict"
        self.endpoint = url.rstrip("/") + path
        # {class id: name}: from a labels list when the caller has one, else learnt from the answers (the server
        # names the top class of each image); classes never named are shown as "#<id>".
        self.labels: Dict[int, str] = dict(enumerate(labels or []))
        self.source = self.endpoint
        self._timeout = timeout

    def request_body(self, images: Sequence[bytes]) -> Dict:
        instances = [{"b64": base64.b64encode(image).decode("ascii")} for image in images]
        return {"signature_name": SERVING_SIGNATURE, "instances": instances}

    def __call__(self, images: Sequence[bytes]) -> List[List[float]]:
        body = json.dumps(self.request_body(images)).encode()
        request = urllib.request.Request(self.endpoint, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            try:
                message = json.loads(text).get("error", text)
            except ValueError:
                message = text
            if exc.code == 400:  # TF Serving: the request (an image in it) was rejected
                raise ImageError(_first_line(message)) from exc
            raise PredictError(f"{self.endpoint} answered HTTP {exc.code}: {_first_line(message)}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise PredictError(f"cannot reach {self.endpoint}: {getattr(exc, 'reason', exc)}") from exc
        rows = answer.get("predictions")
        if not isinstance(rows, list) or len(rows) != len(images):
            raise PredictError(f"{self.endpoint} answered without one prediction per image: {str(answer)[:200]}")
        probabilities = []
        for row in rows:
            probabilities.append(row[OUTPUT_PROBABILITIES])
            if OUTPUT_CLASS_NAMES in row:  # the server names the top class; remember it for the other rows
                top = max(range(len(row[OUTPUT_PROBABILITIES])), key=row[OUTPUT_PROBABILITIES].__getitem__)
                self.labels.setdefault(top, row[OUTPUT_CLASS_NAMES])
        return probabilities


# --- scoring files ---------------------------------------------------------------------------------------------


def predict_files(
    files: Sequence[str],
    predictor,
    top_k: int = 3,
    batch_size: int = DEFAULT_BATCH,
    progress: Optional[Callable[[int, int], None]] = None,
) -> List[Dict]:
    """`predictor`: a LocalPredictor or RestPredictor (images -> probabilities, `.labels` {id: name}).
    One row per file, in order: {"path", "ok": True, "top": [{"class", "probability"}, ...]} or
    {"path", "ok": False, "error": reason}."""
    rows: List[Dict] = []
    batch: List[Tuple[str, bytes]] = []

    def flush():
        rows.extend(_score_batch(batch, predictor, top_k))
        batch.clear()
        if progress:
            progress(len(rows), len(files))

    for path in files:
        try:
            batch.append((path, read_image(path)))
        except ImageError as exc:
            rows.append(_error_row(path, str(exc)))
            continue
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    order = {path: i for i, path in enumerate(files)}
    return sorted(rows, key=lambda r: order.get(r["path"], -1))


def _score_batch(batch, predictor, top_k) -> List[Dict]:
    if len(batch) > 1:
        try:
            probabilities = predictor([image for _, image in batch])
            return [
                _ok_row(path, p, predictor.labels, top_k) for (path, _), p in zip(batch, probabilities, strict=True)
            ]
        except ImageError:
            pass  # one image (or more) does not decode: ask for each alone
    rows = []
    for path, image in batch:
        try:
            rows.append(_ok_row(path, predictor([image])[0], predictor.labels, top_k))
        except ImageError as exc:
            rows.append(_error_row(path, f"cannot be decoded: {exc}"))
    return rows


def _ok_row(path: str, probabilities: Sequence[float], labels, top_k: int) -> Dict:
    ranked = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])[: max(1, top_k)]
    top = [{"class": labels.get(i, f"#{i}"), "probability": float(probabilities[i])} for i in ranked]
    return {"path": path, "ok": True, "top": top}


def _error_row(path: str, reason: str) -> Dict:
    return {"path": path, "ok": False, "error": reason}


_TF_CONTEXT = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[", "File ", "Node:")


def _first_line(text: str) -> str:
    """The line of a TensorFlow error that says what is wrong ("jpeg::Uncompress failed. Invalid JPEG data or
    crop window."), without the graph context TF wraps it in."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    meaningful = [line for line in lines if not line.startswith(_TF_CONTEXT)]
    line = (meaningful or lines or ["unknown error"])[0]
    return line.split("\t [[")[0].split(" [[")[0].strip()[:300]


# --- output ----------------------------------------------------------------------------------------------------


def format_rows(rows: Sequence[Dict], fmt: str, top_k: int) -> str:
    """`table` (aligned, for people), `csv` (path, ok, error, then class_1, probability_1, ...) or `json`."""
    if fmt == "json":
        return json.dumps(list(rows), indent=2)
    header = ["path", "status"] + [f"{name}_{i}" for i in range(1, top_k + 1) for name in ("class", "probability")]
    table = []
    for row in rows:
        if row["ok"]:
            cells = [row["path"], "ok"]
            for entry in row["top"]:
                cells += [entry["class"], f"{entry['probability']:.4f}"]
            cells += [""] * (len(header) - len(cells))
        else:
            cells = [row["path"], f"error: {row['error']}"] + [""] * (len(header) - 2)
        table.append(cells)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(table)
        return out.getvalue().rstrip("\n")
    return _aligned(rows, top_k)


def _aligned(rows: Sequence[Dict], top_k: int) -> str:
    """Columns image, prediction (and next classes when top_k > 1); an unreadable file's reason runs on after
    its path instead of widening the columns."""
    header = ["image", "prediction"] + (["next"] if top_k > 1 else [])
    ok_lines = [header]
    for row in rows:
        if row["ok"]:
            first, rest = row["top"][0], row["top"][1:]
            line = [row["path"], f"{first['class']} {first['probability']:.1%}"]
            if top_k > 1:
                line.append(", ".join(f"{e['class']} {e['probability']:.1%}" for e in rest))
            ok_lines.append(line)
    widths = [max(len(line[i]) for line in ok_lines) for i in range(len(header))]
    widths[0] = max([widths[0]] + [len(row["path"]) for row in rows])

    def render(line):
        return "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)).rstrip()

    out = [render(header)]
    scored = iter(ok_lines[1:])
    for row in rows:
        if row["ok"]:
            out.append(render(next(scored)))
        else:
            out.append(f"{row['path'].ljust(widths[0])}  ERROR {row['error']}")
    return "\n".join(out)


def stderr_progress(done: int, total: int) -> None:
    """A progress bar on stderr, one line per tenth of the files (whole lines: the console filter, and logs,
    pass lines through, not carriage-return redraws)."""
    step = max(1, total // 10)
    if done < total and done % step >= DEFAULT_BATCH:
        return
    width = 30
    filled = int(width * done / max(total, 1))
    bar = "#" * filled + "." * (width - filled)
    print(f"[ftune] predict [{bar}] {done}/{total} images", file=sys.stderr, flush=True)


def summarize(rows: Iterable[Dict]) -> str:
    rows = list(rows)
    bad = sum(not r["ok"] for r in rows)
    return f"{len(rows) - bad} images scored, {bad} could not be read"

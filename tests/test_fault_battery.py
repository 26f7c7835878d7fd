# ruff: noqa: E501  (the battery tables keep one row per line, like the README table they generate)
"""The fault battery: each row is a fault, how it is injected, and the outcome the user gets.

Most rows are unit-level and fast: they call the directory walk and file checks of ImageExampleGen, the exported
SavedModel's signatures (a tiny model exported by the real `serving.export`, with the real transform code), the
push functions and the settings loader directly. The rows that need whole-pipeline runs (SIGKILL during a
component, then the same command again) are marked slow and share one pipeline root.

The docs page docs/what-happens-when.md lists the same rows (`python tests/test_fault_battery.py` prints the table;
`test_docs_table_matches_the_battery` keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import unicodedata
import zlib
from typing import Callable, List

import image_corpus
import numpy as np
import pytest
import tensorflow as tf
from conftest import IN_MEMORY_BEAM, REPO, ftune_run_command, pretrained_weights_path
from PIL import Image

from components import image_example_gen as eg
from pipeline import outcome
from pipeline.configs import ConfigError, PipelineConfig, load_config
from pipeline.local_runner import PipelineBusyError, pipeline_lock, run_local
from serving import model_versions


@dataclasses.dataclass(frozen=True)
class Row:
    area: str
    fault: str
    injection: str
    outcome: str
    check: Callable

    @property
    def id(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.fault.lower()).strip("-")[:60]


def params(rows: List[Row]):
    return [pytest.param(row, id=row.id) for row in rows]


# --- helpers ---------------------------------------------------------------------------------------------------


def jpeg(seed: int = 0, size=(24, 32)) -> bytes:
    pixels = (np.random.default_rng(seed).random((*size, 3)) * 255).astype("uint8")
    return image_corpus.encode(Image.fromarray(pixels), "JPEG")


def write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def two_classes(root, per_class: int = 3) -> str:
    for c in ("cats", "dogs"):
        for i in range(per_class):
            write(os.path.join(root, c, f"{i}.jpg"), jpeg(hash((c, i)) % 1000))
    return str(root)


def listed(root) -> List[tuple]:
    return eg.list_files(str(root), eg.list_classes(str(root)))


def read_and_inspect(path: str, max_file_bytes: int = 10_000_000):
    """Runs the ExampleGen DoFn on one file; returns the quarantine reason, or None when accepted."""
    root, name = os.path.split(path)
    fn = eg._ReadAndInspect(os.path.dirname(root), "all", ["cats", "dogs"], 50_000_000, max_file_bytes)
    out = list(fn.process(("cats", os.path.join(os.path.basename(root), name))))
    assert len(out) == 1
    if isinstance(out[0], tf.train.Example):
        return None
    return json.loads(out[0].value)["reason"]


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A real, decodable 1-bit PNG of width x height pixels that compresses to ~50 KB: decoding it to RGB would
    allocate width*height*3 bytes (1.2 GB for 20000 x 20000)."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    idat = zlib.compress(row * height, 9)
    chunk = image_corpus._png_chunk
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- ingestion -------------------------------------------------------------------------------------------------


def check_symlink_loop(tmp_path, *_):
    root = two_classes(tmp_path / "data")
    os.symlink("..", os.path.join(root, "cats", "loop"))
    files = listed(root)
    assert len(files) == 6, files
    assert sorted(f for c, f in files if c == "cats") == ["cats/0.jpg", "cats/1.jpg", "cats/2.jpg"]
    assert all(f.startswith(c + "/") for c, f in files), "a dog was labelled cat"


def check_link_above_root(tmp_path, *_):
    root = two_classes(tmp_path / "data")
    write(str(tmp_path / "elsewhere.jpg"), jpeg(9))
    os.symlink("../../..", os.path.join(root, "dogs", "up"))
    assert len(listed(root)) == 6


def check_link_into_other_class(tmp_path, *_):
    root = two_classes(tmp_path / "data")
    os.symlink("../dogs", os.path.join(root, "cats", "more"))
    os.symlink("../dogs/0.jpg", os.path.join(root, "cats", "dog0.jpg"))
    files = listed(root)
    assert sorted(c for c, _ in files) == ["cats"] * 3 + ["dogs"] * 3, files


def check_two_links_one_file(tmp_path, *_):
    root = two_classes(tmp_path / "data")
    os.makedirs(os.path.join(root, "cats", "sub"))
    os.symlink("../0.jpg", os.path.join(root, "cats", "sub", "link_a.jpg"))
    os.symlink("../0.jpg", os.path.join(root, "cats", "sub", "link_b.jpg"))
    os.link(os.path.join(root, "cats", "1.jpg"), os.path.join(root, "cats", "sub", "hard.jpg"))
    os.symlink("sub", os.path.join(root, "cats", "sub_again"))
    assert len([c for c, _ in listed(root) if c == "cats"]) == 3


def check_os_litter(tmp_path, *_):
    root = two_classes(tmp_path / "data")
    for c in ("cats", "dogs"):
        write(os.path.join(root, c, ".DS_Store"), b"\x00\x00\x00\x01Bud1")
        write(os.path.join(root, c, "Thumbs.db"), b"\xd0\xcf\x11\xe0")
        write(os.path.join(root, c, "._0.jpg"), b"\x00\x05\x16\x07")
        write(os.path.join(root, c, ".hidden.jpg"), b"x")
        write(os.path.join(root, c, "__MACOSX", "._1.jpg"), b"x")
    write(os.path.join(root, ".DS_Store"), b"x")
    files = listed(root)
    assert len(files) == 6 and all(os.path.basename(f)[0].isdigit() for _, f in files), files
    assert eg.list_classes(root) == ["cats", "dogs"]


def check_litter_only_class(tmp_path, *_):
    root = two_classes(tmp_path / "data")
    write(os.path.join(root, "birds", ".DS_Store"), b"x")
    write(os.path.join(root, "birds", "Thumbs.db"), b"x")
    config = eg.make_input_config("hash", "train", "validation")
    with pytest.raises(eg.DataUnusableError, match="class folder.*no files.*birds"):
        eg.check_layout(root, config)


def check_byte_limit(tmp_path, *_):
    path = str(tmp_path / "data" / "cats" / "huge.jpg")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(jpeg(1))
        f.truncate(8 * 2**30)  # sparse 8 GiB: reading it would take minutes and 8 GiB of memory
    before, started = peak_rss_mb(), time.time()
    reason = read_and_inspect(path, max_file_bytes=1_000_000)
    assert reason.startswith("too large") and "data.max_file_bytes=1000000" in reason and "not read" in reason
    assert time.time() - started < 5 and peak_rss_mb() - before < 100


def check_vanished(tmp_path, *_):
    path = write(str(tmp_path / "data" / "cats" / "gone.jpg"), jpeg(2))
    os.remove(path)  # listed by the walk, removed before the worker reads it
    assert read_and_inspect(path).startswith("vanished during ingestion")


def check_changed_during_read(tmp_path, monkeypatch):
    path = write(str(tmp_path / "data" / "cats" / "growing.jpg"), jpeg(3))
    real_fstat, calls = os.fstat, [0]

    def fstat(fd):  # the second look (after the read) sees the file grown by a writer
        calls[0] += 1
        stat = real_fstat(fd)
        if calls[0] == 2:
            return os.stat_result((*stat[:6], stat.st_size + 4096, *stat[7:]))
        return stat

    monkeypatch.setattr(os, "fstat", fstat)
    reason = read_and_inspect(path)
    assert reason is not None and reason.startswith("unstable: changed while being read")


def check_bad_class_name(name: str, match: str):
    def check(tmp_path, *_):
        root = two_classes(tmp_path / "data")
        write(os.path.join(root, name, "0.jpg"), jpeg(4))
        with pytest.raises(eg.DataUnusableError, match=match):
            eg.check_layout(root, eg.make_input_config("hash", "train", "validation"))

    return check


def check_colliding_class_names(first: str, second: str):
    def check(tmp_path, *_):
        root = str(tmp_path / "data")
        write(os.path.join(root, first, "0.jpg"), jpeg(5))
        write(os.path.join(root, second, "0.jpg"), jpeg(6))
        if len(eg.list_classes(root)) < 2:
            pytest.skip("this file system already merged the two names")
        with pytest.raises(eg.DataUnusableError, match="only by letter case or Unicode normalisation"):
            eg.check_layout(root, eg.make_input_config("hash", "train", "validation"))

    return check


INGEST_ROWS = [
    Row("ingest", "Symlink loop in a class folder", "`cats/loop -> ..`", "followed once: each file listed once, dogs stay dogs", check_symlink_loop),
    Row("ingest", "Symlink to an ancestor of the data root", "`dogs/up -> ../../..`", "not followed; only the class's own files", check_link_above_root),
    Row("ingest", "Symlink into another class", "`cats/more -> ../dogs`, `cats/dog0.jpg -> ../dogs/0.jpg`", "not followed: no image gets a second label", check_link_into_other_class),
    Row("ingest", "One file through several links", "two symlinks, a hard link, a linked folder", "listed (and trained on) once", check_two_links_one_file),
    Row("ingest", "OS litter", "`.DS_Store`, `Thumbs.db`, `._*`, hidden files, `__MACOSX/`", "ignored: not read, not quarantined, not counted", check_os_litter),
    Row("ingest", "Class folder holding only litter", "`birds/.DS_Store`, `birds/Thumbs.db`", "refused: class folder with no files, named", check_litter_only_class),
    Row("ingest", "File above the byte limit", "sparse 8 GiB file, `data.max_file_bytes=1000000`", "quarantined from its size, never read (memory flat)", check_byte_limit),
    Row("ingest", "File vanishes during ingestion", "deleted between listing and reading", "quarantined: 'vanished during ingestion'", check_vanished),
    Row("ingest", "File changes while read", "size moves between the two looks", "quarantined: 'changed while being read'", check_changed_during_read),
    Row("ingest", "Class folder name with a newline", "folder `bad\\nname`", "refused before ingestion, folder named", check_bad_class_name("bad\nname", "control character")),
    Row("ingest", "Class folder name with a trailing blank", "folder `dogs `", "refused, folder named", check_bad_class_name("dogs ", "blank")),
    Row("ingest", "Class folder name not valid UTF-8", "folder named with byte 0xff", "refused, folder named", check_bad_class_name(os.fsdecode(b"caf\xff"), "not valid UTF-8")),
    Row("ingest", "Class folders equal but for case", "`Cats` and `cats`", "refused: they merge on macOS/Windows", check_colliding_class_names("Cats", "cats")),
    Row("ingest", "Class folders equal but for Unicode normalisation", "`café` as NFC and NFD", "refused: they merge on macOS", check_colliding_class_names(unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café"))),
]  # fmt: skip


@pytest.mark.parametrize("row", params(INGEST_ROWS))
def test_ingestion(row, tmp_path, monkeypatch):
    row.check(tmp_path, monkeypatch)


# --- EXIF orientation: training (Transform's preprocessing_fn) and serving see the upright image -------------


def quadrants(height: int = 40, width: int = 64) -> np.ndarray:
    """Four flat colours: any wrong rotation or flip moves a colour to another corner."""
    image = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    image[:h, :w], image[:h, w:], image[h:, :w], image[h:, w:] = (250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)
    return image


# Pillow's ImageOps.exif_transpose, inverted: what a camera stores so that the viewer shows `quadrants()` upright.
_STORE = {
    1: lambda im: im,
    2: lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    3: lambda im: im.transpose(Image.Transpose.ROTATE_180),
    4: lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    5: lambda im: im.transpose(Image.Transpose.TRANSPOSE),
    6: lambda im: im.transpose(Image.Transpose.ROTATE_90),
    7: lambda im: im.transpose(Image.Transpose.TRANSVERSE),
    8: lambda im: im.transpose(Image.Transpose.ROTATE_270),
}


def exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = _STORE[orientation](Image.fromarray(quadrants()))
    return image_corpus.encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def check_exif(orientation: int):
    def check(tmp_path, served):
        from PIL import ImageOps

        from components.image_transform import preprocessing_fn

        data = exif_jpeg(orientation)
        # The stored pixels really are turned, and Pillow (what photo viewers do) shows them upright.
        shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        assert shown.shape == quadrants().shape and np.abs(shown.astype(int) - quadrants()).mean() < 8
        accepted, _, reason = eg.inspect_image(data, 50_000_000)
        assert reason is None and accepted == data, reason
        expected = tf.image.resize(quadrants()[None], [32, 32]).numpy()[0]
        trained = preprocessing_fn({"image": tf.constant([[data]])}, {"image_size": 32, "max_image_pixels": 10**6})
        trained = tf.io.parse_tensor(trained["image_raw"][0], tf.uint8).numpy()
        assert np.abs(trained.astype(float) - expected).mean() < 10, "training sees a turned image"
        # Serving: the exported signature's answer is the model's answer on exactly the training-path image.
        answer = served.predict(image_bytes=tf.constant([data]))["probabilities"].numpy()
        on_trained = tf.nn.softmax(served.model(trained[None].astype("float32"))).numpy()
        np.testing.assert_allclose(answer, on_trained, atol=1e-5)
        turned = tf.image.resize(tf.io.decode_jpeg(data)[None], [32, 32]).numpy()
        if orientation != 1:  # the check can fail: the image as stored gives another answer
            assert np.abs(tf.nn.softmax(served.model(turned)).numpy() - answer).max() > 1e-3

    return check


EXIF_ROWS = [
    Row("exif", f"EXIF orientation {k}", f"JPEG stored {name}, tag 0x0112={k}", "upright in training and serving alike", check_exif(k))
    for k, name in {
        1: "upright", 2: "mirrored", 3: "upside down", 4: "flipped vertically",
        5: "transposed", 6: "rotated 90° (phone held upright)", 7: "transversed", 8: "rotated 270°",
    }.items()
]  # fmt: skip


# --- serving: the exported SavedModel, called as TF Serving calls it -------------------------------------------


class _TransformGraph(tf.Module):
    """Stands in for TFT's transform layer: runs the same preprocessing_fn (label-free, so no analyzer)."""

    def __init__(self, custom_config):
        super().__init__()
        self._custom_config = custom_config

    def __call__(self, raw):
        from components.image_transform import preprocessing_fn

        return preprocessing_fn(raw, self._custom_config)


class _TransformOutput:
    def __init__(self, custom_config):
        self._layer = _TransformGraph(custom_config)

    def transform_features_layer(self):
        return self._layer

    def raw_feature_spec(self):
        return {"image": tf.io.FixedLenFeature([1], tf.string)}


class Served:
    """A tiny classifier exported with serving.export (the trainer's exporter), loaded back as TF Serving does."""

    def __init__(self, export_dir: str):
        import keras

        from serving.export import export_saved_model

        keras.utils.set_random_seed(0)
        # Position-sensitive (Flatten + Dense): a turned image gives another answer.
        layers = [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
        self.model = model = keras.Sequential(layers)
        config = {"image_size": 32, "max_image_pixels": 50_000_000}
        export_saved_model(model, _TransformOutput(config), ["cat", "dog", "fox"], 32, export_dir)
        self.loaded = tf.saved_model.load(export_dir)
        self.predict = self.loaded.signatures["serving_default"]
        self.predict_examples = self.loaded.signatures["serving_tf_example"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return Served(str(tmp_path_factory.mktemp("served") / "1"))


def refused(served: Served, batch: List[bytes], bad_index: int, match: str):
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        served.predict(image_bytes=tf.constant(batch))
    message = str(error.value)
    assert f"image #{bad_index} of the batch" in message, message[-600:]
    assert re.search(match, message), message[-600:]
    return message


def check_bomb(tmp_path, served):
    bomb = bomb_png()
    assert len(bomb) < 2_000_000
    served.predict(image_bytes=tf.constant([jpeg(0)]))  # warm: tracing and kernels allocated before measuring
    before = peak_rss_mb()
    refused(served, [jpeg(1), bomb], 1, r"absurd dimensions 20000x20000 \(400000000 pixels > .*refused before decoding")
    grown = peak_rss_mb() - before
    assert grown < 150, f"peak RSS grew by {grown:.0f} MB on a refused request (decoding would take 1200 MB)"


def check_bomb_tf_example(tmp_path, served):
    example = tf.train.Example(
        features=tf.train.Features(
            feature={"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[bomb_png()]))}
        )
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="image #0 of the batch: absurd dimensions"):
        served.predict_examples(examples=tf.constant([example.SerializeToString()]))


def check_refused(make: Callable[[], bytes], match: str):
    def check(tmp_path, served):
        refused(served, [jpeg(1), jpeg(2), make()], 2, match)
        # The replica keeps serving: the next request is answered.
        assert served.predict(image_bytes=tf.constant([jpeg(3)]))["class_ids"].shape == (1,)

    return check


def check_accepted(make: Callable[[], List[bytes]]):
    def check(tmp_path, served):
        batch = make()
        out = served.predict(image_bytes=tf.constant(batch))
        assert out["probabilities"].shape == (len(batch), 3)
        np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
        assert {n.decode() for n in out["class_names"].numpy()} <= {"cat", "dog", "fox"}

    return check


def _png(mode: str) -> bytes:
    pixels = quadrants()
    if mode == "I;16":
        return image_corpus.encode(Image.fromarray(pixels[..., 0].astype("uint16") * 257), "PNG")
    return image_corpus.encode(Image.fromarray(pixels).convert(mode), "PNG")


SERVING_ROWS = [
    Row("serving", "Pixel bomb sent to serving_default", "1-bit PNG of ~50 KB declaring 20000x20000", "request refused before decoding, bad element named; peak RSS flat", check_bomb),
    Row("serving", "Pixel bomb inside a tf.Example", "same PNG through serving_tf_example", "refused the same way", check_bomb_tf_example),
    Row("serving", "Empty string", "`b''` as the 3rd image", "error: 'image #2 of the batch: empty'", check_refused(lambda: b"", r"image #2 of the batch: empty")),
    Row("serving", "Truncated JPEG", "first half of a JPEG", "error naming the element: truncated", check_refused(lambda: jpeg(4, (64, 64))[:400], "truncated JPEG")),
    Row("serving", "Truncated PNG", "first half of a PNG", "error naming the element: truncated", check_refused(lambda: image_corpus.encode(Image.open(io.BytesIO(jpeg(5, (64, 64)))), "PNG")[:3000], "truncated PNG")),
    Row("serving", "Text instead of an image", "`b'hello world'`", "error naming the element: not an image", check_refused(lambda: b"hello world", "not an image")),
    Row("serving", "Grayscale image", "8-bit grey PNG and JPEG", "accepted (grey replicated to RGB)", check_accepted(lambda: [_png("L"), image_corpus.encode(Image.fromarray(quadrants()).convert("L"), "JPEG")])),
    Row("serving", "16-bit PNG", "16-bit grey PNG", "accepted (scaled to 8 bits)", check_accepted(lambda: [_png("I;16")])),
    Row("serving", "RGBA PNG", "PNG with alpha", "accepted (alpha dropped)", check_accepted(lambda: [_png("RGBA")])),
    Row("serving", "Huge batch", "512 images in one request", "512 answers", check_accepted(lambda: [jpeg(i % 7) for i in range(512)])),
]  # fmt: skip


@pytest.mark.parametrize("row", params(EXIF_ROWS + SERVING_ROWS))
def test_exif_and_serving(row, tmp_path, served):
    row.check(tmp_path, served)


# --- push ------------------------------------------------------------------------------------------------------


def fake_model(path) -> str:
    write(os.path.join(path, "saved_model.pb"), b"graph")
    write(os.path.join(path, "variables", "variables.index"), b"index")
    write(os.path.join(path, "variables", "variables.data-00000-of-00001"), os.urandom(200_000))
    return str(path)


def push_within(model, serving, seconds: float = 20):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("v", model_versions.push(model, serving)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"push still running after {seconds} s"
    return result["v"]


def check_partial_version(tmp_path, caplog, *_):
    model, serving = fake_model(tmp_path / "model"), str(tmp_path / "serving" / "m")
    write(os.path.join(serving, "1", "variables", "variables.index"), b"half a copy")
    with caplog.at_level(logging.WARNING):
        assert push_within(model, serving) == 2
    assert "[1] without a saved_model.pb" in caplog.text
    assert os.listdir(os.path.join(serving, "1")) == ["variables"]  # left as found
    assert model_versions.served_versions(serving) == [2]


def check_partial_above_complete(tmp_path, caplog, *_):
    model, serving = fake_model(tmp_path / "model"), str(tmp_path / "serving" / "m")
    assert push_within(model, serving) == 1
    os.makedirs(os.path.join(serving, "7"))
    assert push_within(model, serving) == 8
    assert model_versions.served_versions(serving) == [1, 8]


def check_stale_staging(tmp_path, caplog, *_):
    model, serving = fake_model(tmp_path / "model"), str(tmp_path / "serving" / "m")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    host = socket.gethostname()
    stale = f".staging-{host}-{int(dead.stdout)}-abc"
    live = f".staging-{host}-{os.getpid()}-def"  # a push in progress in a live process: left alone
    old = ".staging-0123456789abcdef"  # an older name, from another host or version
    for name in (stale, live, old):
        write(os.path.join(serving, name, "saved_model.pb"), b"x")
    two_days_ago = time.time() - 2 * 86400
    os.utime(os.path.join(serving, old), (two_days_ago, two_days_ago))
    assert push_within(model, serving) == 1
    assert sorted(os.listdir(serving)) == sorted(["1", live])


def check_disk_full(tmp_path, caplog, monkeypatch):
    model, serving = fake_model(tmp_path / "model"), str(tmp_path / "serving" / "m")
    assert push_within(model, serving) == 1
    real_copy = model_versions._copy_dir  # the push's one copy of the model into its staging folder

    def copy_until_full(source, destination, **kwargs):
        real_copy(source, destination, **kwargs)
        data = os.path.join(destination, "variables", "variables.data-00000-of-00001")
        with open(data, "r+b") as f:
            f.truncate(1000)  # the copy got this far
        raise OSError(errno.ENOSPC, "No space left on device", data)

    monkeypatch.setattr(model_versions, "_copy_dir", copy_until_full)
    with pytest.raises(OSError, match="No space left"):
        model_versions.push(model, serving)
    assert os.listdir(serving) == ["1"], "a partial version or staging folder is visible"
    assert model_versions.served_versions(serving) == [1]


def check_model_name(value: str):
    def check(tmp_path, caplog, *_):
        with pytest.raises(ConfigError, match=r"push\.model_name must be a folder name.*got " + re.escape(repr(value))):
            load_config(overrides=[f"push.model_name={value}"])

    return check


def check_serving_dir_in_data(tmp_path, caplog, *_):
    with pytest.raises(ConfigError, match=r"push\.serving_dir must be outside data\.data_root"):
        load_config(overrides=[f"data.data_root={tmp_path}/images", f"push.serving_dir={tmp_path}/images/models"])


def check_concurrent_run(tmp_path, caplog, *_):
    root = str(tmp_path / "root")
    with pipeline_lock(root):
        with pytest.raises(PipelineBusyError) as error:
            run_local(PipelineConfig(pipeline_root=root), stop_after="ingest", progress=lambda m: None)
    message = str(error.value)
    import socket

    assert f"pid {os.getpid()} on host {socket.gethostname()}, started " in message
    assert not os.path.exists(os.path.join(root, "metadata.sqlite")), "the refused run touched the metadata store"


def check_lock_of_killed_run(tmp_path, caplog, *_):
    root = str(tmp_path / "root")
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from pipeline.local_runner import pipeline_lock\nwith pipeline_lock({root!r}):\n"
         "    print('locked', flush=True)\n    import time; time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": REPO},
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(PipelineBusyError, match=f"pid {holder.pid} "):
        with pipeline_lock(root):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    with pipeline_lock(root) as record:  # the OS released the killed run's lock: no stale-lock cleanup needed
        assert record["pid"] == os.getpid()


PUSH_ROWS = [
    Row("push", "Partial version folder", "`<model>/1/` with files but no saved_model.pb", "pushed as 2 at once, with a warning; 1/ untouched", check_partial_version),
    Row("push", "Partial folder above the served versions", "complete 1/, empty 7/", "pushed as 8 (above every numeric name)", check_partial_above_complete),
    Row("push", "Stale staging folders", "`.staging-*` of a dead process and one 2 days old", "removed by the next push; a live push's staging kept", check_stale_staging),
    Row("push", "Disk full during the copy", "copy fails with ENOSPC half-way", "push fails; no partial version or staging folder visible", check_disk_full),
    Row("push", "Model name escaping the serving folder", "`push.model_name=../x`", "refused at load, key and allowed values named", check_model_name("../x")),
    Row("push", "Model name with a slash", "`push.model_name=a/b`", "refused at load", check_model_name("a/b")),
    Row("push", "Hidden model name", "`push.model_name=.models`", "refused at load", check_model_name(".models")),
    Row("push", "Serving folder inside the data", "`push.serving_dir=<data_root>/models`", "refused at load", check_serving_dir_in_data),
    Row("push", "Second concurrent run", "`ftune run` while another holds the pipeline root", "refused at once, naming the holder's pid, host, start time", check_concurrent_run),
    Row("push", "Lock holder SIGKILLed", "holding process killed with SIGKILL", "lock free again; the next run proceeds", check_lock_of_killed_run),
]  # fmt: skip


@pytest.mark.parametrize("row", params(PUSH_ROWS))
def test_push(row, tmp_path, caplog, monkeypatch):
    row.check(tmp_path, caplog, monkeypatch)


# --- settings and weights --------------------------------------------------------------------------------------


def check_setting(key: str, value: str, allowed: str):
    def check(tmp_path, *_):
        with pytest.raises(ConfigError) as error:
            load_config(overrides=[f"{key}={value}"])
        message = str(error.value)
        assert key in message and allowed in message and value in message, message

    return check


def check_before_first_component(tmp_path, *_):
    config = PipelineConfig(pipeline_root=str(tmp_path / "root"))
    config.trainer.learning_rate = float("inf")
    with pytest.raises(ConfigError, match="trainer.learning_rate must be a finite number"):
        run_local(config, progress=lambda m: None)
    assert not os.path.exists(config.metadata_path), "a component ran before the setting was checked"


def check_weights_file(kind: str):
    def check(tmp_path, *_):
        from trainer.model import get_base_spec
        from trainer.weights import WeightsFileError, build_base

        source = pretrained_weights_path()
        if kind == "truncated":
            path, base = str(tmp_path / "truncated.h5"), "mobilenet_v2"
            with open(source, "rb") as f, open(path, "wb") as out:
                out.write(f.read(1_000_000))
        else:
            path, base = source, "efficientnet_b0"
        with pytest.raises(WeightsFileError) as error:
            build_base(get_base_spec(base).constructor, (64, 64, 3), path)
        message = str(error.value)
        assert path in message and "truncated or corrupt, or holds the weights of another network" in message
        assert isinstance(error.value, ConfigError)  # the CLI prints it as a user error, without a traceback

    return check


SETTINGS_ROWS = [
    Row("settings", "Infinite learning rate", "`--set trainer.learning_rate=inf`", "refused at load: key, 'finite number', value", check_setting("trainer.learning_rate", "inf", "finite number")),
    Row("settings", "Unknown base model", "`--set trainer.base_model=vgg16`", "refused at load, the allowed bases listed", check_setting("trainer.base_model", "vgg16", "mobilenet_v2, efficientnet_b0")),
    Row("settings", "fine_tune_at beyond the base", "`--set trainer.fine_tune_at=500`", "refused at load: 'below the 154 layers'", check_setting("trainer.fine_tune_at", "500", "below the 154 layers")),
    Row("settings", "Zero byte limit", "`--set data.max_file_bytes=0`", "refused at load", check_setting("data.max_file_bytes", "0", "positive")),
    Row("settings", "Bad setting reaches the runner", "`trainer.learning_rate=inf` set in code", "refused before the first component (no metadata written)", check_before_first_component),
    Row("settings", "Truncated weights file", "first 1 MB of the MobileNetV2 .h5", "error naming the file: truncated, corrupt or another network", check_weights_file("truncated")),
    Row("settings", "Weights of another network", "MobileNetV2 .h5 with `trainer.base_model=efficientnet_b0`", "error naming the file and the base", check_weights_file("other")),
]  # fmt: skip


@pytest.mark.parametrize("row", params(SETTINGS_ROWS))
def test_settings_and_weights(row, tmp_path):
    row.check(tmp_path)


# --- crashes: SIGKILL during a component, then the same command again (one shared pipeline root) ------------

CRASH_SETTINGS = [
    "data.sample_classes=2",
    "data.sample_per_class=12",
    "trainer.image_size=64",
    "trainer.batch_size=8",
    "trainer.phase1_epochs=1",
    "trainer.phase2_epochs=0",
    "trainer.warmup_requests=1",
    "eval.accuracy_floor=0",
    f"beam_args={json.dumps(IN_MEMORY_BEAM)}",
]
KILLED_COMPONENTS = ("ImageExampleGen", "Transform", "Pusher")


@pytest.fixture(scope="module")
def crash_runs(tmp_path_factory):
    """For each killed component: start `ftune run`, SIGKILL it when the component starts. The first time, the run
    is frozen (SIGSTOP) there while a second `ftune run` on the same root is tried (it must be refused). Then the
    same command once more, to completion."""
    root = tmp_path_factory.mktemp("crash")
    outcomes = {}
    for component in KILLED_COMPONENTS:
        process = subprocess.Popen(
            ftune_run_command(root, CRASH_SETTINGS), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        seen, deadline = [], time.time() + 400
        for line in process.stdout:
            seen.append(line)
            if line.rstrip().endswith(f" {component} started"):  # the console line for "Component X is running"
                if component == KILLED_COMPONENTS[0]:
                    os.killpg(process.pid, signal.SIGSTOP)  # frozen while holding the lock
                    outcomes["concurrent"] = subprocess.run(
                        ftune_run_command(root, CRASH_SETTINGS), cwd=REPO, capture_output=True, text=True, timeout=180
                    )
                os.killpg(process.pid, signal.SIGKILL)
                break
            if time.time() > deadline:
                break
        process.wait(timeout=60)
        outcomes[component] = (process.returncode, process.pid, "".join(seen[-20:]))
    started = time.time()
    final = subprocess.run(
        ftune_run_command(root, CRASH_SETTINGS), cwd=REPO, capture_output=True, text=True, timeout=600
    )
    outcomes["final"] = final
    outcomes["final_s"] = time.time() - started
    return root, outcomes


def check_killed(component: str):
    def check(crash_runs):
        root, outcomes = crash_runs
        returncode, _, tail = outcomes[component]
        assert returncode == -signal.SIGKILL, f"{component} was not reached and killed: {tail}"
        final = outcomes["final"]
        assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
        serving = os.path.join(str(root), "serving", "image_classifier")
        assert sorted(os.listdir(serving)) == ["1"], "exactly one version, and no staging leftovers"
        assert os.path.isfile(os.path.join(serving, "1", "saved_model.pb"))

    return check


def check_concurrent_refused(crash_runs):
    _, outcomes = crash_runs
    second = outcomes["concurrent"]
    holder_pid = outcomes[KILLED_COMPONENTS[0]][1]
    assert second.returncode == outcome.EXIT_BUSY, second.stdout[-1000:] + second.stderr[-1000:]
    assert "another ftune run is using the pipeline root" in second.stderr
    assert f"pid {holder_pid} " in second.stderr, second.stderr[-1000:]


CRASH_ROWS = [
    Row("crash", f"SIGKILL during {c}", f"`kill -9` of the run when {c} starts; same command again", "the re-run completes and exactly one version is served", check_killed(c))
    for c in KILLED_COMPONENTS
] + [
    Row("crash", "Second `ftune run` on a live pipeline root", "second process started while the first runs", "exit code 5 (busy), message naming the first run's pid", check_concurrent_refused),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("row", params(CRASH_ROWS))
def test_crash_then_rerun(row, crash_runs):
    row.check(crash_runs)


# --- the README table ------------------------------------------------------------------------------------------

ALL_ROWS = INGEST_ROWS + EXIF_ROWS[:1] + SERVING_ROWS + PUSH_ROWS + SETTINGS_ROWS + CRASH_ROWS


def battery_table() -> str:
    lines = ["| area | what happens when ... | injected as | you get |", "| --- | --- | --- | --- |"]
    for row in ALL_ROWS:
        fault = "EXIF orientation 1-8" if row.area == "exif" else row.fault
        lines.append(f"| {row.area} | {fault} | {row.injection.replace('|', '/')} | {row.outcome} |")
    return "\n".join(lines)


def test_docs_table_matches_the_battery():
    with open(os.path.join(REPO, "docs", "what-happens-when.md")) as f:
        page = f.read()
    assert len(INGEST_ROWS + EXIF_ROWS + SERVING_ROWS + PUSH_ROWS + SETTINGS_ROWS + CRASH_ROWS) >= 30
    assert battery_table() in page, "docs/what-happens-when.md's table is out of date: " + (
        "regenerate it with `python tests/test_fault_battery.py`"
    )


if __name__ == "__main__":
    print(battery_table())

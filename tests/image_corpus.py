"""Builds image folders of known content for the ingestion tests: every supported variant and every kind of bad
file the ExampleGen must quarantine."""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Dict, Tuple

import numpy as np
from PIL import Image


def _pixels(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8")


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def good_images(seed: int) -> Dict[str, bytes]:
    """relative name -> bytes, one per supported variant."""
    rgb = Image.fromarray(_pixels(seed))
    frame2 = Image.fromarray(_pixels(seed + 1000)).convert("P")
    gif = io.BytesIO()
    rgb.convert("P").save(gif, "GIF", save_all=True, append_images=[frame2])
    return {
        "rgb.jpg": encode(rgb, "JPEG"),
        "gray.jpg": encode(rgb.convert("L"), "JPEG"),
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "progressive.JPEG": encode(rgb, "JPEG", progressive=True),
        "rgba.png": encode(rgb.convert("RGBA"), "PNG"),
        "palette.png": encode(rgb.convert("P"), "PNG"),
        "sixteen_bit.png": encode(Image.fromarray(_pixels(seed)[..., 0].astype("uint16") * 257), "PNG"),
        "png_named.jpg": encode(rgb, "PNG"),  # format decided by content, not extension
        "animated.gif": gif.getvalue(),
        "palette.bmp": encode(rgb.convert("P"), "BMP"),
        "rgb.bmp": encode(rgb, "BMP"),
        "nested/deeper/inside.jpg": encode(rgb, "JPEG"),
    }


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (1-bit grey)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def bad_files(seed: int) -> Dict[str, Tuple[bytes, str]]:
    """relative name -> (bytes, expected reason fragment). Broken symlinks are made separately."""
    rgb = Image.fromarray(_pixels(seed))
    jpeg = encode(rgb, "JPEG")
    png = encode(rgb, "PNG")
    return {
        "zero.jpg": (b"", "empty file"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "notes.txt": (b"just some notes, not an image\n", "not an image"),
        "garbage.png": (np.random.default_rng(seed).bytes(2048), "not an image"),
        "document.jpg": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "not an image"),
        "photo.webp": (encode(rgb, "WEBP"), "unsupported image format WEBP"),
        "scan.tif": (encode(rgb, "TIFF"), "unsupported image format TIFF"),
        "icon.ico": (encode(rgb.resize((32, 32)), "ICO"), "unsupported image format ICO"),
        "bomb.png": (bomb_png(), "absurd dimensions"),
        "bad_header.jpg": (b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(range(256)) * 4, "corrupt JPEG header"),
    }


def write_corpus(root: str, classes=("cat", "dog")) -> Tuple[Dict[str, str], Dict[str, str]]:
    """Writes good and bad files under root/<class>/...; returns ({rel: class} good, {rel: reason} bad)."""
    good, bad = {}, {}
    for index, class_name in enumerate(classes):
        for name, data in good_images(seed=index).items():
            rel = f"{class_name}/{name}"
            _write(os.path.join(root, rel), data)
            good[rel] = class_name
        for name, (data, reason) in bad_files(seed=index).items():
            rel = f"{class_name}/{name}"
            _write(os.path.join(root, rel), data)
            bad[rel] = reason
        link = f"{class_name}/dangling.jpg"
        os.symlink(os.path.join(root, "does-not-exist.jpg"), os.path.join(root, link))
        bad[link] = "unreadable"
    return good, bad


def write_plain(root: str, counts: Dict[str, int], seed: int = 0) -> None:
    """root/<class>/<i>.jpg for simple layout tests."""
    for class_index, (class_name, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            image = Image.fromarray(_pixels(seed * 1000 + class_index * 100 + i, 24, 24))
            _write(os.path.join(root, class_name, f"{i:04d}.jpg"), encode(image, "JPEG"))


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)

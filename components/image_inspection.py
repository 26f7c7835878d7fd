"""One input file, read and inspected: its bytes for the tf.Example, or the reason it goes to the quarantine.

A file is accepted only if it can be read within data.max_file_bytes without changing underneath, Pillow
identifies it by *content* (not extension) as a supported format, its header dimensions are sane (the same check
the transform graph runs: trainer/features.header_problem_py), Pillow decodes it fully (catches truncation), and
TensorFlow's own decoder decodes it (what Transform will use). BMPs are re-encoded losslessly as PNG: TensorFlow's
BMP decoder mis-reads palette BMPs (measured: pixel errors up to 240/255).
"""

from __future__ import annotations

import io
import os
from typing import Any, Dict, Optional, Tuple

import tensorflow as tf
from PIL import Image

from components.image_listing import is_uri
from trainer.features import header_problem_py

SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP")

# (bytes to store or None, {height, width, format} or {}, quarantine reason or None)
Inspection = Tuple[Optional[bytes], Dict[str, Any], Optional[str]]


class FileTooLargeError(OSError):
    """A file is larger than data.max_file_bytes; it was not read."""


class FileChangedError(OSError):
    """A file changed while it was being read."""


def read_and_inspect(path: str, max_file_bytes: int, max_image_pixels: int) -> Inspection:
    """Reads one listed file and inspects it; a file that cannot be read gets its quarantine reason here."""
    try:
        data = read_file(path, max_file_bytes)
    except FileNotFoundError as exc:
        if not is_uri(path) and os.path.islink(path):
            return None, {}, f"unreadable: {exc.strerror} (a symlink to a missing file)"
        return None, {}, "vanished during ingestion (listed, then gone before it was read)"
    except FileTooLargeError as exc:
        return None, {}, f"too large: {exc}"
    except FileChangedError as exc:
        return None, {}, f"unstable: {exc}"
    except (OSError, tf.errors.OpError) as exc:
        return None, {}, f"unreadable: {getattr(exc, 'strerror', None) or first_line(exc)}"
    return inspect_image(data, max_image_pixels)


def read_file(path: str, max_bytes: int) -> bytes:
    """The file's bytes; refuses a file above max_bytes from its size, before reading it, and a file that changes
    (or grows past the limit) while it is read."""
    if is_uri(path):
        size = tf.io.gfile.stat(path).length
        if size > max_bytes:
            raise FileTooLargeError(f"{size} bytes > data.max_file_bytes={max_bytes}; not read")
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        if before.st_size > max_bytes:
            raise FileTooLargeError(f"{before.st_size} bytes > data.max_file_bytes={max_bytes}; not read")
        data = f.read(max_bytes + 1)
        after = os.fstat(f.fileno())
    if len(data) > max_bytes:
        raise FileTooLargeError(f"grew past data.max_file_bytes={max_bytes} while being read")
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(data) != after.st_size:
        raise FileChangedError("changed while being read (size or modification time moved); run again when stable")
    return data


def inspect_image(data: bytes, max_image_pixels: int) -> Inspection:
    """Checks one file's bytes. Returns (bytes to store, {height, width, format}, None) or (None, {}, reason)."""
    if not data:
        return None, {}, "empty file (0 bytes)"
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        return None, {}, f"absurd dimensions (decompression bomb): {exc}"
    except Exception:  # Pillow raises several types for unidentifiable content
        magic = _format_from_magic(data)
        if magic:
            return None, {}, f"corrupt {magic} header: starts like {magic} but cannot be parsed"
        return None, {}, "not an image: content not recognised as any image format"
    fmt = image.format or "unknown"
    if fmt not in SUPPORTED_FORMATS:
        return None, {}, f"unsupported image format {fmt} (supported: {', '.join(SUPPORTED_FORMATS)})"
    # Checked from the header, before decoding: a tiny file can claim billions of pixels. The same check (format,
    # declared size, end marker) runs inside the transform graph, so serving refuses what ingestion refuses.
    problem, header = header_problem_py(data, max_image_pixels)
    if problem:
        return None, {}, problem
    width, height = header["width"], header["height"]
    try:
        image.load()  # full decode: raises on truncated or corrupt data
    except Exception as exc:
        return None, {}, f"corrupt or truncated {fmt} data: {exc}"
    if fmt == "BMP":
        data = _to_png(image)
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except Exception as exc:
        return None, {}, f"{fmt} decodes with Pillow but not with TensorFlow's decoder: {first_line(exc)}"
    return data, {"height": height, "width": width, "format": fmt}, None


_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"))


def _format_from_magic(data: bytes) -> Optional[str]:
    return next((fmt for magic, fmt in _MAGIC if data.startswith(magic)), None)


def _to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGBA" if "A" in image.getbands() else "RGB").save(buffer, "PNG")
    return buffer.getvalue()


def first_line(exc: Exception) -> str:
    """The first line of an error's message (at most 200 characters), or its type when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__

"""The examples' feature keys and the image codec shared by Transform, the Trainer and the exported model.

One decode/resize implementation serves training (inside Transform's `preprocessing_fn`) and serving (inside the
transform graph the exported signatures call), so there is no second copy of the preprocessing to drift. This
module sits in the model layer: it imports nothing from the TFX components above it.

Transform's output features:
  image_raw  string  the resized image as a serialized uint8 [S, S, 3] tensor (`tf.io.serialize_tensor`).
                     Why not float32: 160x160x3 floats are ~300 KB per example (and gzip-compressed by TFT), the
                     uint8 tensor is ~77 KB and decodes with a memcpy. Pixel values stay in [0, 255]; the
                     base-model-specific scaling (e.g. MobileNetV2's [-1, 1]) lives inside the Keras model, next to
                     the base it belongs to (Keras guide).
  label      int64   passed through.
  file_name  string  passed through (traceability; not a model input).
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

IMAGE_KEY = "image"
LABEL_KEY = "label"
CLASS_NAME_KEY = "class_name"
FILE_NAME_KEY = "file_name"
TRANSFORMED_IMAGE_KEY = "image_raw"
# TFT asset with entries `<label id>:<class name>`, so serving maps class ids to names without a side file.
CLASS_VOCAB_NAME = "class_names"


# --- the image header: read before anything is decoded ---------------------------------------------------------
#
# One check, shared by ingestion (components/image_example_gen.py calls `header_problem_py`) and by the transform
# graph that both Transform and the exported serving signatures run: the format, the pixel size the header
# declares, the EXIF orientation, and whether the file's end marker is there. It reads header bytes only, so a
# small file that declares 20000 x 20000 pixels is refused before a decoder allocates a single pixel of it.

FORMAT_NAMES = ("unknown", "JPEG", "PNG", "GIF", "BMP")
_UNKNOWN, _JPEG, _PNG, _GIF, _BMP = range(5)
# Upper bounds on the JPEG segments walked before the image data and on the EXIF IFD0 entries read.
_MAX_JPEG_SEGMENTS = 1024
_MAX_EXIF_ENTRIES = 64
_EXIF_ORIENTATION_TAG = 0x0112
_PAD = 32


def _bytes_at(buf: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """buf[positions] as int64, with positions clipped into the (zero-padded) buffer."""
    size = tf.shape(buf, out_type=tf.int64)[0]
    return tf.gather(buf, tf.clip_by_value(tf.cast(positions, tf.int64), 0, size - 1))


def _uint(buf: tf.Tensor, pos: tf.Tensor, width: int, little: tf.Tensor) -> tf.Tensor:
    """Unsigned integer of `width` bytes at pos (vectorised over pos), little- or big-endian."""
    positions = tf.expand_dims(tf.cast(pos, tf.int64), -1) + tf.range(width, dtype=tf.int64)
    big = tf.constant([256 ** (width - 1 - i) for i in range(width)], tf.int64)
    weights = tf.where(little, tf.reverse(big, [0]), big)
    return tf.reduce_sum(_bytes_at(buf, positions) * weights, axis=-1)


def _exif_orientation(buf: tf.Tensor, tiff: tf.Tensor) -> tf.Tensor:
    """Orientation tag (1..8) of the EXIF IFD0 starting at `tiff` (the TIFF header), 1 when absent."""
    little = tf.equal(_bytes_at(buf, tiff), 0x49)  # "II" little-endian, "MM" big-endian
    ifd = tiff + _uint(buf, tiff + 4, 4, little)
    count = tf.minimum(_uint(buf, ifd, 2, little), _MAX_EXIF_ENTRIES)
    entries = tf.range(_MAX_EXIF_ENTRIES, dtype=tf.int64)
    base = ifd + 2 + 12 * entries
    tags = _uint(buf, base, 2, little)
    values = _uint(buf, base + 8, 2, little)
    hit = (entries < count) & tf.equal(tags, _EXIF_ORIENTATION_TAG) & (values >= 1) & (values <= 8)
    found = tf.reduce_max(tf.where(hit, values, tf.zeros_like(values)))
    return tf.where(found > 0, found, tf.constant(1, tf.int64))


def _jpeg_header(buf: tf.Tensor, n: tf.Tensor):
    """Walks the JPEG segments up to the first scan: (height, width, orientation, start of scan or -1)."""
    exif_magic = tf.constant([0x45, 0x78, 0x69, 0x66, 0, 0], tf.int64)  # "Exif\0\0"

    def cond(i, pos, height, width, orientation, sos, done):
        return (~done) & (i < _MAX_JPEG_SEGMENTS) & (pos + 4 <= n)

    def body(i, pos, height, width, orientation, sos, done):
        lead, marker = _bytes_at(buf, pos), _bytes_at(buf, pos + 1)
        seglen = _uint(buf, pos + 2, 2, tf.constant(False))
        valid = tf.equal(lead, 0xFF)
        fill = valid & tf.equal(marker, 0xFF)
        standalone = valid & (tf.equal(marker, 0x01) | tf.equal(marker, 0xD8) | ((marker >= 0xD0) & (marker <= 0xD7)))
        is_sos = valid & tf.equal(marker, 0xDA)
        is_end = ~valid | tf.equal(marker, 0xD9) | is_sos
        is_sof = (
            valid
            & (marker >= 0xC0)
            & (marker <= 0xCF)
            & ~tf.equal(marker, 0xC4)
            & ~tf.equal(marker, 0xC8)
            & ~tf.equal(marker, 0xCC)
        )
        is_exif = (
            valid
            & tf.equal(marker, 0xE1)
            & tf.reduce_all(tf.equal(_bytes_at(buf, pos + 4 + tf.range(6, dtype=tf.int64)), exif_magic))
        )
        height = tf.where(is_sof, _uint(buf, pos + 5, 2, tf.constant(False)), height)
        width = tf.where(is_sof, _uint(buf, pos + 7, 2, tf.constant(False)), width)
        orientation = tf.where(is_exif, _exif_orientation(buf, pos + 10), orientation)
        sos = tf.where(is_sos, pos, sos)
        step = tf.where(fill, tf.constant(1, tf.int64), tf.where(standalone, tf.constant(2, tf.int64), 2 + seglen))
        return i + 1, pos + step, height, width, orientation, sos, done | is_end

    zero = tf.constant(0, tf.int64)
    _, _, height, width, orientation, sos, _ = tf.while_loop(
        cond,
        body,
        (
            zero,
            tf.constant(2, tf.int64),
            zero,
            zero,
            tf.constant(1, tf.int64),
            tf.constant(-1, tf.int64),
            tf.constant(False),
        ),
    )
    return height, width, orientation, sos


def _find(buf: tf.Tensor, pattern, after: tf.Tensor) -> tf.Tensor:
    """Whether the byte sequence `pattern` occurs in buf at a position > after (vectorised, no decode)."""
    size = tf.shape(buf, out_type=tf.int64)[0] - len(pattern) + 1
    match = tf.range(size) > after
    for i, value in enumerate(pattern):
        match &= tf.equal(buf[i : i + size], value)
    return tf.reduce_any(match)


def image_header(encoded: tf.Tensor) -> dict:
    """One encoded image (scalar string) -> {format (index into FORMAT_NAMES), height, width, orientation, size,
    complete}, from its header bytes only. `complete`: a JPEG has its end-of-image marker after the first scan,
    a PNG its IEND chunk (a truncated file has neither)."""
    n = tf.cast(tf.strings.length(encoded), tf.int64)
    buf = tf.cast(tf.io.decode_raw(tf.strings.join([encoded, tf.constant(b"\0" * _PAD)]), tf.uint8), tf.int64)
    head = _bytes_at(buf, tf.range(8, dtype=tf.int64))
    false = tf.constant(False)
    true = tf.constant(True)

    is_jpeg = tf.reduce_all(tf.equal(head[:3], [0xFF, 0xD8, 0xFF]))
    is_png = tf.reduce_all(tf.equal(head, [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]))
    is_gif = tf.reduce_all(tf.equal(head[:4], [0x47, 0x49, 0x46, 0x38]))
    is_bmp = tf.reduce_all(tf.equal(head[:2], [0x42, 0x4D]))

    def jpeg():
        height, width, orientation, sos = _jpeg_header(buf, n)
        complete = (sos >= 0) & _find(buf[:n], [0xFF, 0xD9], sos)
        return height, width, orientation, complete

    def png():
        return _uint(buf, 20, 4, false), _uint(buf, 16, 4, false), tf.constant(1, tf.int64), _find(buf[:n], b"IEND", -1)

    def gif():
        return _uint(buf, 8, 2, true), _uint(buf, 6, 2, true), tf.constant(1, tf.int64), true

    def bmp():
        core = tf.equal(_uint(buf, 14, 4, true), 12)  # BITMAPCOREHEADER: 16-bit sizes
        width = tf.where(core, _uint(buf, 18, 2, true), _signed32(_uint(buf, 18, 4, true)))
        height = tf.where(core, _uint(buf, 20, 2, true), tf.abs(_signed32(_uint(buf, 22, 4, true))))
        return height, width, tf.constant(1, tf.int64), true

    def unknown():
        zero = tf.constant(0, tf.int64)
        return zero, zero, tf.constant(1, tf.int64), false

    fmt = tf.where(
        is_jpeg,
        _JPEG,
        tf.where(is_png, _PNG, tf.where(is_gif, _GIF, tf.where(is_bmp, _BMP, _UNKNOWN))),
    )
    height, width, orientation, complete = tf.switch_case(fmt, [unknown, jpeg, png, gif, bmp])
    return {
        "format": fmt,
        "height": height,
        "width": width,
        "orientation": orientation,
        "size": n,
        "complete": complete,
    }


def _signed32(value: tf.Tensor) -> tf.Tensor:
    return tf.where(value >= 2**31, value - 2**32, value)


def header_problem(header: dict, max_image_pixels, name: tf.Tensor) -> tf.Tensor:
    """'' when the header allows decoding, else why not (prefixed with `name`, e.g. 'image #3 of the batch')."""
    pixels = header["height"] * header["width"]
    fmt = tf.gather(tf.constant(FORMAT_NAMES), header["format"])
    dims = tf.strings.join([tf.strings.as_string(header["width"]), "x", tf.strings.as_string(header["height"])])
    checks = [
        (tf.equal(header["size"], 0), tf.constant("empty (0 bytes)")),
        (
            tf.equal(header["format"], _UNKNOWN),
            tf.constant("not an image: not a JPEG, PNG, GIF or BMP (by its first bytes)"),
        ),
        (
            (header["height"] < 1) | (header["width"] < 1),
            tf.strings.join(["no valid dimensions in its ", fmt, " header (", dims, ")"]),
        ),
        (
            pixels > tf.cast(max_image_pixels, tf.int64),
            tf.strings.join(
                [
                    "absurd dimensions ",
                    dims,
                    " (",
                    tf.strings.as_string(pixels),
                    " pixels > data.max_image_pixels=",
                    tf.strings.as_string(tf.cast(max_image_pixels, tf.int64)),
                    "), refused before decoding",
                ]
            ),
        ),
        (~header["complete"], tf.strings.join(["corrupt or truncated ", fmt, " data: its end marker is missing"])),
    ]
    problem = tf.constant("")
    for failed, reason in reversed(checks):  # the first failing check wins
        problem = tf.where(failed, reason, problem)
    return tf.where(tf.equal(problem, ""), problem, tf.strings.join([name, ": ", problem]))


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turns a decoded [H, W, C] image upright per its EXIF orientation (1..8), as Pillow's exif_transpose does."""
    branches = [
        lambda: image,  # 1: upright
        lambda: tf.image.flip_left_right(image),  # 2
        lambda: tf.image.rot90(image, 2),  # 3
        lambda: tf.image.flip_up_down(image),  # 4
        lambda: tf.transpose(image, [1, 0, 2]),  # 5: transpose
        lambda: tf.image.rot90(image, 3),  # 6: rotate 90 clockwise
        lambda: tf.image.rot90(tf.transpose(image, [1, 0, 2]), 2),  # 7: transverse
        lambda: tf.image.rot90(image, 1),  # 8: rotate 90 counter-clockwise
    ]
    index = tf.cast(tf.clip_by_value(orientation, 1, 8) - 1, tf.int32)
    return tf.switch_case(index, branches)


@tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)])
def _check_one(encoded, max_image_pixels):
    header = image_header(encoded)
    return header_problem(header, max_image_pixels, tf.constant("image")), header


def header_problem_py(data: bytes, max_image_pixels: int):
    """The same header check for one file's bytes, in Python: (reason or None, header as plain ints)."""
    problem, header = _check_one(tf.constant(data), tf.constant(max_image_pixels, tf.int64))
    header = {k: int(v.numpy()) for k, v in header.items()}
    problem = problem.numpy().decode()
    return (problem[len("image: ") :] or None), header


def decode_and_resize(image_bytes: tf.Tensor, image_size: int, max_image_pixels: int) -> tf.Tensor:
    """[batch] encoded images (JPEG/PNG/GIF/BMP) -> [batch, S, S, 3] uint8, RGB, upright.

    Each image's header is checked first (`header_problem`): an empty, unrecognised, truncated or oversized image
    fails the whole request with an error that names its position in the batch, before anything is decoded."""

    def one(args) -> tf.Tensor:
        encoded, index = args
        header = image_header(encoded)
        name = tf.strings.join(["image #", tf.strings.as_string(index), " of the batch"])
        problem = header_problem(header, max_image_pixels, name)
        check = tf.debugging.Assert(tf.equal(problem, ""), [problem])
        with tf.control_dependencies([check]):
            # channels=3: grayscale is replicated, alpha dropped; 16-bit PNGs are scaled to 8 bits by TF.
            # expand_animations=False: a GIF yields its first frame as a 3-D image.
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        # Phone photos are often stored sideways with an EXIF orientation tag: training and serving both see the
        # upright image (this graph is the one both run).
        image = apply_orientation(image, header["orientation"])
        # Bilinear resize without keeping the aspect ratio: what the TF tutorial's image_dataset_from_directory does.
        image = tf.image.resize(image, [image_size, image_size], method="bilinear")
        return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

    indices = tf.range(tf.shape(image_bytes, out_type=tf.int64)[0])
    return tf.map_fn(
        one, (image_bytes, indices), fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8)
    )


def serialize_images(images: tf.Tensor) -> tf.Tensor:
    """[batch, S, S, 3] uint8 -> [batch] string (one serialized tensor each)."""
    return tf.map_fn(tf.io.serialize_tensor, images, fn_output_signature=tf.TensorSpec([], tf.string))


def parse_images(serialized: tf.Tensor, image_size: int) -> tf.Tensor:
    """Inverse of serialize_images, to float32 in [0, 255]: [batch] string -> [batch, S, S, 3]."""

    def one(blob: tf.Tensor) -> tf.Tensor:
        image = tf.io.parse_tensor(blob, out_type=tf.uint8)
        image.set_shape([image_size, image_size, 3])
        return image

    images = tf.map_fn(one, serialized, fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8))
    return tf.cast(images, tf.float32)


def read_class_names(tf_transform_output: tft.TFTransformOutput) -> list:
    """Class names ordered by label id, from the transform graph's `class_names` asset."""
    path = tf_transform_output.vocabulary_file_by_name(CLASS_VOCAB_NAME)
    by_id = {}
    with tf.io.gfile.GFile(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                label, _, name = line.partition(":")
                by_id[int(label)] = name
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError(f"label vocabulary {path} is not a contiguous 0..N-1 range: {sorted(by_id)}")
    return [by_id[i] for i in range(len(by_id))]

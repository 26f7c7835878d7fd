"""Procedural sample data: a small class-per-folder image set, made on the spot (no downloads).

Design
------
Each class is one SHAPE kind (circle, square, triangle, ...), taken from ``SHAPE_NAMES`` in that fixed order, so
``classes=3`` always means circle / square / triangle. Everything else about an image is random and drawn from the
same distributions for every class, so only the shape tells the classes apart:

* size: 64..220 px per side, aspect ratio up to about 1.6 either way (a quarter of the images are square);
* background: a flat colour, a linear gradient or a smooth blotchy texture;
* foreground: one flat colour, resampled until it contrasts with the background (in brightness too for the
  images stored as grayscale);
* pose: position, size (radius 26..42 % of the shorter side), rotation and a slight squash;
* finish: an occasional light blur, Gaussian noise of random strength, then the storage mode and format:
  about 10 % grayscale (mode L), about 8 % RGBA PNG with a translucent background, the rest RGB; JPEG (random
  quality 75..95) or PNG, half and half.

Colours, backgrounds and noise never depend on the class, so the mean colour of an image says nothing about its
class (tests/test_sample_data.py checks this).

Drawing: a shape is a list of polygons in unit coordinates (extent about 1), each filled with 255 (shape) or
0 (a hole, e.g. the inside of a ring) on a grayscale mask. The polygons are squashed, rotated, scaled and moved into
place, drawn at 3x resolution and box-downsampled, which gives anti-aliased edges. The foreground colour is then
composited onto the background through that mask.

Layouts: ``generate_sample_data`` writes class folders at the top (``<class>/<file>``, split by hash when
ingested); ``generate_presplit_sample_data`` writes the same images into ``<train_dir>/<class>/`` and
``<eval_dir>/<class>/``, the last ``eval_fraction`` of each class held out. ``ftune run`` without a data root uses
the pre-split layout (class folders at the top only when data.split_mode is hash), so that every class gets its
share of eval images: the per-class gate needs eval.min_class_examples (10) eval images of a class to gate it, and a
hash split of the demo's 60 images per class had given the three classes 12, 7 and 6.

Determinism: image ``i`` of class ``k`` uses its own generator ``numpy.random.default_rng([seed, k, i])``, so the
same arguments give byte-identical files (Pillow's JPEG and PNG encoders are deterministic and no metadata or
timestamps are written), and an image does not change when ``classes`` or ``per_class`` grows. Inside one image the
shape-specific parameters (a star's inner radius, the number of stripes, ...) come from a child generator drawn at a
fixed point, so ``render_sample`` with equal generators gives the same size, colours, pose, background and noise
for every kind: only the shape differs.
"""

from __future__ import annotations

import io
import math
import os
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Class (folder) names in the order they are used: classes=n takes the first n.
SHAPE_NAMES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "stripes", "checker")

MIN_SIDE = 64
MAX_SIDE = 220
SUPERSAMPLE = 3
PROGRESS_EVERY = 100

# A polygon in unit coordinates plus the mask value it is filled with (255: shape, 0: hole).
Polygon = List[Tuple[float, float]]
MaskPart = Tuple[Polygon, int]


class Sample(NamedTuple):
    """One rendered image before encoding."""

    image: Image.Image  # mode RGB, L or RGBA
    mask: np.ndarray  # float32 (height, width) shape coverage in [0, 1]
    fmt: str  # "JPEG" or "PNG"
    jpeg_quality: int  # used when fmt is "JPEG"


# ----------------------------------------------------------------------------------------------------------------
# Shapes in unit coordinates
# ----------------------------------------------------------------------------------------------------------------


def _regular_polygon(radius: float, corners: int, start_angle: float = 0.0) -> Polygon:
    """Corners of a regular polygon (or a circle, with many corners) centred on the origin."""
    return [
        (
            radius * math.cos(start_angle + 2 * math.pi * j / corners),
            radius * math.sin(start_angle + 2 * math.pi * j / corners),
        )
        for j in range(corners)
    ]


def _rectangle(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _star(inner_ratio: float, points: int = 5) -> Polygon:
    """A star with the given number of points: outer radius 1, inner radius inner_ratio."""
    corners = []
    for j in range(2 * points):
        radius = 1.0 if j % 2 == 0 else inner_ratio
        angle = -math.pi / 2 + math.pi * j / points
        corners.append((radius * math.cos(angle), radius * math.sin(angle)))
    return corners


def _plus(half_width: float) -> Polygon:
    """A plus sign: arms of length 1 from the centre, half_width wide on each side of their axis."""
    w = half_width
    return [
        (-w, -1.0),
        (w, -1.0),
        (w, -w),
        (1.0, -w),
        (1.0, w),
        (w, w),
        (w, 1.0),
        (-w, 1.0),
        (-w, w),
        (-1.0, w),
        (-1.0, -w),
        (-w, -w),
    ]


def shape_parts(kind: str, rng: np.random.Generator) -> List[MaskPart]:
    """The polygons that make up one shape of the given kind, with kind-specific random details."""
    if kind == "circle":
        return [(_regular_polygon(1.0, 96), 255)]
    if kind == "square":
        return [(_rectangle(-0.8, -0.8, 0.8, 0.8), 255)]
    if kind == "triangle":
        return [(_regular_polygon(1.05, 3, -math.pi / 2), 255)]
    if kind == "star":
        return [(_star(inner_ratio=float(rng.uniform(0.38, 0.5))), 255)]
    if kind == "cross":
        return [(_plus(half_width=float(rng.uniform(0.2, 0.32))), 255)]
    if kind == "ring":
        inner = float(rng.uniform(0.5, 0.7))
        return [(_regular_polygon(1.0, 96), 255), (_regular_polygon(inner, 96), 0)]
    if kind == "stripes":
        return _stripes(count=int(rng.integers(3, 6)))
    if kind == "checker":
        return _checker(cells=int(rng.integers(3, 6)))
    raise ValueError(f"unknown shape kind {kind!r}; known kinds: {', '.join(SHAPE_NAMES)}")


def _stripes(count: int, half_extent: float = 0.85) -> List[MaskPart]:
    """count parallel bars filling a square patch, bars and gaps of about equal width."""
    period = 2 * half_extent / (count - 0.4)
    thickness = 0.6 * period
    parts = []
    for j in range(count):
        y0 = -half_extent + j * period
        parts.append((_rectangle(-half_extent, y0, half_extent, y0 + thickness), 255))
    return parts


def _checker(cells: int, half_extent: float = 0.8) -> List[MaskPart]:
    """A cells x cells checkerboard patch; only the filled cells are drawn."""
    step = 2 * half_extent / cells
    parts = []
    for row in range(cells):
        for col in range(cells):
            if (row + col) % 2 == 0:
                x0 = -half_extent + col * step
                y0 = -half_extent + row * step
                parts.append((_rectangle(x0, y0, x0 + step, y0 + step), 255))
    return parts


# ----------------------------------------------------------------------------------------------------------------
# Layout, colours and background (shared by all classes)
# ----------------------------------------------------------------------------------------------------------------


def _random_size(rng: np.random.Generator) -> Tuple[int, int]:
    """(width, height): 64..220 px per side, aspect ratio within about 1:1.6, a quarter of them square."""
    width = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    if rng.random() < 0.25:
        return width, width
    aspect = math.exp(rng.uniform(-math.log(1.6), math.log(1.6)))
    height = int(np.clip(round(width * aspect), MIN_SIDE, MAX_SIDE))
    return width, height


def _random_pose(rng: np.random.Generator, width: int, height: int) -> Dict[str, float]:
    """Centre, radius, rotation and squash of the shape; the shape stays (nearly) inside the image."""
    radius = float(rng.uniform(0.26, 0.42)) * min(width, height)
    return {
        "cx": float(rng.uniform(radius, width - radius)),
        "cy": float(rng.uniform(radius, height - radius)),
        "radius": radius,
        "angle": float(rng.uniform(0, 2 * math.pi)),
        "squash": float(rng.uniform(0.85, 1.0)),
    }


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _luma(colour: np.ndarray) -> float:
    """Brightness as Pillow's RGB -> L conversion computes it."""
    return float(0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2])


def _contrasting_colour(
    rng: np.random.Generator, avoid: List[np.ndarray], min_luma_difference: float = 0.0, min_distance: float = 110.0
) -> np.ndarray:
    """A random colour at least min_distance (RGB Euclidean) and min_luma_difference (brightness) from each colour
    in avoid; the best of 30 tries when none qualifies."""
    best, best_score = None, -math.inf
    for _ in range(30):
        colour = _random_colour(rng)
        distance = min(float(np.linalg.norm(colour - other)) for other in avoid)
        luma_difference = min(abs(_luma(colour) - _luma(other)) for other in avoid)
        if distance >= min_distance and luma_difference >= min_luma_difference:
            return colour
        score = min(distance - min_distance, luma_difference - min_luma_difference)
        if score > best_score:
            best, best_score = colour, score
    return best


def _random_mode(rng: np.random.Generator) -> str:
    """Storage mode: about 10 % grayscale "L", 8 % "RGBA" (always PNG), the rest "RGB"."""
    draw = rng.random()
    if draw < 0.10:
        return "L"
    if draw < 0.18:
        return "RGBA"
    return "RGB"


def _background(rng: np.random.Generator, width: int, height: int) -> Tuple[np.ndarray, List[np.ndarray]]:
    """A float32 (height, width, 3) background and its main colours (for the foreground contrast check).

    Kinds: flat colour, linear gradient between two nearby colours at a random angle, or a smooth blotchy texture
    (a small random grid of colour offsets around a base colour, upsampled bicubically).
    """
    base = _random_colour(rng)
    kind = int(rng.integers(0, 3))
    if kind == 0:
        return np.broadcast_to(base, (height, width, 3)).copy(), [base]
    if kind == 1:
        other = np.clip(base + rng.uniform(-70, 70, size=3), 0, 255).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        t = xs * math.cos(angle) + ys * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        pixels = base + t[..., None] * (other - base)
        return pixels.astype(np.float32), [base, other]
    grid = int(rng.integers(3, 8))
    offsets = rng.uniform(-35, 35, size=(grid, grid, 3))
    small = np.clip(base + offsets, 0, 255).astype(np.uint8)
    texture = Image.fromarray(small, "RGB").resize((width, height), Image.BICUBIC)
    return np.asarray(texture, dtype=np.float32), [base]


# ----------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------


def _place(polygon: Polygon, pose: Dict[str, float], scale: float) -> List[Tuple[float, float]]:
    """Unit polygon -> pixel coordinates (times scale): squash y, rotate, scale by the radius, move to the centre."""
    cos_a, sin_a = math.cos(pose["angle"]), math.sin(pose["angle"])
    placed = []
    for x, y in polygon:
        y = y * pose["squash"]
        rx, ry = x * cos_a - y * sin_a, x * sin_a + y * cos_a
        placed.append(((pose["cx"] + rx * pose["radius"]) * scale, (pose["cy"] + ry * pose["radius"]) * scale))
    return placed


def shape_mask(parts: List[MaskPart], pose: Dict[str, float], width: int, height: int) -> np.ndarray:
    """Anti-aliased coverage mask, float32 (height, width) in [0, 1]."""
    big = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(big)
    for polygon, value in parts:
        draw.polygon(_place(polygon, pose, SUPERSAMPLE), fill=value)
    small = big.resize((width, height), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def render_sample(kind: str, rng: np.random.Generator) -> Sample:
    """One image of the given shape kind, with its shape mask and the format to store it in.

    All shared draws (size, pose, colours, background, noise, mode, format) come from rng in a fixed order; the
    kind-specific details come from a child generator, so equal rngs give equal images apart from the shape.
    """
    width, height = _random_size(rng)
    pose = _random_pose(rng, width, height)
    mode = _random_mode(rng)
    background, background_colours = _background(rng, width, height)
    # Grayscale keeps only brightness, so a grayscale image needs a brightness contrast as well.
    foreground = _contrasting_colour(rng, background_colours, min_luma_difference=60.0 if mode == "L" else 0.0)
    shape_rng = np.random.default_rng(int(rng.integers(0, 2**63)))
    blur_radius = float(rng.uniform(0.4, 1.2)) if rng.random() < 0.3 else 0.0
    noise_sigma = float(rng.uniform(0.0, 14.0))
    format_draw = rng.random()
    jpeg_quality = int(rng.integers(75, 96))
    background_alpha = int(rng.integers(120, 256))

    mask = shape_mask(shape_parts(kind, shape_rng), pose, width, height)
    pixels = background + mask[..., None] * (foreground - background)
    if blur_radius > 0:
        blurred = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
        pixels = np.asarray(blurred.filter(ImageFilter.GaussianBlur(blur_radius)), dtype=np.float32)
    pixels = pixels + noise_sigma * rng.standard_normal(size=pixels.shape, dtype=np.float32)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")

    if mode == "L":
        image = image.convert("L")
    elif mode == "RGBA":
        alpha = np.rint(background_alpha + mask * (255 - background_alpha)).astype(np.uint8)
        image = image.convert("RGBA")
        image.putalpha(Image.fromarray(alpha, "L"))
    if image.mode == "RGBA" or format_draw < 0.5:
        fmt = "PNG"
    else:
        fmt = "JPEG"
    return Sample(image=image, mask=mask, fmt=fmt, jpeg_quality=jpeg_quality)


def encode_sample(sample: Sample) -> bytes:
    """Encoded bytes without metadata (no EXIF, no text chunks, no timestamps)."""
    buffer = io.BytesIO()
    if sample.fmt == "JPEG":
        sample.image.save(buffer, "JPEG", quality=sample.jpeg_quality, optimize=False, progressive=False)
    else:
        sample.image.save(buffer, "PNG", optimize=False, compress_level=1)  # noisy pixels barely compress anyway
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------------------------


def _validate(classes: int, per_class: int, seed: int) -> None:
    if classes < 2:
        raise ValueError(f"classes must be at least 2, got {classes}")
    if classes > len(SHAPE_NAMES):
        raise ValueError(
            f"classes must be at most {len(SHAPE_NAMES)} (one per shape kind: {', '.join(SHAPE_NAMES)}), got {classes}"
        )
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")


def eval_count(per_class: int, eval_fraction: float) -> int:
    """Images per class held out by generate_presplit_sample_data: eval_fraction of them, rounded, and at least one
    in each split."""
    if per_class < 2:
        raise ValueError(
            f"per_class must be at least 2 for a pre-split set (one train, one eval image), got {per_class}"
        )
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction}")
    return min(max(round(per_class * eval_fraction), 1), per_class - 1)


class _Progress:
    """Counts written images and reports every PROGRESS_EVERY of them, and the last one."""

    def __init__(self, total: int, report: Optional[Callable[[str], None]]):
        self.total, self.done, self.report = total, 0, report

    def tick(self) -> None:
        self.done += 1
        if self.report is not None and (self.done % PROGRESS_EVERY == 0 or self.done == self.total):
            self.report(f"sample data: {self.done}/{self.total} images")


def _write_images(class_dir: str, name: str, class_index: int, indices: range, seed: int, progress: _Progress) -> None:
    """Images `indices` of one class into class_dir, as <name>_<index>.jpg / .png."""
    os.makedirs(class_dir, exist_ok=True)
    for image_index in indices:
        rng = np.random.default_rng([seed, class_index, image_index])
        sample = render_sample(name, rng)
        stem = os.path.join(class_dir, f"{name}_{image_index:04d}")
        extension, other_extension = ("jpg", "png") if sample.fmt == "JPEG" else ("png", "jpg")
        if os.path.exists(f"{stem}.{other_extension}"):
            os.remove(f"{stem}.{other_extension}")  # left by an earlier run with another seed
        with open(f"{stem}.{extension}", "wb") as f:
            f.write(encode_sample(sample))
        progress.tick()


def generate_sample_data(
    out_dir: str, classes: int, per_class: int, seed: int, progress: Optional[Callable[[str], None]] = None
) -> Dict[str, int]:
    """Writes out_dir/<class_name>/<file> images; returns {class_name: count}.

    Class names are the first `classes` entries of SHAPE_NAMES; files are named like circle_0007.jpg / .png.
    Existing images with the same stem are replaced; other files in out_dir are left alone.
    """
    _validate(classes, per_class, seed)
    tracker = _Progress(classes * per_class, progress)
    counts: Dict[str, int] = {}
    for class_index, name in enumerate(SHAPE_NAMES[:classes]):
        _write_images(os.path.join(out_dir, name), name, class_index, range(per_class), seed, tracker)
        counts[name] = per_class
    return counts


def generate_presplit_sample_data(
    out_dir: str,
    classes: int,
    per_class: int,
    seed: int,
    eval_fraction: float,
    train_dir: str,
    eval_dir: str,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Dict[str, int]]:
    """The images generate_sample_data(classes, per_class, seed) writes, split into out_dir/<train_dir>/<class>/ and
    out_dir/<eval_dir>/<class>/: the last eval_count(per_class, eval_fraction) images of each class go to eval_dir.
    Returns {train_dir: {class_name: count}, eval_dir: {class_name: count}}."""
    _validate(classes, per_class, seed)
    held_out = eval_count(per_class, eval_fraction)
    if train_dir == eval_dir:
        raise ValueError(f"train_dir and eval_dir must differ, both are {train_dir!r}")
    tracker = _Progress(classes * per_class, progress)
    counts: Dict[str, Dict[str, int]] = {train_dir: {}, eval_dir: {}}
    for class_index, name in enumerate(SHAPE_NAMES[:classes]):
        splits = ((train_dir, range(per_class - held_out)), (eval_dir, range(per_class - held_out, per_class)))
        for split_dir, indices in splits:
            _write_images(os.path.join(out_dir, split_dir, name), name, class_index, indices, seed, tracker)
            counts[split_dir][name] = len(indices)
    return counts

"""Procedural sample data: layouts (class folders, pre-split), determinism, formats and modes, and that only the shape
identifies the class."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image, ImageFilter

from pipeline.configs import ConfigError, DataConfig, EvalConfig, load_config
from pipeline.sample_data import (
    SHAPE_NAMES,
    eval_count,
    generate_presplit_sample_data,
    generate_sample_data,
    render_sample,
)

FILE_NAME = re.compile(r"^(?P<name>[a-z]+)_(?P<index>\d{4})\.(?P<ext>jpg|png)$")


def _files(root):
    """Relative path -> bytes of every file under root."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def _image_paths(root):
    return sorted(os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """3 classes x 60 images, seed 0 (the product's default sample set)."""
    root = str(tmp_path_factory.mktemp("small"))
    counts = generate_sample_data(root, classes=3, per_class=60, seed=0)
    return root, counts


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory):
    """4 classes x 100 images, enough for the colour statistics to be stable."""
    root = str(tmp_path_factory.mktemp("colour"))
    generate_sample_data(root, classes=4, per_class=100, seed=0)
    return root


# ------------------------------------------------------------------------------------------------ layout and names


def test_folders_files_and_counts(small_set):
    root, counts = small_set
    assert counts == {"circle": 60, "square": 60, "triangle": 60}
    assert list(counts) == ["circle", "square", "triangle"]
    assert sorted(os.listdir(root)) == ["circle", "square", "triangle"]
    for name in counts:
        files = os.listdir(os.path.join(root, name))
        assert len(files) == 60
        indices = []
        for file_name in files:
            match = FILE_NAME.match(file_name)
            assert match, file_name
            assert match["name"] == name
            indices.append(int(match["index"]))
        assert sorted(indices) == list(range(60))


def test_class_names_are_readable_words_in_a_fixed_order(tmp_path):
    assert SHAPE_NAMES[:8] == ("circle", "square", "triangle", "star", "cross", "ring", "stripes", "checker")
    counts = generate_sample_data(str(tmp_path), classes=8, per_class=2, seed=3)
    assert list(counts) == list(SHAPE_NAMES[:8])
    assert set(counts.values()) == {2}
    assert sorted(os.listdir(tmp_path)) == sorted(SHAPE_NAMES[:8])


VALID = {"classes": 3, "per_class": 10, "seed": 0}
PRESPLIT = {"eval_fraction": 0.2, "train_dir": "train", "eval_dir": "validation"}


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"classes": 1}, "at least 2"),
        ({"classes": 0}, "at least 2"),
        ({"classes": len(SHAPE_NAMES) + 1}, f"at most {len(SHAPE_NAMES)}"),
        ({"per_class": 0}, "per_class must be at least 1"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_arguments_raise_before_writing(tmp_path, kwargs, fragment):
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=fragment):
        generate_sample_data(str(out_dir), **{**VALID, **kwargs})
    with pytest.raises(ValueError, match=fragment):
        generate_presplit_sample_data(str(out_dir), **{**VALID, **PRESPLIT, **kwargs})
    assert not out_dir.exists()


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"per_class": 1}, "per_class must be at least 2 for a pre-split set"),
        ({"eval_fraction": 0.0}, "eval_fraction must be between 0 and 1"),
        ({"eval_fraction": 1.0}, "eval_fraction must be between 0 and 1"),
        ({"eval_dir": "train"}, "train_dir and eval_dir must differ"),
    ],
)
def test_invalid_split_arguments_raise_before_writing(tmp_path, kwargs, fragment):
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=fragment):
        generate_presplit_sample_data(str(out_dir), **{**VALID, **PRESPLIT, **kwargs})
    assert not out_dir.exists()


def test_progress_is_reported_every_100_images(tmp_path):
    messages = []
    generate_sample_data(str(tmp_path), classes=3, per_class=70, seed=0, progress=messages.append)
    assert messages == ["sample data: 100/210 images", "sample data: 200/210 images", "sample data: 210/210 images"]


def test_progress_counts_both_splits(tmp_path):
    messages = []
    generate_presplit_sample_data(str(tmp_path), classes=2, per_class=60, seed=0, **PRESPLIT, progress=messages.append)
    assert messages == ["sample data: 100/120 images", "sample data: 120/120 images"]


# ------------------------------------------------------------------------------------------------- pre-split layout


@pytest.mark.parametrize(
    "per_class, eval_fraction, expected",
    [(60, 0.2, 12), (40, 0.2, 8), (12, 0.2, 2), (2, 0.2, 1), (10, 0.95, 9), (7, 0.5, 4)],
)
def test_eval_count_rounds_and_leaves_an_image_in_each_split(per_class, eval_fraction, expected):
    assert eval_count(per_class, eval_fraction) == expected


def test_presplit_holds_the_same_images_the_last_of_each_class_held_out(small_set, tmp_path):
    root, _ = small_set
    counts = generate_presplit_sample_data(str(tmp_path), classes=3, per_class=60, seed=0, **PRESPLIT)
    assert counts == {
        "train": {"circle": 48, "square": 48, "triangle": 48},
        "validation": {"circle": 12, "square": 12, "triangle": 12},
    }
    assert sorted(os.listdir(tmp_path)) == ["train", "validation"]
    split = _files(str(tmp_path))
    assert {name.split(os.sep, 1)[1]: data for name, data in split.items()} == _files(root)
    for name in split:
        split_dir, _, file_name = name.split(os.sep)
        index = int(FILE_NAME.match(file_name)["index"])
        assert split_dir == ("validation" if index >= 48 else "train"), name


def test_default_sample_data_gives_every_class_enough_eval_images_to_gate():
    """The demo (`ftune run` with the defaults) gates the recall of every class, not only of the lucky ones."""
    data, gate = DataConfig(), EvalConfig()
    assert data.split_mode != "hash"  # so the sample data is pre-split
    assert eval_count(data.sample_per_class, data.eval_fraction) >= gate.min_class_examples


def test_presplit_sample_data_is_read_as_presplit_with_every_class_in_both_splits(tmp_path):
    from components import image_example_gen as eg

    counts = generate_presplit_sample_data(str(tmp_path), classes=3, per_class=10, seed=0, **PRESPLIT)
    assert eg.resolve_split_mode(str(tmp_path), "auto", "train", "validation") == "presplit"
    input_config = eg.make_input_config("presplit", "train", "validation")
    assert eg.check_layout(str(tmp_path), input_config) == sorted(SHAPE_NAMES[:3])
    listed = eg.input_files(str(tmp_path), input_config, [])
    for split_dir, per_class in counts.items():
        for name, count in per_class.items():
            assert sum(path.startswith(f"{split_dir}/{name}/") for _, path in listed) == count


def _config(tmp_path, *settings):
    return load_config(None, [f"pipeline_root={tmp_path}", "data.sample_per_class=10", *settings]).absolute_paths()


def test_ftune_run_sample_data_is_presplit_unless_hash_is_asked_for(tmp_path):
    from pipeline.local_runner import ensure_sample_data

    messages = []
    root = ensure_sample_data(_config(tmp_path), progress=messages.append)
    assert sorted(os.listdir(root)) == [".params.json", "train", "validation"]
    assert [len(os.listdir(os.path.join(root, "validation", name))) for name in SHAPE_NAMES[:3]] == [2, 2, 2]
    assert ensure_sample_data(_config(tmp_path), progress=messages.append) == root
    assert messages[-1] == f"using sample data in {root}"  # same settings: the folder is reused, not rewritten

    # data.split_mode=hash: class folders at the top, the same images as before the sample data was pre-split.
    root = ensure_sample_data(_config(tmp_path, "data.split_mode=hash"), progress=messages.append)
    assert sorted(os.listdir(root)) == [".params.json", *SHAPE_NAMES[:3]]
    with open(os.path.join(root, ".params.json")) as f:
        assert json.load(f) == {"classes": 3, "per_class": 10, "seed": 0}
    flat = tmp_path / "flat"
    generate_sample_data(str(flat), classes=3, per_class=10, seed=0)
    assert {k: v for k, v in _files(root).items() if k != ".params.json"} == _files(str(flat))

    # Other split folder names are followed.
    settings = ("data.train_dir=fit", "data.eval_dir=holdout")
    root = ensure_sample_data(_config(tmp_path, *settings), progress=messages.append)
    assert sorted(os.listdir(root)) == [".params.json", "fit", "holdout"]


def test_sample_per_class_needs_an_image_for_each_split():
    with pytest.raises(ConfigError, match="data.sample_per_class must be at least 2"):
        load_config(None, ["data.sample_per_class=1"])


# ---------------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files(small_set, tmp_path):
    root, _ = small_set
    generate_sample_data(str(tmp_path), classes=3, per_class=60, seed=0)
    first, second = _files(root), _files(str(tmp_path))
    assert len(first) == 180
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_different_seed_gives_different_files(small_set, tmp_path):
    root, _ = small_set
    generate_sample_data(str(tmp_path), classes=3, per_class=60, seed=1)
    first, second = _files(root), _files(str(tmp_path))
    stems = lambda files: {os.path.splitext(name)[0]: data for name, data in files.items()}  # noqa: E731
    first, second = stems(first), stems(second)
    assert first.keys() == second.keys()
    same = [stem for stem in first if first[stem] == second[stem]]
    assert same == []


def test_an_image_does_not_depend_on_the_set_size(small_set, tmp_path):
    root, _ = small_set
    generate_sample_data(str(tmp_path), classes=2, per_class=5, seed=0)
    small = _files(str(tmp_path))
    big = _files(root)
    assert len(small) == 10
    for name, data in small.items():
        assert big[name] == data, name


def test_regenerating_with_another_seed_leaves_one_file_per_image(tmp_path):
    generate_sample_data(str(tmp_path), classes=2, per_class=40, seed=0)
    generate_sample_data(str(tmp_path), classes=2, per_class=40, seed=5)
    for name in ("circle", "square"):
        assert len(os.listdir(tmp_path / name)) == 40
    fresh = tmp_path / "fresh"
    generate_sample_data(str(fresh), classes=2, per_class=40, seed=5)
    assert _files(str(fresh)) == {
        name: data for name, data in _files(str(tmp_path)).items() if not name.startswith("fresh")
    }


# ----------------------------------------------------------------------------------------- formats, modes, sizes


def test_files_decode_and_their_format_matches_the_extension(small_set):
    root, _ = small_set
    extensions = set()
    for path in _image_paths(root):
        extension = os.path.splitext(path)[1]
        extensions.add(extension)
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(path) as image:
            assert image.format == {".jpg": "JPEG", ".png": "PNG"}[extension], path
            image.load()
            assert "exif" not in image.info, path
        assert b"tIME" not in data and b"tEXt" not in data and b"Exif" not in data, path
    assert extensions == {".jpg", ".png"}


def test_modes_and_sizes_vary(small_set):
    root, _ = small_set
    modes, sizes = {}, []
    for path in _image_paths(root):
        with Image.open(path) as image:
            modes[image.mode] = modes.get(image.mode, 0) + 1
            sizes.append(image.size)
            if image.mode == "RGBA":
                assert image.format == "PNG"
                alpha = np.asarray(image)[..., 3]
                assert alpha.max() == 255 and alpha.min() < 255  # translucent background, opaque shape
    assert set(modes) == {"RGB", "L", "RGBA"}
    assert modes["L"] >= 5 and modes["RGBA"] >= 5 and modes["RGB"] >= 120, modes
    widths, heights = zip(*sizes, strict=True)
    assert min(widths + heights) >= 64 and max(widths + heights) <= 220
    assert max(widths) - min(widths) >= 100 and max(heights) - min(heights) >= 100
    assert len(set(sizes)) >= 100
    non_square = sum(w != h for w, h in sizes)
    assert 0.5 * len(sizes) <= non_square < len(sizes)
    assert max(max(w, h) / min(w, h) for w, h in sizes) > 1.3


# ------------------------------------------------------------------------------- shape, not colour, is the class


def _nearest_centroid_accuracy(features, labels):
    """Leave-one-out accuracy of a nearest-class-mean classifier."""
    classes = sorted(set(labels.tolist()))
    correct = 0
    for i in range(len(features)):
        others = np.arange(len(features)) != i
        centroids = np.array([features[others & (labels == k)].mean(axis=0) for k in classes])
        correct += int(np.argmin(((centroids - features[i]) ** 2).sum(axis=1)) == labels[i])
    return correct / len(features)


def _max_class_mean_difference(features, labels):
    means = np.array([features[labels == k].mean(axis=0) for k in sorted(set(labels.tolist()))])
    return float(np.abs(means[:, None, :] - means[None, :, :]).max())


# Thresholds for 4 classes x 100 images (chance accuracy 0.25). Per image, the mean RGB varies with a standard
# deviation of about 57 per channel, so class means of 100 images wander by about 6 and differ by up to about 25
# with no colour signal at all.
MAX_CLASS_MEAN_DIFFERENCE = 30.0
MAX_COLOUR_ACCURACY = 0.35


def test_mean_colour_does_not_identify_the_class(colour_set):
    features, labels = [], []
    for label, name in enumerate(SHAPE_NAMES[:4]):
        folder = os.path.join(colour_set, name)
        for file_name in sorted(os.listdir(folder)):
            with Image.open(os.path.join(folder, file_name)) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
            features.append(pixels.reshape(-1, 3).mean(axis=0))
            labels.append(label)
    features, labels = np.array(features), np.array(labels)

    assert _max_class_mean_difference(features, labels) < MAX_CLASS_MEAN_DIFFERENCE
    assert _nearest_centroid_accuracy(features, labels) < MAX_COLOUR_ACCURACY

    # Control: had each class a colour of its own covering 15 % of the image (less than a typical shape covers),
    # both checks would fail.
    class_colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.float64)
    tinted = 0.85 * features + 0.15 * class_colours[labels]
    assert _max_class_mean_difference(tinted, labels) > MAX_CLASS_MEAN_DIFFERENCE
    assert _nearest_centroid_accuracy(tinted, labels) > MAX_COLOUR_ACCURACY


def test_shape_colour_does_not_identify_the_class():
    features, labels = [], []
    for label, name in enumerate(SHAPE_NAMES[:4]):
        for index in range(100):
            sample = render_sample(name, np.random.default_rng([0, label, index]))
            pixels = np.asarray(sample.image.convert("RGB"), dtype=np.float64)
            features.append(pixels[sample.mask > 0.9].mean(axis=0))
            labels.append(label)
    features, labels = np.array(features), np.array(labels)
    assert _nearest_centroid_accuracy(features, labels) < MAX_COLOUR_ACCURACY


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_only_the_shape_differs_between_classes(seed):
    """Equal generators give every kind the same size, colours, background, pose and noise; the masks differ."""
    samples = {name: render_sample(name, np.random.default_rng(seed)) for name in SHAPE_NAMES}
    first = samples[SHAPE_NAMES[0]]
    assert {s.image.size for s in samples.values()} == {first.image.size}
    assert {s.image.mode for s in samples.values()} == {first.image.mode}
    assert {s.fmt for s in samples.values()} == {first.fmt}

    # Away from every shape (allowing for blur), the pixels are identical.
    union = np.maximum.reduce([s.mask for s in samples.values()])
    near_a_shape = Image.fromarray((union > 0).astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(9))
    away = np.asarray(near_a_shape) == 0
    assert away.mean() > 0.1
    reference = np.asarray(first.image)
    for name, sample in samples.items():
        assert np.array_equal(np.asarray(sample.image)[away], reference[away]), name

    # Each mask covers a real shape and no two kinds' masks look alike. The closest pair is circle / square at the
    # same pose, whose overlap (intersection over union) stays below about 0.78.
    for name, sample in samples.items():
        assert 0.02 < (sample.mask > 0.5).mean() < 0.7, name
    names = list(SHAPE_NAMES)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            mask_a, mask_b = samples[a].mask > 0.5, samples[b].mask > 0.5
            iou = (mask_a & mask_b).sum() / (mask_a | mask_b).sum()
            assert iou < 0.85, (a, b, iou)

"""The feature caches of the cached training modes: the frozen base's activations, computed once, read per batch.

While a part of the base is frozen and runs in inference mode, its output for an image never changes, so
trainer/fine_tune.py trains on these caches instead of running that part every epoch: the pooled base output
(POOLED, phase 1) and the activation at the cut below the unfrozen layers (PREFIX, phase 2); the sub-models that
produce and consume them are in trainer/sub_models.py.

Augmentation: random augmentation would change the cached activations every epoch, so a fixed set of versions
of each training image is cached instead (`cache_variants`: the image, its horizontal flip, then draws of the
model's own augmentation layers: flip + rotation, plus zoom-in crops, brightness and contrast with
`augmentation=strong`), and every epoch trains each example on one version drawn at random
(`CachedBatches`). On cats-vs-dogs (160 px, 3 seeds each) 4 versions instead of 2 lowered the best eval loss a
little but not clearly the eval accuracy (about 97.5% either way), for 2x the cache and extraction time.

Memory: the caches stay in memory up to a budget (`trainer.cache_max_mb`); above it they are written to files
(`SpillBudget`, `ArrayWriter`) and read back per batch (`DiskArray`): the same batches and the same training,
with memory that no longer grows with the data set.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from trainer.model import AUGMENTATION_LAYERS
from trainer.settings import TrainerConfig
from trainer.sub_models import POOLED, PREFIX, PrefixCut, extractor

log = logging.getLogger(__name__)


def cache_variants(cfg: TrainerConfig) -> int:
    """How many versions of each training image the cached modes keep (see `FeatureCaches`)."""
    if not cfg.augment:
        return 1
    wanted = int(cfg.cache_variants)
    if cfg.rotation_factor <= 0 and cfg.augmentation != "strong":
        return min(wanted, 2)  # the image and its flip are the only versions flip augmentation can produce
    return wanted


class FeatureCaches:
    """Frozen-base activations of every training image in a few versions, and of every eval image.

    Training versions: 0 is the image, 1 its horizontal flip, 2.. random draws of the model's own augmentation
    layers (flip + rotation). `train[name]` is the list of per-version arrays, `eval[name]` one array; names:
    POOLED and PREFIX (see the module docstring). An array is a numpy array in memory or, once the caches would
    exceed their memory budget, a `DiskArray` (same rows, read from a file on demand). `train_names` /
    `eval_names`: each row's file name, when that data carried them (batches of (images, labels, file names)).
    """

    def __init__(self):
        self.train: Dict[str, List[Any]] = {}
        self.train_labels: Optional[np.ndarray] = None
        self.train_names: Optional[List[str]] = None
        self.eval: Dict[str, Any] = {}
        self.eval_labels: Optional[np.ndarray] = None
        self.eval_names: Optional[List[str]] = None

    @classmethod
    def build(
        cls,
        model: keras.Model,
        base: keras.Model,
        train_ds: tf.data.Dataset,
        eval_ds: Optional[tf.data.Dataset],
        *,
        pooled: bool,
        cut: Optional[PrefixCut],
        variants: int,
        max_bytes: int,
        spill_dir: str,
    ) -> FeatureCaches:
        """One pass of the frozen base over the data, caching POOLED if `pooled` and PREFIX if there is a `cut`
        (neither: empty caches, no pass). At most `max_bytes` stay in memory: when the next chunk would go over,
        every cache moves to files in `spill_dir` and the rest is written there."""
        caches = cls()
        names = [name for name, wanted in ((POOLED, pooled), (PREFIX, cut is not None)) if wanted]
        if not names:
            return caches
        run = extractor(model, base, names, cut)
        budget = SpillBudget(max_bytes, spill_dir)
        train, caches.train_labels, caches.train_names = _run_extractor(
            run, train_ds, names, variants, _augmentation_layers(model), budget, "train"
        )
        evals = None
        if eval_ds is not None:
            evals, caches.eval_labels, caches.eval_names = _run_extractor(run, eval_ds, names, 1, [], budget, "eval")
        # Joined only now: a cache joined in memory before the eval pass could not spill any more.
        caches.train = {name: [writer.finish() for writer in writers] for name, writers in train.items()}
        if evals is not None:
            caches.eval = {name: writers[0].finish() for name, writers in evals.items()}
        return caches

    def _arrays(self):
        for name, arrays in self.train.items():
            yield f"train_{name}", arrays
        for name, array in self.eval.items():
            yield f"eval_{name}", [array]

    def nbytes(self) -> Dict[str, int]:
        """Bytes per cache ("train_pooled", "eval_prefix", ...) and in all ("total"), in memory or on disk."""
        sizes = {key: int(sum(a.nbytes for a in arrays)) for key, arrays in self._arrays()}
        sizes["total"] = sum(sizes.values())
        return sizes

    def on_disk_bytes(self) -> int:
        return int(sum(a.nbytes for _, arrays in self._arrays() for a in arrays if isinstance(a, DiskArray)))

    def close(self) -> None:
        for _, arrays in self._arrays():
            for array in arrays:
                if isinstance(array, DiskArray):
                    array.close()

    def feature_shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self.train[name][0].shape[1:])

    def plain_pooled(self) -> Optional[Tuple[np.ndarray, np.ndarray, List[str]]]:
        """(float32 [n, d] pooled features of the un-augmented training images, labels, file names), in the
        training data's order; None unless POOLED is cached and the training data carried file names."""
        if POOLED not in self.train or self.train_names is None:
            return None
        plain = self.train[POOLED][0]  # version 0: the image itself
        features = np.asarray(plain[0 : len(plain)], dtype=np.float32)  # a DiskArray reads its rows here
        return features, self.train_labels.astype(np.int64), list(self.train_names)

    def batches(self, name: str, cfg: TrainerConfig) -> CachedBatches:
        """Shuffled training batches of cache `name`, one cached version per example and epoch."""
        return CachedBatches(self.train[name], self.train_labels, cfg.batch_size, cfg.seed)

    def eval_data(self, name: str, cfg: TrainerConfig):
        """(features, labels) in memory; batches read in order when the eval cache is on disk; None: no eval."""
        if name not in self.eval:
            return None
        if isinstance(self.eval[name], DiskArray):
            return _OrderedBatches(self.eval[name], self.eval_labels, cfg.batch_size)
        return self.eval[name], self.eval_labels


class SpillBudget:
    """The memory budget of the feature caches being written; over it, all of them move to files."""

    def __init__(self, max_bytes: int, directory: str):
        self.max_bytes, self.directory = int(max_bytes), directory
        self.in_memory = 0
        self.spilling = False
        self.writers: List[ArrayWriter] = []

    def writer(self, tag: str) -> ArrayWriter:
        writer = ArrayWriter(self, os.path.join(self.directory, f"{tag}.bin"))
        self.writers.append(writer)
        if self.spilling:
            writer.spill()
        return writer

    def reserve(self, nbytes: int) -> None:
        if self.spilling:
            return
        if self.in_memory + nbytes <= self.max_bytes:
            self.in_memory += nbytes
            return
        log.warning(
            "the feature caches go over trainer.cache_max_mb=%d; writing them to %s",
            self.max_bytes // 2**20,
            self.directory,
        )
        self.spilling = True
        for writer in self.writers:
            writer.spill()
        self.in_memory = 0


class ArrayWriter:
    """Rows of one cache, appended chunk by chunk: kept in memory, or (after `spill`) appended to a raw file."""

    def __init__(self, budget: SpillBudget, path: str):
        self._budget, self.path = budget, path
        self._chunks: List[np.ndarray] = []
        self._file = None
        self._rows = 0
        self._row_shape: Tuple[int, ...] = ()
        self._dtype = np.dtype("float32")

    def append(self, chunk: np.ndarray) -> None:
        self._rows += len(chunk)
        self._row_shape, self._dtype = tuple(chunk.shape[1:]), chunk.dtype
        self._budget.reserve(chunk.nbytes)  # may spill this writer too
        if self._file is not None:
            np.ascontiguousarray(chunk).tofile(self._file)
        else:
            self._chunks.append(chunk)

    def spill(self) -> None:
        if self._file is None:
            self._file = open(self.path, "wb")
            for chunk in self._chunks:
                np.ascontiguousarray(chunk).tofile(self._file)
            self._chunks = []

    def finish(self):
        """The rows written: a numpy array, or a `DiskArray` over the file."""
        if self._file is None:
            array = np.concatenate(self._chunks)
            self._chunks = []
            return array
        self._file.close()
        return DiskArray(self.path, self._rows, self._row_shape, self._dtype)


class DiskArray:
    """A C-order array of `rows` rows stored raw in a file, rows read on demand with `os.pread`.

    Not memory-mapped on purpose: pages of a mapping that were read count towards the process's resident
    memory; rows read with pread live only in the OS page cache, which the kernel reclaims as it needs to."""

    def __init__(self, path: str, rows: int, row_shape: Tuple[int, ...], dtype):
        self.path = path
        self.shape = (int(rows),) + tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self._row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd: Optional[int] = os.open(path, os.O_RDONLY)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self._row_bytes

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.shape[0])
            if step == 1:
                count = max(stop - start, 0)
                data = os.pread(self._fd, count * self._row_bytes, start * self._row_bytes)
                return np.frombuffer(data, self.dtype).reshape((count,) + self.shape[1:]).copy()
            index = np.arange(start, stop, step)
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows),) + self.shape[1:], self.dtype)
        flat = out.reshape(len(rows), self._row_bytes // self.dtype.itemsize)
        for i, row in enumerate(rows):
            data = os.pread(self._fd, self._row_bytes, int(row) * self._row_bytes)
            flat[i] = np.frombuffer(data, self.dtype)
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()


def _augmentation_layers(model: keras.Model) -> List[keras.layers.Layer]:
    names = {layer.name for layer in model.layers}
    return [model.get_layer(name) for name in AUGMENTATION_LAYERS if name in names]


def _run_extractor(
    run: keras.Model,
    dataset: tf.data.Dataset,
    names: List[str],
    variants: int,
    augment: List[keras.layers.Layer],
    budget: SpillBudget,
    split: str,
):
    """Per name, a list of `variants` writers (one per version of the images, see `FeatureCaches`), labels, and
    file names when the batches carry them ((images, labels, file names); else None)."""

    @tf.function(reduce_retracing=True)
    def extract(images):
        versions = [images, tf.reverse(images, axis=[2])][:variants]  # axis 2 is the width
        for _ in range(variants - len(versions)):
            augmented = images
            for layer in augment:
                augmented = layer(augmented, training=True)
            versions.append(augmented)
        # One base call per version: on 2 CPU cores a batch of 32 runs faster than one of 128.
        return [run(version, training=False) for version in versions]

    writers = {name: [budget.writer(f"{split}_{name}_{v}") for v in range(variants)] for name in names}
    labels, file_names = [], []
    for batch in dataset:
        images, batch_labels = batch[0], batch[1]
        for version, values in enumerate(extract(images)):
            for name in names:
                writers[name][version].append(values[name].numpy())
        labels.append(np.asarray(batch_labels).reshape(-1))
        if len(batch) > 2:
            file_names.extend(n.decode("utf-8", "replace") for n in np.asarray(batch[2]).reshape(-1))
    return writers, np.concatenate(labels).astype(np.int32), (file_names or None)


class CachedBatches(keras.utils.PyDataset):
    """Shuffled batches of cached activations. For every example and epoch one of its cached versions is drawn
    at random: the cached counterpart of the random augmentation layers."""

    def __init__(self, versions: List[np.ndarray], labels: np.ndarray, batch_size: int, seed: int):
        super().__init__()
        self._versions, self._labels = versions, labels
        self._batch_size = int(batch_size)
        self._rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self._labels) / self._batch_size)

    def __getitem__(self, index: int):
        rows = self._order[index * self._batch_size : (index + 1) * self._batch_size]
        chosen = self._version[rows]
        x = np.empty((len(rows),) + self._versions[0].shape[1:], dtype=self._versions[0].dtype)
        for version, array in enumerate(self._versions):
            picked = chosen == version
            x[picked] = array[rows[picked]]
        return x, self._labels[rows]

    def on_epoch_end(self) -> None:
        n = len(self._labels)
        self._order = self._rng.permutation(n)
        self._version = self._rng.integers(0, len(self._versions), n)


class _OrderedBatches(keras.utils.PyDataset):
    """Batches of an on-disk eval cache, in order."""

    def __init__(self, features: DiskArray, labels: np.ndarray, batch_size: int):
        super().__init__()
        self._features, self._labels, self._batch_size = features, labels, int(batch_size)

    def __len__(self) -> int:
        return math.ceil(len(self._labels) / self._batch_size)

    def __getitem__(self, index: int):
        rows = slice(index * self._batch_size, (index + 1) * self._batch_size)
        return self._features[rows], self._labels[rows]

"""What the change check compares for `trainer.weights`: a weights file's content, not the path that names it.

The same file reached by another path (a symlinked folder, a copy with the same bytes) must not retrain, and other
bytes at the same path must. So a local weights file is compared as `sha256:<hex>` of its bytes
(`weights_identity`); "imagenet", "none", "" (resolved later) and URIs (gs://, s3://: not read here) stay the
strings they are.

Hashing a base's weights (10-100 MB) on every scheduled run is cheap but not free, so the digest is cached by
(real path, size, mtime_ns) in one small JSON file per user: `$XDG_CACHE_HOME/ftune/weights_sha256.json`
(default `~/.cache/ftune/`). Per user rather than beside a pipeline's metadata because the change check's executor
knows the serving folder (which TF Serving reads) but not the pipeline root, and one weights file
(`FTUNE_WEIGHTS`) usually serves every pipeline of a user; the key is the file's real path, so pipelines share
entries safely. A file rewritten in place gets a new size or mtime, hence a new entry (the old one is replaced).
The cache is only a shortcut: unreadable, malformed or unwritable (a read-only home in a pod) means "hash the
file", never an error.

No TensorFlow: the CLI's process uses it before the pipeline starts (pipeline/local_runner.change_key).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from typing import Dict, Optional

from trainer.settings import IMAGENET, NO_WEIGHTS

DIGEST_PREFIX = "sha256:"
CACHE_FILE = "weights_sha256.json"
_CHUNK = 1 << 20


def default_cache_path() -> str:
    """`$XDG_CACHE_HOME/ftune/weights_sha256.json`, else `~/.cache/ftune/weights_sha256.json`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ftune", CACHE_FILE)


def is_digest(value: str) -> bool:
    return isinstance(value, str) and value.startswith(DIGEST_PREFIX)


def is_weights_file(weights: str) -> bool:
    """A local file path: not a keyword, not a URI, not empty (resolved later), not already a digest."""
    if not isinstance(weights, str) or not weights.strip() or "://" in weights or is_digest(weights):
        return False
    return weights.strip().lower() not in (IMAGENET, NO_WEIGHTS)


def weights_identity(weights: str, cache_path: Optional[str] = None) -> str:
    """`sha256:<hex>` of a local weights file's bytes; any other value (a keyword, a URI, a digest, a path that
    is not a file now) unchanged."""
    if not is_weights_file(weights) or not os.path.isfile(weights):
        return weights
    return DIGEST_PREFIX + file_sha256(weights, cache_path)


def file_sha256(path: str, cache_path: Optional[str] = None) -> str:
    """The file's sha256 (hex), from the cache while its real path, size and mtime_ns are the ones hashed."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    cache_path = cache_path or default_cache_path()
    cache = _read_cache(cache_path)
    entry = cache.get(real) or {}
    if entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns and entry.get("sha256"):
        return entry["sha256"]
    digest = _hash_file(real)
    cache[real] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    _write_cache(cache_path, cache)
    return digest


def _hash_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_cache(path: str) -> Dict[str, dict]:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def _write_cache(path: str, cache: Dict[str, dict]) -> None:
    """Written whole to a temporary file, then renamed: a concurrent reader sees the old or the new file."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, staged = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".weights_sha256.")
    except OSError:
        return  # a shortcut only: the next run hashes the file again
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f, indent=1, sort_keys=True)
        os.replace(staged, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(staged)

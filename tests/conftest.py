"""Shared test fixtures. Tests run the real components on small generated data; nothing touches the network."""

import hashlib
import os
import sys
from typing import Iterable, List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_WEIGHTS = os.path.join(REPO, "..", "shared", "weights", "mobilenet_v2_1.0_224_no_top.h5")
# In-process Beam keeps small test pipelines fast (no worker start-up); one test covers multi-processing.
IN_MEMORY_BEAM = ["--runner=FnApiRunner", "--direct_running_mode=in_memory"]


def pretrained_weights_path() -> str:
    """The MobileNetV2 ImageNet weights file the tests need (FTUNE_WEIGHTS, else ../shared/weights/...).

    A frozen base with random weights gives chance-level features, so tests that check learning need real
    weights; a missing file is a failure with instructions, never a skip.
    """
    path = os.environ.get("FTUNE_WEIGHTS") or SHARED_WEIGHTS
    if not os.path.isfile(path):
        pytest.fail(
            f"MobileNetV2 weights file not found at {path}: set FTUNE_WEIGHTS to a local copy of "
            "mobilenet_v2_1.0_224_no_top.h5"
        )
    return os.path.abspath(path)


def ftune_run_command(root, settings: Iterable[str] = (), *extra: str) -> List[str]:
    """`python -m pipeline.cli run` on pipeline root `root` with the shared weights and `--set` for each setting."""
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--pipeline-root", str(root), "--weights"]
    cmd.append(pretrained_weights_path())
    for item in settings:
        cmd += ["--set", item]
    return cmd + list(extra)


def tree_digest(path) -> str:
    """Hash of every file's relative path and bytes below path: equal digests mean a byte-identical tree."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(path)):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            digest.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()

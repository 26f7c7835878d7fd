"""Shared test fixtures. Tests run the real components on small generated data; nothing touches the network."""

import os

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

"""A run's own temporary folder, removed when the run ends.

What the libraries put into the system's temporary folder during a run goes into one folder of the run's instead,
removed when it ends, whatever the outcome. The reason: for every Beam-based component, TFX builds a source package
of itself there (`tmp*/build/tfx`, `tfx_ephemeral-<version>.tar.gz`, about 49 MB, for Beam runners that ship code
to remote workers; the in-process runner never reads it) and never removes it: about 200 MB per `ftune run` and per
Kubeflow run, which filled a 250 GB disk here after some 1,400 runs. TensorFlow's autograph files land there too.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from typing import Iterator


@contextlib.contextmanager
def run_scratch(prefix: str = "ftune-run-") -> Iterator[str]:
    """Points `tempfile` (what TFX, Beam and TensorFlow's Python code create temporary files with) at a new folder
    inside the system's temporary folder for the duration, then removes that folder and restores the setting."""
    folder = tempfile.mkdtemp(prefix=prefix)
    previous = tempfile.tempdir
    tempfile.tempdir = folder
    try:
        yield folder
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(folder, ignore_errors=True)

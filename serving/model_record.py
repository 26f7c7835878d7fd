"""The record every pushed version carries: `<version>/assets.extra/model_record.json`.

It says where the version came from (input folders and their fingerprint, images per class, settings, metrics,
the baseline it was compared with, code version, pipeline run, times), so a version can be listed, compared,
rolled back to, or recognised as "already trained on exactly this data" without MLMD.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from tfx.dsl.io import fileio

from serving.signatures import ASSETS_EXTRA

RECORD_FILE = "model_record.json"


def record_path(version_dir: str) -> str:
    return os.path.join(version_dir, ASSETS_EXTRA, RECORD_FILE)


def read_record(version_dir: str) -> Optional[Dict[str, Any]]:
    """The version's record, or None when it has none (pushed by an older ftune, or by hand)."""
    path = record_path(version_dir)
    if not fileio.exists(path):
        return None
    with fileio.open(path, "r") as f:
        return json.load(f)


def write_record(version_dir: str, record: Dict[str, Any]) -> str:
    path = record_path(version_dir)
    fileio.makedirs(os.path.dirname(path))
    with fileio.open(path, "w") as f:
        f.write(json.dumps(record, indent=2, sort_keys=True))
    return path

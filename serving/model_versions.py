"""TF Serving's model folder, `<serving base>/<model name>/<version>/`: list, publish and prune versions.

TF Serving polls the model base path and serves the highest integer-named version that holds a
`saved_model.pb`. Everything the product does to that folder goes through this module: the served-model
baseline reads it, the Pusher publishes into it, and the CLI lists it.

Publishing is atomic on local/PVC paths: the model is copied into a hidden staging folder beside the versions
(TF Serving ignores names that are not integers) and then renamed to its version number; a rename within one
filesystem is atomic, so a poller sees either no new version or a complete one. Versions are 1, 2, 3, ...
(highest + 1), which TF Serving orders numerically.

Object stores (gs://, s3://) have no atomic rename and no folders: a version is the set of objects under
`<n>/`, and TF Serving's file-system source picks the highest integer-named prefix at each poll, whatever it holds.
What it can load from there is decided by its SavedModel loader, which needs `saved_model.pb`: a push copies
every other file first and `saved_model.pb` last, so "saved_model.pb exists" means "every file is there" (S3 and
GCS list and read an object as soon as its write returned). A load attempted before that fails and is retried
(TF Serving's `--max_num_load_retries`, default 5, a minute apart) while the previous version keeps serving. Two
pushes at once (a scheduled run and a manual one) must not write into one folder: each claims its number first by
a conditional create of `<serving>/.claims/<n>` (S3: PUT with `If-None-Match: *`; GCS: `ifGenerationMatch=0`),
which exactly one of them wins; the loser takes the next number. Claims stay, so a number a killed push claimed
is never reused either.

Local folders (and PVC mounts) are listed and copied with Python's own file functions, so that `ftune versions`
and `ftune rollback` start without TensorFlow; a URI with a scheme (gs://, s3://) goes through TFX's fileio, which
is imported only then.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

from serving import sidecars

STAGING_PREFIX = ".staging-"
NO_SERVED_VERSION = -1
# Object stores: `<serving_model_dir>/.claims/<version>`, created once by the push that owns the number.
CLAIMS_DIR = ".claims"


def _is_uri(path: str) -> bool:
    return "://" in path


def _fileio():
    """TFX's filesystem layer, for gs:// and s3:// (and the model artifacts a push copies): loads TensorFlow."""
    from tfx.dsl.io import fileio

    return fileio


def serving_folder_exists(serving_model_dir: str) -> bool:
    if _is_uri(serving_model_dir):
        return _fileio().isdir(serving_model_dir)
    return os.path.isdir(serving_model_dir)


def served_versions(serving_model_dir: str) -> List[int]:
    """Complete versions in TF Serving's layout: integer-named folders holding a saved_model.pb, ascending.

    Staging folders of an in-progress push have non-numeric names (TF Serving ignores them, and so do we)."""
    # The serving directory is a mounted volume or a gs:// / s3:// URI that TF Serving reads natively.
    if not serving_folder_exists(serving_model_dir):
        return []
    if _is_uri(serving_model_dir):
        fileio = _fileio()
        names, exists = fileio.listdir(serving_model_dir), fileio.exists
    else:
        names, exists = os.listdir(serving_model_dir), os.path.exists
    versions = []
    for name in names:
        name = name.rstrip("/")
        if name.isdigit() and exists(os.path.join(serving_model_dir, name, "saved_model.pb")):
            versions.append(int(name))
    return sorted(versions)


def latest_served(serving_model_dir: str) -> Tuple[int, Optional[str]]:
    versions = served_versions(serving_model_dir)
    if not versions:
        return NO_SERVED_VERSION, None
    return versions[-1], os.path.join(serving_model_dir, str(versions[-1]))


def serving_state(serving_model_dir: str) -> str:
    """A string that changes whenever the served versions change.

    It is an execution property, so the component's cached result is reused only while the serving directory is
    unchanged: a model pushed by the previous run becomes the next run's baseline."""
    fileio = _fileio()
    parts = []
    for version in served_versions(serving_model_dir):
        stat = fileio.stat(os.path.join(serving_model_dir, str(version), "saved_model.pb"))
        parts.append(f"{version}:{int(stat.mtime_nsec // 10**9)}")
    return ",".join(parts) or "none"


def push(model_path: str, serving_model_dir: str, record: Optional[Dict[str, Any]] = None) -> int:
    """Pushes model_path as the next version of serving_model_dir; returns the version.

    `record` (serving/model_record.py) is written into the version, with its "version" key set, before the
    version becomes visible."""
    if "://" in serving_model_dir:
        return push_to_object_store(model_path, serving_model_dir, record)
    return push_atomically(model_path, serving_model_dir, record)


def push_to_object_store(model_path: str, serving_model_dir: str, record: Optional[Dict[str, Any]] = None) -> int:
    """gs:// or s3://: claim the next number (a conditional create only one push wins), then copy every file but
    saved_model.pb, the record, and saved_model.pb last: TF Serving can load the version only once that file
    exists, and by then every other file does."""
    from tfx.utils import io_utils

    _warn_partial(serving_model_dir)
    version = claim_next_version(serving_model_dir)
    target = os.path.join(serving_model_dir, str(version))
    io_utils.copy_dir(model_path, target, deny_regex_patterns=[r"saved_model\.pb$"])
    if record is not None:
        sidecars.write_model_record(target, {**record, "version": version})
    io_utils.copy_file(os.path.join(model_path, "saved_model.pb"), os.path.join(target, "saved_model.pb"))
    return version


def claim_next_version(serving_model_dir: str) -> int:
    """The number above every integer-named folder and every claim, claimed for this push (object stores)."""
    for _ in range(_MAX_PUSH_ATTEMPTS):
        version = max(numeric_names(serving_model_dir) + claimed_versions(serving_model_dir) + [0]) + 1
        if claim_version(serving_model_dir, version):
            return version
        logging.info(
            "Pusher: version %d of %s was claimed by another push; trying the next", version, serving_model_dir
        )
    raise RuntimeError(f"could not claim a version number in {serving_model_dir} ({_MAX_PUSH_ATTEMPTS} tries)")


def claimed_versions(serving_model_dir: str) -> List[int]:
    fileio = _fileio()
    claims = os.path.join(serving_model_dir, CLAIMS_DIR)
    if not fileio.isdir(claims):
        return []
    return sorted(int(n.rstrip("/")) for n in fileio.listdir(claims) if n.rstrip("/").isdigit())


def claim_version(serving_model_dir: str, version: int) -> bool:
    """Creates `<serving_model_dir>/.claims/<version>` only if it does not exist; False when another push did.

    The object store decides, so the claim holds across machines: S3 (and MinIO, moto) refuse a PUT with
    `If-None-Match: *` onto an existing key (HTTP 412); GCS refuses `ifGenerationMatch=0` the same way."""
    scheme, bucket, key = _split(os.path.join(serving_model_dir, CLAIMS_DIR, str(version)))
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "claimed": time.time()}).encode()
    if scheme == "s3":
        import boto3
        from botocore.exceptions import ClientError

        try:
            boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412):  # 412: the key exists; 409: a concurrent conditional write is in flight
                return False
            raise
        return True
    if scheme == "gs":
        from google.api_core.exceptions import PreconditionFailed
        from google.cloud import storage

        try:
            storage.Client().bucket(bucket).blob(key).upload_from_string(body, if_generation_match=0)
        except PreconditionFailed:
            return False
        return True
    raise ValueError(f"no conditional create for {serving_model_dir}: only gs:// and s3:// serving folders use claims")


def _split(uri: str) -> Tuple[str, str, str]:
    scheme, rest = uri.split("://", 1)
    bucket, _, key = rest.partition("/")
    return scheme, bucket, key


def numeric_names(serving_model_dir: str) -> List[int]:
    """Every integer-named entry, complete or not: a new version must go above all of them, since TF Serving
    would load a partial folder the moment its copy completes (and a rename onto it fails)."""
    if not serving_folder_exists(serving_model_dir):
        return []
    names = _fileio().listdir(serving_model_dir) if _is_uri(serving_model_dir) else os.listdir(serving_model_dir)
    return sorted(int(name.rstrip("/")) for name in names if name.rstrip("/").isdigit())


def partial_versions(serving_model_dir: str) -> List[int]:
    """Integer-named folders without a saved_model.pb: a manual copy that died, a half-synced volume."""
    complete = set(served_versions(serving_model_dir))
    return [v for v in numeric_names(serving_model_dir) if v not in complete]


# A staging folder is `.staging-<host>-<pid>-<random>`: a later push removes the ones whose process is gone.
STALE_STAGING_AGE_S = 24 * 3600
_MAX_PUSH_ATTEMPTS = 100


def _staging_name() -> str:
    return f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"


def clean_stale_staging(serving_model_dir: str, now: Optional[float] = None) -> List[str]:
    """Removes staging folders left by a killed push: this host's whose process no longer runs, and any older
    than a day (another host's, or an old-style name). Returns the removed names."""
    if not os.path.isdir(serving_model_dir):
        return []
    now = time.time() if now is None else now
    host = socket.gethostname()
    removed = []
    for name in os.listdir(serving_model_dir):
        if not name.startswith(STAGING_PREFIX):
            continue
        path = os.path.join(serving_model_dir, name)
        parts = name[len(STAGING_PREFIX) :].rsplit("-", 2)
        dead = len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not _process_alive(int(parts[1]))
        try:
            old = now - os.stat(path).st_mtime > STALE_STAGING_AGE_S
        except OSError:
            continue
        if dead or old:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    if removed:
        logging.warning("Pusher: removed staging folders left by an interrupted push: %s", sorted(removed))
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def push_atomically(model_path: str, serving_model_dir: str, record: Optional[Dict[str, Any]] = None) -> int:
    """Copies model_path to serving_model_dir/<next version> via a staged rename; returns the version.

    The next version is above the highest integer-named folder, complete or not (a partial one is reported, not
    touched). A failed copy (disk full, I/O error) removes its staging folder: no partial version appears.
    `record` (serving/model_record.py) is written inside the staged copy: the version appears with it or not at all."""
    os.makedirs(serving_model_dir, exist_ok=True)
    clean_stale_staging(serving_model_dir)
    _warn_partial(serving_model_dir)
    staging = os.path.join(serving_model_dir, _staging_name())
    try:
        _copy_dir(model_path, staging)
        for _ in range(_MAX_PUSH_ATTEMPTS):
            version = (numeric_names(serving_model_dir) or [0])[-1] + 1
            target = os.path.join(serving_model_dir, str(version))
            if record is not None:
                # Inside the staged copy, so the version appears with its record or not at all.
                sidecars.write_model_record(staging, {**record, "version": version})
            _fsync_tree(staging)
            try:
                # os.rename onto an existing non-empty folder fails, so a concurrent push cannot be overwritten.
                os.rename(staging, target)
                return version
            except OSError:
                if not os.path.exists(target):
                    raise
        raise RuntimeError(f"could not find a free version number in {serving_model_dir} ({_MAX_PUSH_ATTEMPTS} tries)")
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _warn_partial(serving_model_dir: str) -> None:
    partial = partial_versions(serving_model_dir)
    if partial:
        logging.warning(
            "Pusher: %s holds version folder(s) %s without a saved_model.pb (an interrupted copy?); TF Serving "
            "cannot load them, the new version goes above them",
            serving_model_dir,
            partial,
        )


def _copy_dir(source: str, target: str) -> None:
    """Copies the files below `source` to the new folder `target` (contents only, as TFX's io_utils.copy_dir)."""
    if _is_uri(source):
        # The model is an artifact (gs:// on Kubeflow): read it through TFX's filesystem layer.
        from tfx.utils import io_utils

        io_utils.copy_dir(source, target)
    else:
        shutil.copytree(source, target, copy_function=shutil.copyfile)


def same_model_served(model_path: str, serving_model_dir: str) -> int:
    """The served version holding this very SavedModel (same `fingerprint.pb`: graph and weights hashes), or 0.

    Re-running an unchanged pipeline re-evaluates against the served copy of the same model and blesses it;
    pushing it again would only add a duplicate version."""
    fileio = _fileio()
    candidate = os.path.join(model_path, "fingerprint.pb")
    if not fileio.exists(candidate):
        return 0
    with fileio.open(candidate, "rb") as f:
        fingerprint = f.read()
    for version in reversed(served_versions(serving_model_dir)):
        served = os.path.join(serving_model_dir, str(version), "fingerprint.pb")
        if fileio.exists(served):
            with fileio.open(served, "rb") as f:
                if f.read() == fingerprint:
                    return version
    return 0


def _fsync_tree(root: str) -> None:
    """Flush the copied files before the rename publishes them (a crash must not leave a torn version)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())


def prune_versions(serving_model_dir: str, keep: int) -> List[int]:
    """Deletes all but the newest `keep` versions (0 keeps all); returns the deleted ones."""
    versions = served_versions(serving_model_dir)
    if keep <= 0 or len(versions) <= keep:
        return []
    doomed = versions[:-keep]
    fileio = _fileio()
    for version in doomed:
        fileio.rmtree(os.path.join(serving_model_dir, str(version)))
    return doomed


def republish(serving_model_dir: str, version: int, record: Optional[Dict[str, Any]] = None) -> int:
    """Publishes a copy of an existing version as the next (highest) version, the same way a push does, so TF
    Serving serves it again; nothing is deleted. Returns the new version."""
    source = os.path.join(serving_model_dir, str(version))
    if version not in served_versions(serving_model_dir):
        raise FileNotFoundError(f"no complete version {version} under {serving_model_dir}")
    return push(source, serving_model_dir, record)


def refusal_applies(attempt: Optional[Dict[str, Any]], served_version: int) -> bool:
    """Whether a refused attempt (sidecars.read_refused_attempt) still holds: only while the version it was compared
    with is the one served now. A push or a rollback since changes the baseline, so the batch deserves another try.
    The change check (same data and settings too) and `ftune versions` both ask this."""
    return attempt is not None and attempt.get("served_version", NO_SERVED_VERSION) == served_version

"""Buckets as the pipeline's storage: s3:// (AWS S3, MinIO: Kubeflow's own artifact store) and gs:// (GCS).

What each layer needs, and where this module gives it:

* TensorFlow (tf.io.gfile, tf.data, SavedModel, TFX's fileio) reads s3:// only once `tensorflow_io` is imported
  (the `s3` extra: `pip install 'ftune[s3]'`); gs:// is built into TensorFlow. `register_filesystems(paths)` does
  the import where a path needs it: in `ftune` (pipeline/cli.py) and in every Kubeflow pod (pipeline/kfp_executor.py).
* Beam (ExampleGen's, Transform's and the Evaluator's reads and writes) opens s3:// with boto3 and gs:// with
  google-cloud-storage; both read the standard environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
  AWS_ENDPOINT_URL, AWS_REGION; GOOGLE_APPLICATION_CREDENTIALS). Beam's worker processes (Kubeflow pods run four)
  import `tensorflow_io` through `--beam_plugins` (`beam_plugin_args`), since TFT and TFMA also write with tf.io.
* The two S3 clients name the endpoint differently: boto3 (and Beam) read AWS_ENDPOINT_URL, TensorFlow's S3
  filesystem S3_ENDPOINT + S3_USE_HTTPS. `configure_environment()` fills whichever is missing from the other, so a
  user sets one (the MinIO address) and every layer agrees. tensorflow-io 0.37.1 needs the scheme in S3_ENDPOINT:
  given `minio-service.kubeflow:9000` (as older TFX-on-KFP guides write it) every request timed out and
  `exists` answered False after 51 s, so a bare host:port gets `http://` or `https://` from S3_USE_HTTPS.
* tensorflow-io 0.37.1 (the last release; TF 2.16) aborts at interpreter exit once its S3 client was used ("pure
  virtual method called", exit 134: tensorflow/io#2039, fixed upstream after the release). `exit_now(code)` ends
  the process with the code the command decided, after Python's own exit handlers, before the C++ teardown.

Checks before any work (`check_reachable`): a bucket that does not exist, credentials it refuses, an endpoint that
does not answer: one line naming the URI and what to do, with the exit code pipeline/outcome.py gives it. This
module imports no TensorFlow; boto3 only inside the S3 check.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import sys
import threading
import time
from typing import Dict, Iterable, Iterator, List, Optional
from urllib.parse import urlparse

from pipeline import outcome
from pipeline.configs import PipelineConfig
from pipeline.outcome import CommandError

S3 = "s3://"
GCS = "gs://"
SCHEMES = (S3, GCS)
# How long the reachability check waits for the endpoint (connect and read); how often a run checks its buckets.
CHECK_TIMEOUT_S = 10
WATCH_INTERVAL_S = 10
_S3_EXTRA_HINT = "s3:// needs TensorFlow's S3 filesystem: pip install 'ftune[s3]' (tensorflow-io), as the image does"


def is_object_store(path: Optional[str]) -> bool:
    return bool(path) and str(path).startswith(SCHEMES)


def uses_s3(paths: Iterable[Optional[str]]) -> bool:
    return any(str(p).startswith(S3) for p in paths if p)


def split_uri(uri: str):
    """("s3", "bucket", "key/prefix") of an object-store URI."""
    parsed = urlparse(uri)
    return parsed.scheme, parsed.netloc, parsed.path.lstrip("/")


# --- the environment -----------------------------------------------------------------------------------------------


def configure_environment(environ=None) -> None:
    """Makes boto3's and TensorFlow's S3 endpoint settings agree: AWS_ENDPOINT_URL (boto3, Beam) from S3_ENDPOINT +
    S3_USE_HTTPS (TensorFlow), or the other way round; a region for both. Leaves whatever the user set alone."""
    env = os.environ if environ is None else environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint and not env.get("S3_ENDPOINT"):
        env["S3_ENDPOINT"] = endpoint
        env.setdefault("S3_USE_HTTPS", "1" if urlparse(endpoint).scheme == "https" else "0")
    elif env.get("S3_ENDPOINT"):
        https = env.get("S3_USE_HTTPS", "1") not in ("0", "false", "False")
        if "://" not in env["S3_ENDPOINT"]:  # tensorflow-io 0.37.1 times out on a bare host:port
            env["S3_ENDPOINT"] = f"{'https' if https else 'http'}://{env['S3_ENDPOINT']}"
        env.setdefault("AWS_ENDPOINT_URL", env["S3_ENDPOINT"])
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        env.setdefault("AWS_REGION", region)
        env.setdefault("AWS_DEFAULT_REGION", region)
    if env.get("S3_USE_HTTPS") == "0":
        env.setdefault("S3_VERIFY_SSL", "0")


def register_filesystems(paths: Iterable[Optional[str]]) -> bool:
    """Imports tensorflow_io when a path is s3:// (TensorFlow has no S3 filesystem of its own since 2.6); returns
    whether it did. A CommandError naming the extra when it is not installed."""
    if not uses_s3(paths):
        return False
    configure_environment()
    try:
        import tensorflow_io  # noqa: F401  (registers the s3:// filesystem with TensorFlow)
    except ImportError as exc:
        raise CommandError(f"{_S3_EXTRA_HINT} ({exc})", outcome.EXIT_INVALID_SETTINGS) from None
    return True


def beam_plugin_args(paths: Iterable[Optional[str]], beam_args: List[str]) -> List[str]:
    """beam_args plus `--beam_plugins=tensorflow_io` when a path is s3://: Beam's worker processes import it, so the
    tf.io writes TFT and TFMA make inside them reach the bucket."""
    if not uses_s3(paths) or any(a.startswith("--beam_plugins") for a in beam_args):
        return list(beam_args)
    return [*beam_args, "--beam_plugins=tensorflow_io"]


# --- the check before a run, and after a failed one ------------------------------------------------------------------


def prepare(config: PipelineConfig) -> None:
    """Before a command works on `config`: each bucket its settings name answers (check_reachable), and TensorFlow
    can open s3:// (register_filesystems)."""
    for what, uri in buckets(config).items():
        check_reachable(uri, what)
    register_filesystems(config.storage_paths().values())


def buckets(config: PipelineConfig) -> Dict[str, str]:
    """{setting: URI} for the first setting naming each bucket."""
    found: Dict[str, str] = {}
    for what, path in config.storage_paths().items():
        if is_object_store(path) and split_uri(path)[:2] not in {split_uri(u)[:2] for u in found.values()}:
            found[what] = path
    return found


@contextlib.contextmanager
def bucket_guard(config: PipelineConfig) -> Iterator[None]:
    """Around a run: its buckets are watched (BucketWatch: an endpoint silent for object_store_timeout_s ends it),
    and a run that fails while one of them no longer answers (the server stopped, the credentials were revoked)
    ends as that: one line naming the URI and the exit code of check_reachable (6: try again later), instead of a
    component's traceback. Any other failure is re-raised as it is."""
    try:
        with BucketWatch(buckets(config), config.object_store_timeout_s):
            yield
    except Exception as exc:
        for what, uri in buckets(config).items():
            try:
                check_reachable(uri, what)
            except CommandError as unreachable:
                raise CommandError(
                    f"{unreachable} (the run stopped there: {type(exc).__name__}; nothing served was changed, and "
                    "the next run resumes from the steps that finished)",
                    unreachable.exit_code,
                ) from exc
        raise


def check_reachable(uri: str, what: str) -> None:
    """Raises CommandError (one line: the URI, what is wrong, what to do) when the bucket of `uri` cannot be used:
    no such bucket (exit 3), credentials refused (exit 2), endpoint not answering (exit 6). `what` names the
    setting, e.g. "pipeline_root". gs:// is left to the run (its client needs project credentials to ask)."""
    if not uri.startswith(S3):
        return
    configure_environment()
    _, bucket, _ = split_uri(uri)
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError
    except ImportError as exc:
        raise CommandError(f"{_S3_EXTRA_HINT} ({exc})", outcome.EXIT_INVALID_SETTINGS) from None
    config = Config(connect_timeout=CHECK_TIMEOUT_S, read_timeout=CHECK_TIMEOUT_S, retries={"max_attempts": 2})
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    try:
        boto3.client("s3", config=config).head_bucket(Bucket=bucket)
    except NoCredentialsError:
        raise CommandError(
            f"{what} {uri}: no S3 credentials. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (MinIO: its access "
            "and secret key)",
            outcome.EXIT_INVALID_SETTINGS,
        ) from None
    except EndpointConnectionError:
        raise CommandError(
            f"{what} {uri}: the S3 endpoint {endpoint} does not answer. Check AWS_ENDPOINT_URL (or S3_ENDPOINT) and "
            "that the server is up; try again later",
            outcome.EXIT_UNAVAILABLE,
        ) from None
    except ClientError as exc:
        raise _client_error(exc, what, uri, bucket, endpoint) from None
    except BotoCoreError as exc:  # timeouts, a malformed endpoint URL
        raise CommandError(
            f"{what} {uri}: the S3 endpoint {endpoint} failed: {exc}. Try again later",
            outcome.EXIT_UNAVAILABLE,
        ) from None


def _client_error(exc, what: str, uri: str, bucket: str, endpoint: str) -> CommandError:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    code = str(exc.response.get("Error", {}).get("Code", ""))
    if status == 404 or code in ("404", "NoSuchBucket"):
        return CommandError(
            f"{what} {uri}: bucket {bucket!r} does not exist at {endpoint}. Create it (e.g. `mc mb`, `aws s3 mb`) "
            "or fix the URI",
            outcome.EXIT_UNUSABLE_INPUT,
        )
    if status in (401, 403) or code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return CommandError(
            f"{what} {uri}: {endpoint} refused the credentials (HTTP {status} {code}). Check AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, and that they may read and write the bucket",
            outcome.EXIT_INVALID_SETTINGS,
        )
    return CommandError(
        f"{what} {uri}: {endpoint} answered HTTP {status} {code}. Try again later", outcome.EXIT_UNAVAILABLE
    )


class BucketWatch:
    """While a run works on buckets, checks every WATCH_INTERVAL_S that their endpoint answers; once it has not for
    `timeout_s`, prints the one-line error (check_reachable's, exit 6 when silent) and ends the process.

    Why: with the endpoint gone, TensorFlow's S3 client (tensorflow-io) retries a refused connection for ever (seen:
    a Transform step waiting on one `makedirs` for over 10 minutes), so the run would hang instead of failing.
    Ending the process is safe where it is used: versions appear only with their last file (no partial version is
    loadable), and the next run resumes from the steps that finished."""

    def __init__(self, uris: Dict[str, str], timeout_s: float):
        self.uris, self.timeout_s = dict(uris), timeout_s
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> BucketWatch:
        if any(uri.startswith(S3) for uri in self.uris.values()):
            self._thread = threading.Thread(target=self._watch, name="bucket-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def _watch(self) -> None:
        silent_since = None
        while not self._stop.wait(WATCH_INTERVAL_S):
            try:
                for what, uri in self.uris.items():
                    check_reachable(uri, what)
                silent_since = None
            except CommandError as lost:
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since >= self.timeout_s and not self._stop.is_set():
                    print(
                        f"ftune: error: {lost} (the run stopped there after {self.timeout_s:.0f} s without it, "
                        "object_store_timeout_s; nothing served was changed, and the same command resumes from the "
                        "steps that finished)",
                        file=sys.stderr,
                        flush=True,
                    )
                    time.sleep(1)  # the console filter forwards the line
                    exit_now(lost.exit_code)


def buckets_named(args: Iterable[str]) -> Dict[str, str]:
    """{"s3://bucket": "s3://bucket"} for every s3:// bucket named anywhere in `args` (a pod's invocation JSON)."""
    found = {f"s3://{m}" for arg in args for m in re.findall(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])", arg)}
    return {uri: uri for uri in sorted(found)}


# --- the end of a process ------------------------------------------------------------------------------------------


def exit_now(code: int) -> None:
    """Ends the process with `code`: Python's exit handlers run (logging, Beam's and TFX's clean-ups), output is
    flushed, then os._exit skips the C++ static destructors where tensorflow-io's S3 client aborts (exit 134)."""
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def s3_loaded() -> bool:
    """Whether this process imported tensorflow_io (so its S3 client may abort at exit)."""
    return "tensorflow_io" in sys.modules

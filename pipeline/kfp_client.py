"""Send a compiled pipeline package (pipeline/kubeflow_v2_runner.py) to the Kubeflow Pipelines API, once or on a
schedule, with kfp.Client (kfp 2.5, KFP API v2beta1).

Authentication: when KF_PIPELINES_SA_TOKEN_PATH names a file (the projected ServiceAccount token, audience
pipelines.kubeflow.org, that the retraining CronJob mounts), every request carries it as a bearer token, re-read
before each request because the kubelet rotates it. kfp.Client does this by itself only in-cluster *without* a
host; given a host it sends no credentials, so we hand it the same ServiceAccountTokenVolumeCredentials.

Requests, and the KFP permissions they need in a multi-user install (group pipelines.kubeflow.org, the run's
namespace):
  submit    GET  /apis/v2beta1/experiments?filter=<name>   experiments: list
            POST /apis/v2beta1/experiments                 experiments: create (only while it does not exist)
            POST /apis/v2beta1/runs                        runs: create
  schedule  the same two experiment calls, then
            POST /apis/v2beta1/recurringruns               jobs: create  (KFP authorises recurring runs as "jobs";
                                                           the CronJob's Role does not grant it)
Without a namespace (KFP_NAMESPACE unset), kfp.Client first asks GET /apis/v2beta1/healthz whether the install
is multi-user; that call needs no permission.

Nothing here imports TFX or TensorFlow (the CronJob's `ftune submit` is up in ~2 s). A run's pipeline root is the
package's defaultPipelineRoot unless given.

Errors: everything that can be wrong locally (package, parameters, cron, host, token file) is a ConfigError before
the first request. What goes wrong on the wire becomes one KfpError naming the host, the answer and what to do:
refused credentials (401/403), wrong endpoint (404) and other refusals exit 2 (outcome.EXIT_INVALID_SETTINGS); no
answer (connection refused, unknown host, no answer within the timeout) and server errors (5xx) exit 6
(outcome.EXIT_UNAVAILABLE: try again later). Each request waits at most `timeout_s` seconds for an answer.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import socket
import urllib.parse
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional

import yaml

from pipeline import outcome
from pipeline.configs import ConfigError

log = logging.getLogger("ftune")

DEFAULT_EXPERIMENT = "ftune"
DEFAULT_SCHEDULE_NAME = "ftune-retrain"
NAMESPACE_ENV = "KFP_NAMESPACE"
HOST_ENV = "KFP_HOST"
# Same variable kfp.Client reads (kfp.client.KF_PIPELINES_SA_TOKEN_ENV).
TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
PACKAGE_SUFFIXES = (".yaml", ".yml", ".zip", ".tar.gz", ".tgz")
# Seconds each request waits for the KFP API to answer (`--timeout`); without a limit a server that accepts the
# connection and never answers would hang the CronJob until Kubernetes kills it.
DEFAULT_TIMEOUT_S = 30.0


class KfpError(outcome.CommandError):
    """The KFP API refused a request or could not be reached; the message names the host and what to do."""


def resolve_host(host: Optional[str]) -> str:
    """--host, else $KFP_HOST: a URL (kfp.Client puts https:// before a bare host name)."""
    host = host or os.environ.get(HOST_ENV)
    if not host:
        raise ConfigError(f"no KFP API host: pass --host or set {HOST_ENV}")
    try:
        parsed = urllib.parse.urlsplit(host if "://" in host else f"https://{host}")
        valid = bool(parsed.hostname) and parsed.port != 0 and not any(c.isspace() for c in host)
    except ValueError:  # a port that is not a number or above 65535
        valid = False
    if not valid:
        raise ConfigError(
            f"KFP API host {host!r} (--host or ${HOST_ENV}) is not a URL like http://ml-pipeline-ui.kubeflow"
        )
    return host


def make_client(host: Optional[str], namespace: Optional[str] = None, timeout_s: float = DEFAULT_TIMEOUT_S):
    """kfp.Client for `host` (default: $KFP_HOST), authenticated with the token file when there is one, whose
    requests wait at most `timeout_s` for an answer."""
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    host = resolve_host(host)
    token_path = os.environ.get(TOKEN_PATH_ENV)
    if token_path and not os.path.isfile(token_path):
        raise ConfigError(f"{TOKEN_PATH_ENV}={token_path} does not exist")
    credentials = ServiceAccountTokenVolumeCredentials(token_path) if token_path else None
    # kfp.Client treats namespace="kubeflow" (its default) as "not given" and asks healthz.
    return _client_class()(timeout_s, host=host, namespace=namespace or "kubeflow", credentials=credentials)


def _client_class():
    """kfp.Client with two changes, both so that an error reaches the user at once:
    * every request waits at most `timeout_s` for an answer: kfp.Client passes urllib3 no timeout, so a server that
      accepts the connection and never answers would hang the command (the CronJob) until it is killed;
    * GET /healthz is asked once: kfp.Client retries a refused answer (401, 404, 500) five times 5 s apart, logging
      a traceback each time, and then reports a timeout instead of the answer."""
    import kfp

    class Client(kfp.Client):
        def __init__(self, timeout_s: float, **kwargs):
            # urllib3's (connect, read) timeouts; kfp_server_api ignores a plain float.
            self._request_timeout = (timeout_s, timeout_s)
            super().__init__(**kwargs)
            # All of kfp.Client's API objects share one ApiClient and so one REST client.
            rest = self._run_api.api_client.rest_client
            request = rest.request

            def request_with_timeout(*args, _request_timeout=None, **kw):
                return request(*args, _request_timeout=_request_timeout or self._request_timeout, **kw)

            rest.request = request_with_timeout

        def get_kfp_healthz(self, sleep_duration: int = 5):
            # Called by kfp.Client.__init__ (no namespace), before the REST client above is wrapped.
            return self._healthz_api.get_healthz(_request_timeout=self._request_timeout)

    return Client


def resolve_namespace(namespace: Optional[str]) -> Optional[str]:
    return namespace or os.environ.get(NAMESPACE_ENV) or None


def submit(
    host: Optional[str],
    package_path: str,
    run_name: Optional[str] = None,
    experiment: str = DEFAULT_EXPERIMENT,
    params: Optional[Mapping[str, Any]] = None,
    namespace: Optional[str] = None,
    pipeline_root: Optional[str] = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> str:
    """Creates one run of the package in `experiment` (created if missing); returns the run id.

    `params` override the package's run parameters (values may be strings, e.g. from the command line; they are
    converted to the declared types). Caching follows the per-task settings compiled into the package.
    """
    # Everything that can be wrong locally is checked before the first request.
    package_path = _checked_package(package_path)
    arguments = coerce_params(package_path, params or {})
    pipeline_root = pipeline_root or default_pipeline_root(package_path)
    namespace = resolve_namespace(namespace)
    host = resolve_host(host)
    with api_errors(host, timeout_s, "submit"):
        client = make_client(host, namespace, timeout_s)
        result = client.create_run_from_pipeline_package(
            pipeline_file=package_path,
            arguments=arguments,
            run_name=run_name or default_run_name(package_path),
            experiment_name=experiment,
            namespace=namespace,
            pipeline_root=pipeline_root,
        )
    log.info("submitted run %s to experiment %s", result.run_id, experiment)
    return result.run_id


def schedule(
    host: Optional[str],
    package_path: str,
    cron: str,
    name: str = DEFAULT_SCHEDULE_NAME,
    experiment: str = DEFAULT_EXPERIMENT,
    params: Optional[Mapping[str, Any]] = None,
    namespace: Optional[str] = None,
    pipeline_root: Optional[str] = None,
    max_concurrency: int = 1,
    catchup: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> str:
    """Creates a KFP recurring run of the package on `cron` (UTC); returns the recurring run id.

    `cron` is standard 5-field cron ("0 3 * * 1") or KFP's 6-field form with seconds first ("0 0 3 * * 1"), or a
    descriptor such as "@weekly". The package is embedded in the recurring run, so later compilations do not
    change it. Each call creates a new recurring run (finding and replacing an old one would need the `jobs`
    list/delete permissions too). Use either this or the retraining CronJob, not both.
    """
    package_path = _checked_package(package_path)
    arguments = coerce_params(package_path, params or {})
    cron = kfp_cron(cron)
    pipeline_root = pipeline_root or default_pipeline_root(package_path)
    namespace = resolve_namespace(namespace)
    host = resolve_host(host)
    with api_errors(host, timeout_s, "schedule"):
        client = make_client(host, namespace, timeout_s)
        experiment_id = client.create_experiment(name=experiment, namespace=namespace).experiment_id
        recurring = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=name,
            cron_expression=cron,
            max_concurrency=max_concurrency,
            no_catchup=not catchup,
            params=arguments,
            pipeline_package_path=package_path,
            pipeline_root=pipeline_root,
            enabled=True,
        )
    log.info("created recurring run %s (%s) in experiment %s", recurring.recurring_run_id, cron, experiment)
    return recurring.recurring_run_id


def kfp_cron(cron: str) -> str:
    """KFP's scheduler parses cron with seconds first (robfig/cron v1, 6 fields, day-of-week optional), so a
    standard 5-field expression would be read one field off ("0 3 * * 1" as minute 3 of every hour in January).
    5 fields get a leading "0" seconds field; 6 fields and @descriptors pass through."""
    cron = " ".join(cron.split())
    if cron.startswith("@"):
        return cron
    fields = cron.split(" ")
    if len(fields) == 5:
        return "0 " + cron
    if len(fields) == 6:
        return cron
    raise ConfigError(
        f"cron expression {cron!r} must have 5 fields (minute hour day month weekday), 6 (with "
        "seconds first) or be a descriptor like @weekly"
    )


def default_run_name(package_path: str) -> str:
    name = pipeline_name(package_path) or os.path.basename(package_path)
    return f"{name} {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC"


def parse_params(items: Iterable[str]) -> Dict[str, str]:
    """["key=value", ...] from the command line -> {key: value} (values typed later by coerce_params)."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"run parameter {item!r} must look like name=value")
        params[key.strip()] = value
    return params


# --- what goes wrong on the wire -------------------------------------------------------------------------------


@contextlib.contextmanager
def api_errors(host: str, timeout_s: float, command: str) -> Iterator[None]:
    """A refusal of the KFP API, or no answer, inside leaves as one KfpError naming the host and what to do."""
    try:
        yield
    except Exception as exc:
        error = wire_error(exc, host, timeout_s, command)
        if error is None:
            raise
        raise error from exc


def wire_error(exc: BaseException, host: str, timeout_s: float, command: str) -> Optional[KfpError]:
    """The KfpError for an exception of kfp.Client's HTTP stack; None for anything else (a bug)."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    if isinstance(exc, ApiException):
        return _refusal(exc, host, command)
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason  # urllib3 retried; the last attempt's error says what happened
    if isinstance(exc, urllib3.exceptions.LocationValueError):
        return KfpError(
            f"--host {host} is not a URL like http://ml-pipeline-ui.kubeflow: {exc}", outcome.EXIT_INVALID_SETTINGS
        )
    # Before the timeouts: urllib3 1.26 derives NewConnectionError (refused, unknown host) from ConnectTimeoutError.
    if isinstance(exc, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ProtocolError, ConnectionError)):
        return KfpError(
            f"cannot reach the KFP API at {host}: {_os_reason(exc)}. Check --host (or ${HOST_ENV}) and that the API "
            f"is up; nothing was {_created(command)}",
            outcome.EXIT_UNAVAILABLE,
        )
    if isinstance(exc, (urllib3.exceptions.TimeoutError, socket.timeout)):
        return KfpError(
            f"the KFP API at {host} did not answer within {timeout_s:g} s (--timeout). Check that it is up and "
            f"--host is its address; try again later",
            outcome.EXIT_UNAVAILABLE,
        )
    return None


def _refusal(exc: Any, host: str, command: str) -> KfpError:
    """The KfpError for an HTTP error answer (kfp_server_api.ApiException; status 0: no HTTP answer at all)."""
    status, reason = exc.status or 0, exc.reason or ""
    answer = f"HTTP {status} {reason}".strip() + (f": {_answer_message(exc.body)}" if exc.body else "")
    if status == 401:
        token = os.environ.get(TOKEN_PATH_ENV)
        fix = (
            f"check the token in {token} (${TOKEN_PATH_ENV}): a ServiceAccount token with audience "
            "pipelines.kubeflow.org that has not expired"
            if token
            else f"no token was sent: set {TOKEN_PATH_ENV} to a ServiceAccount token file (audience "
            "pipelines.kubeflow.org)"
        )
        return KfpError(
            f"the KFP API at {host} refused the credentials ({answer}): {fix}", outcome.EXIT_INVALID_SETTINGS
        )
    if status == 403:
        return KfpError(
            f"the KFP API at {host} refused the request ({answer}): the ServiceAccount lacks a KFP permission in "
            f"this namespace; `ftune {command} --help` lists the ones it needs",
            outcome.EXIT_INVALID_SETTINGS,
        )
    if status == 404:
        return KfpError(
            f"the KFP API at {host} answered {answer}: is --host the KFP API endpoint (e.g. "
            "http://ml-pipeline-ui.kubeflow, not the dashboard), and --namespace right?",
            outcome.EXIT_INVALID_SETTINGS,
        )
    if status == 0 or status >= 500:
        return KfpError(
            f"the KFP API at {host} failed ({answer or reason}); nothing was {_created(command)}: try again "
            "later (the ml-pipeline server's log says why)",
            outcome.EXIT_UNAVAILABLE,
        )
    return KfpError(f"the KFP API at {host} rejected the request ({answer})", outcome.EXIT_INVALID_SETTINGS)


def _answer_message(body: Any) -> str:
    """The first line of an error answer's message (KFP answers {"error": ..., "message": ...}), at most 300 chars."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            text = str(data.get("message") or data.get("error") or text)
    except ValueError:
        pass
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else ""


def _os_reason(exc: BaseException) -> str:
    """ "Connection refused" from urllib3's "<...HTTPConnection object at 0x..>: Failed to establish a new
    connection: [Errno 111] Connection refused"."""
    text = str(exc).split("connection: ", 1)[-1]
    return re.sub(r"^\[Errno -?\d+\] ", "", text).strip() or type(exc).__name__


def _created(command: str) -> str:
    return "scheduled" if command == "schedule" else "submitted"


# --- the package -------------------------------------------------------------------------------------------------


def _checked_package(package_path: str) -> str:
    if not os.path.isfile(package_path):
        raise ConfigError(f"pipeline package {package_path} does not exist (build it with `ftune compile`)")
    if not package_path.endswith(PACKAGE_SUFFIXES):
        raise ConfigError(f"pipeline package {package_path} must be .yaml (kfp.Client also takes .zip/.tar.gz)")
    return package_path


def _pipeline_document(package_path: str) -> Dict[str, Any]:
    """The pipeline spec (first YAML document) of a .yaml package; {} for archives."""
    if not package_path.endswith((".yaml", ".yml")):
        return {}
    with open(_checked_package(package_path)) as f:
        try:
            document = next(iter(yaml.safe_load_all(f)), None) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"pipeline package {package_path} is not valid YAML ({_first_line(exc)}): "
                "build it again with `ftune compile`"
            ) from exc
    if not isinstance(document, dict) or "pipelineInfo" not in document or "root" not in document:
        raise ConfigError(
            f"{package_path} is not a compiled pipeline (no pipelineInfo and root): build it with `ftune compile`"
        )
    return document


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def pipeline_name(package_path: str) -> Optional[str]:
    return _pipeline_document(package_path).get("pipelineInfo", {}).get("name")


def default_pipeline_root(package_path: str) -> Optional[str]:
    """The package's defaultPipelineRoot, sent as the run's pipeline root: KFP backends differ in whether they
    read it from the spec, and without it they fall back to their minio:// default, which TFX cannot write to."""
    return _pipeline_document(package_path).get("defaultPipelineRoot") or None


def declared_parameters(package_path: str) -> Dict[str, Dict[str, Any]]:
    """{name: ParameterSpec dict} of the pipeline's run parameters (root inputDefinitions)."""
    root = _pipeline_document(package_path).get("root", {})
    return root.get("inputDefinitions", {}).get("parameters", {})


def coerce_params(package_path: str, params: Mapping[str, Any]) -> Dict[str, Any]:
    """Checks names against the package's run parameters and converts text to the declared types, so a typo or
    "epochs=3" as a string fails here instead of inside the run."""
    declared = declared_parameters(package_path)
    if not declared:
        if params and package_path.endswith((".yaml", ".yml")):
            raise ConfigError(f"{package_path} declares no run parameters; got {', '.join(sorted(params))}")
        return dict(params)
    result = {}
    for name, value in params.items():
        if name not in declared:
            raise ConfigError(f"unknown run parameter {name!r}; the package declares: {', '.join(sorted(declared))}")
        result[name] = _typed(name, value, declared[name].get("parameterType", "STRING"))
    return result


def _typed(name: str, value: Any, parameter_type: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        if parameter_type == "NUMBER_INTEGER":
            return int(value)
        if parameter_type == "NUMBER_DOUBLE":
            return float(value)
        if parameter_type == "BOOLEAN":
            lowered = value.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return lowered in ("true", "1", "yes")
        if parameter_type in ("LIST", "STRUCT"):
            return json.loads(value)
    except ValueError as exc:
        raise ConfigError(f"run parameter {name} must be {parameter_type}, got {value!r}") from exc
    return value

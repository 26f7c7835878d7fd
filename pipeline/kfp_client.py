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
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Any, Dict, Iterable, Mapping, Optional

import yaml

from pipeline.configs import ConfigError

log = logging.getLogger("ftune")

DEFAULT_EXPERIMENT = "ftune"
DEFAULT_SCHEDULE_NAME = "ftune-retrain"
NAMESPACE_ENV = "KFP_NAMESPACE"
HOST_ENV = "KFP_HOST"
# Same variable kfp.Client reads (kfp.client.KF_PIPELINES_SA_TOKEN_ENV).
TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
PACKAGE_SUFFIXES = (".yaml", ".yml", ".zip", ".tar.gz", ".tgz")


def make_client(host: Optional[str], namespace: Optional[str] = None):
    """kfp.Client for `host` (default: $KFP_HOST), authenticated with the token file when there is one."""
    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    host = host or os.environ.get(HOST_ENV)
    if not host:
        raise ConfigError(f"no KFP API host: pass --host or set {HOST_ENV}")
    token_path = os.environ.get(TOKEN_PATH_ENV)
    if token_path and not os.path.isfile(token_path):
        raise ConfigError(f"{TOKEN_PATH_ENV}={token_path} does not exist")
    credentials = ServiceAccountTokenVolumeCredentials(token_path) if token_path else None
    # kfp.Client treats namespace="kubeflow" (its default) as "not given" and asks healthz.
    return kfp.Client(host=host, namespace=namespace or "kubeflow", credentials=credentials)


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
    client = make_client(host, namespace)
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
    client = make_client(host, namespace)
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
        return next(iter(yaml.safe_load_all(f)), None) or {}


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

"""`ftune submit` / `ftune schedule` against a real HTTP server on 127.0.0.1 that records every request and answers
like the KFP v2beta1 API (minimal valid JSON). No mock objects: kfp.Client's own HTTP stack does the talking."""

import http.server
import json
import socket
import threading
import time
import urllib.parse

import pytest
import yaml

from pipeline import kfp_client, outcome
from pipeline.configs import ConfigError

TOKEN = "projected-sa-token-123"

# A small package in the shape `ftune compile` writes: pipeline spec + Kubernetes platform spec.
PIPELINE_SPEC = {
    "pipelineInfo": {"name": "ftune"},
    "schemaVersion": "2.1.0",
    "sdkVersion": "tfx-1.16.0",
    "defaultPipelineRoot": "gs://bucket/root",
    "root": {
        "inputDefinitions": {
            "parameters": {
                "data_root": {"parameterType": "STRING", "defaultValue": "/data/images", "isOptional": True},
                "phase1_epochs": {"parameterType": "NUMBER_INTEGER", "defaultValue": 10, "isOptional": True},
                "learning_rate": {"parameterType": "NUMBER_DOUBLE", "defaultValue": 0.001, "isOptional": True},
            }
        },
        "dag": {
            "tasks": {
                "Trainer": {
                    "taskInfo": {"name": "Trainer"},
                    "componentRef": {"name": "Trainer"},
                    "cachingOptions": {"enableCache": True},
                }
            }
        },
    },
    "components": {"Trainer": {"executorLabel": "Trainer_executor"}},
    "deploymentSpec": {
        "executors": {
            "Trainer_executor": {"container": {"image": "registry.example/ftune:1", "command": ["python", "-m", "x"]}}
        }
    },
}
PLATFORM_SPEC = {
    "platforms": {
        "kubernetes": {
            "deploymentSpec": {"executors": {"Trainer_executor": {"nodeSelector": {"labels": {"pool": "gpu"}}}}}
        }
    }
}


class _KfpApi(http.server.BaseHTTPRequestHandler):
    """Answers the v2beta1 endpoints kfp.Client uses; records (method, path, query, headers, JSON body)."""

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urllib.parse.urlsplit(self.path)
        request = {
            "method": self.command,
            "path": url.path,
            "query": urllib.parse.parse_qs(url.query),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": json.loads(raw) if raw else None,
        }
        self.server.requests.append(request)
        return request

    def _answer(self, payload, status=200):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server naming)
        request = self._record()
        if request["path"] == "/apis/v2beta1/healthz":
            return self._answer({"multi_user": False})
        if request["path"] == "/apis/v2beta1/experiments":
            existing = self.server.experiments
            return self._answer({"experiments": existing, "total_size": len(existing)} if existing else {})
        self._answer({"error": "not found"}, 404)

    def do_POST(self):  # noqa: N802
        request = self._record()
        body = request["body"] or {}
        if request["path"] == "/apis/v2beta1/experiments":
            return self._answer(
                {
                    "experiment_id": "exp-new",
                    "display_name": body.get("display_name"),
                    "namespace": body.get("namespace"),
                }
            )
        if request["path"] == "/apis/v2beta1/runs":
            return self._answer(
                {
                    "run_id": "run-1",
                    "display_name": body.get("display_name"),
                    "experiment_id": body.get("experiment_id"),
                    "state": "PENDING",
                }
            )
        if request["path"] == "/apis/v2beta1/recurringruns":
            return self._answer(
                {
                    "recurring_run_id": "rr-1",
                    "display_name": body.get("display_name"),
                    "experiment_id": body.get("experiment_id"),
                    "mode": body.get("mode"),
                }
            )
        self._answer({"error": "not found"}, 404)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KfpApi)
    server.requests = []
    server.experiments = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def host(api):
    return f"http://127.0.0.1:{api.server_address[1]}"


@pytest.fixture(autouse=True)
def isolated_kfp(tmp_path, monkeypatch):
    """No kfp context file from the developer's home, no ambient KFP settings, a token file as the CronJob has."""
    import kfp.client

    monkeypatch.setattr(kfp.client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for name in (
        "KFP_HOST",
        "KFP_NAMESPACE",
        "KF_PIPELINES_ENDPOINT",
        "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
        "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))


@pytest.fixture
def package(tmp_path):
    path = tmp_path / "pipeline.yaml"
    with open(path, "w") as f:
        yaml.safe_dump_all([PIPELINE_SPEC, PLATFORM_SPEC], f)
    return str(path)


def _calls(api):
    return [(r["method"], r["path"]) for r in api.requests]


def test_submit_creates_experiment_then_run_with_embedded_spec(api, host, package, monkeypatch):
    monkeypatch.setenv("KFP_NAMESPACE", "team-a")  # as the CronJob sets it (fieldRef metadata.namespace)

    run_id = kfp_client.submit(
        host,
        package,
        run_name="weekly",
        experiment="ftune-retrain",
        params={"phase1_epochs": "3", "learning_rate": "0.0005"},
    )

    assert run_id == "run-1"
    # With a namespace there is no healthz probe: exactly the calls the CronJob's Role allows.
    assert _calls(api) == [
        ("GET", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/runs"),
    ]
    lookup, create_experiment, create_run = api.requests
    assert lookup["query"]["namespace"] == ["team-a"]
    predicate = json.loads(lookup["query"]["filter"][0])["predicates"][0]
    assert predicate["key"] == "display_name" and predicate["stringValue"] == "ftune-retrain"
    assert create_experiment["body"] == {"display_name": "ftune-retrain", "namespace": "team-a"}

    body = create_run["body"]
    assert body["experiment_id"] == "exp-new"
    assert body["display_name"] == "weekly"
    # Pipeline spec and platform spec travel together, as the KFP API expects for platform-specific features.
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "ftune"
    assert (
        body["pipeline_spec"]["pipeline_spec"]["root"]["inputDefinitions"] == PIPELINE_SPEC["root"]["inputDefinitions"]
    )
    assert body["pipeline_spec"]["platform_spec"] == PLATFORM_SPEC
    # Text from the command line arrives typed as the package declares.
    assert body["runtime_config"]["parameters"] == {"phase1_epochs": 3, "learning_rate": 0.0005}
    # The package's artifact root is sent explicitly (a backend default would be minio://, unusable for TFX).
    assert body["runtime_config"]["pipeline_root"] == "gs://bucket/root"
    # Compile-time caching settings are left alone (no override of every task's cachingOptions).
    assert body["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]["Trainer"]["cachingOptions"] == {
        "enableCache": True
    }
    for request in api.requests:
        assert request["headers"]["authorization"] == f"Bearer {TOKEN}"


def test_submit_reuses_existing_experiment_and_asks_healthz_without_namespace(api, host, package):
    api.experiments = [{"experiment_id": "exp-7", "display_name": "ftune"}]

    assert kfp_client.submit(host, package) == "run-1"

    assert _calls(api) == [
        ("GET", "/apis/v2beta1/healthz"),
        ("GET", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/runs"),
    ]
    run = api.requests[-1]["body"]
    assert run["experiment_id"] == "exp-7"
    assert run["display_name"].startswith("ftune ")  # pipeline name + UTC timestamp
    assert run["runtime_config"].get("parameters") in (None, {})  # package defaults apply


def test_submit_passes_pipeline_root_override(api, host, package):
    kfp_client.submit(host, package, namespace="team-b", pipeline_root="gs://other/root")
    assert api.requests[-1]["body"]["runtime_config"]["pipeline_root"] == "gs://other/root"


def test_schedule_creates_recurring_run_with_cron(api, host, package):
    recurring_id = kfp_client.schedule(
        host, package, "0 3 * * 1", name="ftune-weekly", namespace="team-a", params={"data_root": "/data/new"}
    )

    assert recurring_id == "rr-1"
    assert _calls(api) == [
        ("GET", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/recurringruns"),
    ]
    body = api.requests[-1]["body"]
    assert body["display_name"] == "ftune-weekly"
    assert body["experiment_id"] == "exp-new"
    assert body["mode"] == "ENABLE"
    # KFP's scheduler wants seconds first: Monday 03:00:00.
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
    assert int(body["max_concurrency"]) == 1
    assert body["no_catchup"] is True
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "ftune"
    assert body["pipeline_spec"]["platform_spec"] == PLATFORM_SPEC
    assert body["runtime_config"]["parameters"] == {"data_root": "/data/new"}
    assert body["runtime_config"]["pipeline_root"] == "gs://bucket/root"
    assert api.requests[-1]["headers"]["authorization"] == f"Bearer {TOKEN}"


def test_bad_input_fails_before_any_request(api, host, package):
    with pytest.raises(ConfigError, match="unknown run parameter 'epochs'"):
        kfp_client.submit(host, package, params={"epochs": "3"})
    with pytest.raises(ConfigError, match="NUMBER_INTEGER"):
        kfp_client.submit(host, package, params={"phase1_epochs": "three"})
    with pytest.raises(ConfigError, match="5 fields"):
        kfp_client.schedule(host, package, "every monday")
    with pytest.raises(ConfigError, match="does not exist"):
        kfp_client.submit(host, package + ".missing")
    assert api.requests == []


def test_cron_and_param_parsing():
    assert kfp_client.kfp_cron("0 3 * * 1") == "0 0 3 * * 1"
    assert kfp_client.kfp_cron("30 0 3 * * 1") == "30 0 3 * * 1"
    assert kfp_client.kfp_cron("@weekly") == "@weekly"
    assert kfp_client.parse_params(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ConfigError):
        kfp_client.parse_params(["novalue"])


# --- what goes wrong on the wire: one KfpError naming the host, with the exit code a script can act on -----------


class _Refusing(_KfpApi):
    """Answers every request with the status in `server.status`."""

    def do_GET(self):  # noqa: N802
        self._record()
        self._answer({"error": "refused by the test", "message": "refused by the test"}, self.server.status)

    do_POST = do_GET


@pytest.fixture
def refusing():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    server.requests, server.status = [], 500
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "status, code, words",
    [
        (401, outcome.EXIT_INVALID_SETTINGS, "refused the credentials"),
        (403, outcome.EXIT_INVALID_SETTINGS, "lacks a KFP permission"),
        (404, outcome.EXIT_INVALID_SETTINGS, "is --host the KFP API endpoint"),
        (400, outcome.EXIT_INVALID_SETTINGS, "rejected the request"),
        (500, outcome.EXIT_UNAVAILABLE, "try again later"),
        (503, outcome.EXIT_UNAVAILABLE, "try again later"),
    ],
)
def test_a_refusal_is_one_error_and_healthz_is_asked_once(refusing, package, status, code, words):
    refusing.status = status
    host = f"http://127.0.0.1:{refusing.server_address[1]}"
    started = time.time()
    with pytest.raises(kfp_client.KfpError) as error:
        kfp_client.submit(host, package)  # no namespace: healthz first
    assert error.value.exit_code == code and words in str(error.value) and host in str(error.value)
    assert f"HTTP {status}" in str(error.value) and "refused by the test" in str(error.value)
    # kfp.Client alone would ask five times, 5 s apart, and then report a timeout.
    assert [r["path"] for r in refusing.requests] == ["/apis/v2beta1/healthz"]
    assert time.time() - started < 5


def test_no_answer_within_the_timeout_is_unavailable(package):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # connections wait in the backlog; nothing ever answers
        host = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.time()
        with pytest.raises(kfp_client.KfpError, match=r"did not answer within 0\.3 s") as error:
            kfp_client.submit(host, package, namespace="team-a", timeout_s=0.3)
    assert error.value.exit_code == outcome.EXIT_UNAVAILABLE
    assert time.time() - started < 10  # urllib3 retries a GET 3 times: 4 x 0.3 s, plus start-up


def test_closed_port_is_unavailable(package):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(kfp_client.KfpError, match="cannot reach the KFP API .* Connection refused") as error:
        kfp_client.schedule(f"http://127.0.0.1:{port}", package, "@weekly", namespace="team-a")
    assert error.value.exit_code == outcome.EXIT_UNAVAILABLE and "nothing was scheduled" in str(error.value)


def test_malformed_packages_are_named(tmp_path, api, host):
    broken = tmp_path / "broken.yaml"
    broken.write_text("pipelineInfo: {name: x\nroot: [")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        kfp_client.submit(host, str(broken))
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\n")
    with pytest.raises(ConfigError, match="not a compiled pipeline"):
        kfp_client.submit(host, str(other))
    assert api.requests == []

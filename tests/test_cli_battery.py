# ruff: noqa: E501  (the battery table keeps one row per line, like the README table it generates)
"""The CLI error battery: every command x the bad inputs a user gives it, and what the user gets back.

Each row runs `python -m pipeline.cli ...` as a user would (a subprocess, TensorFlow's C++ logging left on so the
console filter is exercised) and asserts
  * the exit code, one of README's exit-code table (pipeline/outcome.py),
  * one line `ftune...: error: ...` holding the row's key words, no traceback, and no other stderr line than
    ftune's own (`[ftune] ...`): library noise stays hidden,
  * that nothing was written or changed: a digest of the whole workspace (pipeline roots, serving folders, the
    working directory the command runs in) before and after.
No pipeline runs. The Kubeflow Pipelines API and TF Serving are played by servers on 127.0.0.1: one answers every
request with the HTTP status named by the first path segment of the host URL (http://127.0.0.1:<port>/s401), one
accepts connections and never answers, and a closed port refuses.

README.md's "What each command says when ..." table lists the same rows (`python tests/test_cli_battery.py`
prints it; `test_readme_table_matches_the_battery` keeps the two in step), and
`test_readme_exit_codes_match_outcome_and_the_battery` checks README's exit-code table against pipeline/outcome.py
and the codes the rows expect.
"""

from __future__ import annotations

import dataclasses
import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from typing import Callable, List, Tuple

import pytest
from conftest import REPO, tree_digest
from PIL import Image

from pipeline import outcome

TOKEN = "battery-token"
# A compiled package as small as kfp.Client accepts: pipeline spec with one run parameter, no tasks.
PACKAGE = {
    "pipelineInfo": {"name": "ftune"},
    "schemaVersion": "2.1.0",
    "sdkVersion": "tfx-1.16.0",
    "defaultPipelineRoot": "gs://bucket/root",
    "root": {
        "inputDefinitions": {"parameters": {"phase1_epochs": {"parameterType": "NUMBER_INTEGER"}}},
        "dag": {"tasks": {}},
    },
}


# --- the workspace: every file a row may point at; nothing in it may change --------------------------------------


def _version(base: str, version: int, record: str) -> None:
    folder = os.path.join(base, str(version))
    os.makedirs(os.path.join(folder, "assets.extra"))
    with open(os.path.join(folder, "saved_model.pb"), "wb") as f:
        f.write(b"not a real model: listing and copying look at the files only")
    with open(os.path.join(folder, "assets.extra", "model_record.json"), "w") as f:
        f.write(record)


def _record(version: int) -> str:
    return json.dumps(
        {"version": version, "kind": "trained", "metrics": {"accuracy": 0.9}, "data": {"roots": ["/data"]}}
    )


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


@dataclasses.dataclass
class Workspace:
    path: str
    kfp: str  # http://127.0.0.1:<port>: answers /s<status>/... with that status
    silent: str  # accepts connections, never answers
    closed: str  # nothing listens
    env: dict

    def __call__(self, relative: str) -> str:
        return os.path.join(self.path, relative)


def _build(path: str) -> None:
    """root/: serving folder with versions 1 and 2; single/: one version; bad_record/: versions 1 (record not JSON)
    and 2; empty_root/: a pipeline root where nothing ran; files a user might pass by mistake."""
    for version in (1, 2):
        _version(os.path.join(path, "root", "serving", "image_classifier"), version, _record(version))
    _version(os.path.join(path, "single", "image_classifier"), 1, _record(1))
    _version(os.path.join(path, "bad_record", "image_classifier"), 1, '{"version": 1, "kind": "trai')
    _version(os.path.join(path, "bad_record", "image_classifier"), 2, _record(2))
    for folder in ("empty_root", "cwd"):
        os.makedirs(os.path.join(path, folder))
    files = {
        "package.yaml": json.dumps(PACKAGE),
        "broken.yaml": "pipelineInfo: {name: ftune\nroot: [",
        "not_a_pipeline.yaml": "hello: world\n",
        "broken_config.yaml": "trainer:\n  phase1_epochs: [3\n",
        "notes.txt": "a text file, not an image",
        "token": TOKEN,
    }
    for name, text in files.items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
    with open(os.path.join(path, "cat.jpg"), "wb") as f:
        f.write(_jpeg())


class _Status(http.server.BaseHTTPRequestHandler):
    """Answers every request with the status in the path's first segment (/s401/apis/... -> 401), a KFP-style
    JSON error body."""

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        status = int(self.path.split("/")[1][1:])
        body = json.dumps(
            {"error": f"answered {status} by the test server", "code": 16, "message": f"test server: {status}"}
        )
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer  # noqa: N815 (http.server naming)

    def log_message(self, *args):
        pass


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("battery"))
    _build(path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # connections complete in the backlog; nobody ever reads or answers them
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("KFP_", "KF_PIPELINES", "TF_CPP", "PYTHONWARNINGS"))
    }
    # HOME outside the workspace: TensorFlow's Keras writes ~/.keras/keras.json on import.
    home = str(tmp_path_factory.mktemp("battery_home"))
    env.update(HOME=home, PYTHONPATH=REPO, KF_PIPELINES_SA_TOKEN_PATH=os.path.join(path, "token"))
    try:
        yield Workspace(
            path=path,
            kfp=f"http://127.0.0.1:{server.server_address[1]}",
            silent=f"http://127.0.0.1:{silent.getsockname()[1]}",
            closed=f"http://127.0.0.1:{_closed_port()}",
            env=env,
        )
    finally:
        server.shutdown()
        server.server_close()
        silent.close()


# --- the rows ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    command: str
    bad_input: str  # what the user did, as the README table says it
    argv: Callable[[Workspace], List[str]]
    code: int
    says: Tuple[str, ...]  # key words of the error line

    @property
    def id(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", f"{self.command} {self.bad_input}".lower()).strip("-")[:70]


def _root(w: Workspace, *more: str) -> List[str]:
    return ["--pipeline-root", w("root"), *more]


def _submit(w: Workspace, host: str, *more: str) -> List[str]:
    return ["submit", "--host", host, "--package", w("package.yaml"), "--timeout", "0.5", *more]


def _schedule(w: Workspace, host: str, *more: str) -> List[str]:
    return [
        "schedule",
        "--host",
        host,
        "--package",
        w("package.yaml"),
        "--cron",
        "0 3 * * 1",
        "--timeout",
        "0.5",
        *more,
    ]


INVALID, UNUSABLE, UNAVAILABLE = outcome.EXIT_INVALID_SETTINGS, outcome.EXIT_UNUSABLE_INPUT, outcome.EXIT_UNAVAILABLE

ROWS = [
    Row("(none)", "no command", lambda w: [], INVALID, ("required", "COMMAND")),
    Row("(none)", "unknown command", lambda w: ["trian"], INVALID, ("invalid choice", "trian")),
    Row("config", "unknown key", lambda w: ["config", "--set", "trainer.bogus=1"], INVALID, ("trainer.bogus",)),
    Row("config", "`--set` without `=`", lambda w: ["config", "--set", "trainer.phase1_epochs"], INVALID, ("section.key=value",)),
    Row("config", "config file that does not exist", lambda w: ["config", "--config", w("missing.yaml")], INVALID, ("cannot read config file", "missing.yaml")),
    Row("config", "malformed config file", lambda w: ["config", "--config", w("broken_config.yaml")], INVALID, ("broken_config.yaml", "not valid YAML")),
    Row("sample-data", "`--classes 1`", lambda w: ["sample-data", w("shapes"), "--classes", "1"], INVALID, ("--classes", "at least 2")),
    Row("sample-data", "`--per-class many`", lambda w: ["sample-data", w("shapes"), "--per-class", "many"], INVALID, ("--per-class", "not a whole number")),
    Row("sample-data", "output folder is a file", lambda w: ["sample-data", w("notes.txt"), "--classes", "2", "--per-class", "1"], UNUSABLE, ("Not a directory", "notes.txt")),
    Row("ingest", "bad setting", lambda w: ["ingest", *_root(w), "--set", "data.eval_fraction=1.5"], INVALID, ("data.eval_fraction",)),
    Row("run", "infinite learning rate", lambda w: ["run", *_root(w), "--set", "trainer.learning_rate=inf"], INVALID, ("trainer.learning_rate", "finite number")),
    Row("run", "unknown base model, `--json`", lambda w: ["run", *_root(w), "--json", "--set", "trainer.base_model=vgg16"], INVALID, ("trainer.base_model must be one of",)),
    Row("report", "pipeline root where nothing ran", lambda w: ["report", "--pipeline-root", w("empty_root")], UNUSABLE, ("no run to report on", "empty_root", "ftune run")),
    Row("report", "pipeline root that does not exist", lambda w: ["report", "--pipeline-root", w("no_such_root")], UNUSABLE, ("no run to report on", "no_such_root")),
    Row("predict", "file that does not exist", lambda w: ["predict", w("nope.jpg"), *_root(w)], UNUSABLE, ("nothing to score", "nope.jpg", "no such file or folder")),
    Row("predict", "glob that matches nothing", lambda w: ["predict", w("*.png"), *_root(w)], UNUSABLE, ("nothing to score", "pattern matches no file")),
    Row("predict", "only files that are not images", lambda w: ["predict", w("notes.txt"), "--server", w.closed, *_root(w)], UNUSABLE, ("no image could be scored", "not a JPEG")),
    Row("predict", "nothing served yet", lambda w: ["predict", w("cat.jpg"), "--pipeline-root", w("empty_root")], UNUSABLE, ("no served model", "ftune run")),
    Row("predict", "`--version` that does not exist", lambda w: ["predict", w("cat.jpg"), *_root(w), "--version", "9"], UNUSABLE, ("version 9 is not in",)),
    Row("predict", "`--model-dir` without a model", lambda w: ["predict", w("cat.jpg"), "--model-dir", w("empty_root")], UNUSABLE, ("no SavedModel", "empty_root")),
    Row("predict", "`--server` not listening", lambda w: ["predict", w("cat.jpg"), "--server", w.closed, *_root(w)], UNAVAILABLE, ("cannot reach", "Connection refused", "--server")),
    Row("predict", "`--server` answers 500", lambda w: ["predict", w("cat.jpg"), "--server", w.kfp + "/s500", *_root(w)], UNAVAILABLE, ("HTTP 500", "try again later")),
    Row("predict", "`--top-k` not a number", lambda w: ["predict", w("cat.jpg"), "--top-k", "all"], INVALID, ("--top-k", "invalid int value")),
    Row("compile", "no `--output`", lambda w: ["compile"], INVALID, ("--output", "required")),
    Row("compile", "package name not .yaml", lambda w: ["compile", "--output", w("pipeline.txt"), "--pipeline-root", "gs://b/root", "--data-root", "/data", "--image", "registry.example/ftune:1.0", "--set", "data.split_mode=hash"], INVALID, ("pipeline.txt", "must end with .yaml")),
    Row("submit", "no host", lambda w: ["submit", "--package", w("package.yaml")], INVALID, ("no KFP API host", "--host", "KFP_HOST")),
    Row("submit", "host that is not a URL", lambda w: _submit(w, "http://127.0.0.1:99999"), INVALID, ("not a URL", "--host")),
    Row("submit", "package that does not exist", lambda w: ["submit", "--host", w.kfp, "--package", w("missing.yaml")], INVALID, ("missing.yaml", "does not exist", "ftune compile")),
    Row("submit", "malformed package", lambda w: ["submit", "--host", w.kfp, "--package", w("broken.yaml")], INVALID, ("broken.yaml", "not valid YAML")),
    Row("submit", "YAML that is not a pipeline", lambda w: ["submit", "--host", w.kfp, "--package", w("not_a_pipeline.yaml")], INVALID, ("not a compiled pipeline", "ftune compile")),
    Row("submit", "unknown run parameter", lambda w: _submit(w, w.kfp, "--param", "epochs=3"), INVALID, ("unknown run parameter 'epochs'", "phase1_epochs")),
    Row("submit", "KFP host not listening", lambda w: _submit(w, w.closed), UNAVAILABLE, ("cannot reach the KFP API", "Connection refused", "--host")),
    Row("submit", "KFP host never answers", lambda w: _submit(w, w.silent), UNAVAILABLE, ("did not answer within 0.5 s", "--timeout")),
    Row("submit", "KFP answers 401", lambda w: _submit(w, w.kfp + "/s401"), INVALID, ("refused the credentials", "HTTP 401", "token")),
    Row("submit", "KFP answers 403", lambda w: _submit(w, w.kfp + "/s403", "--namespace", "team-a"), INVALID, ("HTTP 403", "permission", "ftune submit --help")),
    Row("submit", "KFP answers 404", lambda w: _submit(w, w.kfp + "/s404"), INVALID, ("HTTP 404", "KFP API endpoint")),
    Row("submit", "KFP answers 500", lambda w: _submit(w, w.kfp + "/s500", "--namespace", "team-a"), UNAVAILABLE, ("HTTP 500", "nothing was submitted", "try again later")),
    Row("submit", "`--timeout 0`", lambda w: ["submit", "--package", w("package.yaml"), "--timeout", "0"], INVALID, ("--timeout", "more than 0")),
    Row("schedule", "cron with 3 fields", lambda w: ["schedule", "--host", w.kfp, "--package", w("package.yaml"), "--cron", "3 * 1"], INVALID, ("cron expression", "5 fields")),
    Row("schedule", "`--max-concurrency 0`", lambda w: _schedule(w, w.kfp, "--max-concurrency", "0"), INVALID, ("--max-concurrency", "at least 1")),
    Row("schedule", "KFP host not listening", lambda w: _schedule(w, w.closed), UNAVAILABLE, ("cannot reach the KFP API", "nothing was scheduled")),
    Row("schedule", "KFP answers 401", lambda w: _schedule(w, w.kfp + "/s401", "--namespace", "team-a"), INVALID, ("refused the credentials", "HTTP 401")),
    Row("schedule", "KFP answers 500", lambda w: _schedule(w, w.kfp + "/s500"), UNAVAILABLE, ("HTTP 500", "try again later")),
    Row("versions", "serving folder that does not exist", lambda w: ["versions", "--set", f"push.serving_dir={w('nope')}/serving"], UNUSABLE, ("no serving folder", "push.serving_dir")),
    Row("versions", "malformed version record", lambda w: ["versions", "--json", "--set", f"push.serving_dir={w('bad_record')}"], UNUSABLE, ("model_record.json", "not JSON", "restore")),
    Row("versions", "malformed config file", lambda w: ["versions", "--config", w("broken_config.yaml")], INVALID, ("not valid YAML",)),
    Row("rollback", "`--to` a version that does not exist", lambda w: ["rollback", *_root(w), "--to", "7"], INVALID, ("--to 7", "no such version", "[1, 2]")),
    Row("rollback", "`--to` not a number", lambda w: ["rollback", *_root(w), "--to", "latest"], INVALID, ("--to", "invalid int value")),
    Row("rollback", "one version only", lambda w: ["rollback", "--set", f"push.serving_dir={w('single')}"], INVALID, ("nothing to roll back to", "1 version")),
    Row("rollback", "serving folder that does not exist", lambda w: ["rollback", "--pipeline-root", w("empty_root")], UNUSABLE, ("no serving folder", "empty_root")),
    Row("rollback", "to a version whose record is malformed", lambda w: ["rollback", "--to", "1", "--set", f"push.serving_dir={w('bad_record')}"], UNUSABLE, ("model_record.json", "not JSON")),
]  # fmt: skip

# ftune's own stderr lines: progress ("[ftune] ...") and the error line ("ftune: error:", "ftune submit: error:").
_OWN_LINE = re.compile(r"^(\[ftune\] |ftune(?: [\w-]+)?: error: )")


@pytest.mark.parametrize("row", [pytest.param(row, id=row.id) for row in ROWS])
def test_bad_input(row: Row, ws: Workspace):
    before = tree_digest(ws.path)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *row.argv(ws)],
        cwd=ws("cwd"),
        env=ws.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = result.stderr.splitlines()
    errors = [line for line in lines if ": error: " in line]
    assert result.returncode == row.code, result.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for words in row.says:
        assert words in errors[0], f"{words!r} not in {errors[0]!r}"
    assert [line for line in lines if not _OWN_LINE.match(line)] == [], "library noise on the console"
    assert tree_digest(ws.path) == before, "the command wrote or changed files"


# --- the README's tables -----------------------------------------------------------------------------------------

_CODE_NAMES = {code: name for name, code in vars(outcome).items() if name.startswith("EXIT_") and isinstance(code, int)}


def readme_table() -> str:
    lines = ["| command | what happens when ... | exit code | the error line says |", "| --- | --- | --- | --- |"]
    for row in ROWS:
        says = ", ".join(f"`{words}`" for words in row.says)
        lines.append(f"| {row.command} | {row.bad_input} | {row.code} | {says} |")
    return "\n".join(lines)


def test_readme_table_matches_the_battery():
    assert len(ROWS) >= 25
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    assert readme_table() in readme, "README's 'What each command says when ...' table is out of date: " + (
        "regenerate it with `python tests/test_cli_battery.py`"
    )


def readme_exit_codes() -> dict:
    """{code: meaning} from README's exit-code table (the rows `| <digit> | ... |` under '### Exit codes')."""
    with open(os.path.join(REPO, "README.md")) as f:
        section = f.read().split("### Exit codes", 1)[1].split("\n#", 1)[0]
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d) \| (.+) \|$", section, re.MULTILINE)}


def test_readme_exit_codes_match_outcome_and_the_battery():
    documented = readme_exit_codes()
    assert set(documented) == set(_CODE_NAMES), (
        f"README documents {sorted(documented)}, outcome.py has {sorted(_CODE_NAMES)}"
    )
    # Every code a user's mistake can end with has rows here; 0, 1 (bugs), 4 (gate) and 5 (busy) need a pipeline run
    # or a second process and are checked in test_fault_battery.py / test_pipeline_e2e.py.
    assert {row.code for row in ROWS} == {INVALID, UNUSABLE, UNAVAILABLE}
    assert "KFP" in documented[UNAVAILABLE] and "try again later" in documented[UNAVAILABLE]


if __name__ == "__main__":
    print(readme_table())

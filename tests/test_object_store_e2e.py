"""The loop where a cluster keeps its files: images, pipeline root and served versions all in an s3:// bucket
(tests/s3_server.py: moto on 127.0.0.1 behind a relay that can be switched off), through the real `ftune` CLI.

One bucket, one chain of runs (module-scoped, each on the state the previous one left):

1. `cold`: span-1 -> version 1 in the bucket, exit 0 (not tensorflow-io's 134 at exit);
2. `unchanged`: the same data -> nothing trained, exit 0, outcome no_new_data;
3. `interrupted`: span-2 added with its circle and square folders swapped, a strict floor; the S3 server stops
   once Transform has started -> one line naming the bucket's URI, exit 6 (try again later), version 1 untouched
   object for object;
4. `resumed`: the server back, the same command -> the Trainer warm-starts from version 1 in the bucket, the
   Evaluator compares with it, the gate refuses (exit 4), `refused_attempt.json` lands beside the versions;
then `ftune versions` (the refusal applies), `predict --model-dir s3://...`, `report`, and `rollback --to 1` (the
served version: nothing to do) on those URIs.

A new span that is pushed is not a run of its own here: what it adds over run 4 (a trained model pushed above a
version in the bucket) is run 1's push plus test_object_store_versions.py's pushes above existing versions, and a
whole training run more would cost the suite its 25 minutes.

What runs for real: TensorFlow's S3 filesystem (tensorflow-io), Beam's (boto3), the S3 API as moto implements it
(signatures are checked in test_object_store_versions.py). What does not: AWS S3 or a MinIO server themselves, IAM
policies beyond "allow", TLS, the network of a cluster.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import REPO, SPAN_RUN_SETTINGS, pretrained_weights_path
from s3_server import S3Server

pytestmark = pytest.mark.slow

BUCKET = "ftune-loop"
DATA, ROOT = f"s3://{BUCKET}/images", f"s3://{BUCKET}/pipeline"
SERVING = f"{ROOT}/serving/image_classifier"
CLASSES, PER_CLASS = 3, 16
COMMON = SPAN_RUN_SETTINGS + [
    "eval.max_accuracy_drop=0.2",
    "eval.max_class_recall_drop=0.45",  # ~3 eval images per class: one image is a recall step of 0.33
]
# Run 3: how long the run goes on without an answer from the S3 endpoint before it stops (default 120 s).
WATCH_TIMEOUT_S = 10
# Runs 3-4: a floor no model reaches with two swapped folders in the data.
STRICT = ["eval.accuracy_floor=0.99"]


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    local = tmp_path_factory.mktemp("s3_loop")
    server = S3Server().start()
    server.create_bucket(BUCKET)
    state = {"server": server, "local": local, "state_dir": local / "state", "seconds": {}}
    yield state
    server.stop()


def add_span(loop, number, seed, swap=None):
    """Generates span-<number> locally and uploads it under the data root; `swap` = two class folders exchanged."""
    from pipeline.sample_data import generate_sample_data

    span = loop["local"] / "images" / f"span-{number}"
    generate_sample_data(str(span), classes=CLASSES, per_class=PER_CLASS, seed=seed)
    if swap:
        a, b = swap
        os.rename(span / a, span / "swap")
        os.rename(span / b, span / a)
        os.rename(span / "swap", span / b)
    loop["server"].upload_tree(str(span), f"{DATA}/span-{number}")


def ftune_command(loop, command, *args):
    cmd = [sys.executable, "-m", "pipeline.cli", command, "--pipeline-root", ROOT]
    cmd += ["--set", f"state_dir={loop['state_dir']}", "--set", f"trainer.weights={pretrained_weights_path()}"]
    return cmd + list(args)


def run_command(loop, *overrides):
    cmd = ftune_command(loop, "run", "--data-root", DATA, "--json")
    for item in COMMON + list(overrides):
        cmd += ["--set", item]
    return cmd


def env(loop):
    return dict(os.environ, **loop["server"].environment())


def ftune(loop, label, cmd, timeout=900):
    started = time.monotonic()
    result = subprocess.run(cmd, cwd=REPO, env=env(loop), capture_output=True, text=True, timeout=timeout)
    loop["seconds"][label] = time.monotonic() - started
    return result


def summary(result):
    assert result.stdout.strip(), result.stderr[-3000:]
    return json.loads(result.stdout)


def served_objects(loop):
    """{key: ETag} of every object of the served versions (the refused-attempt record and empty folder markers, as
    TensorFlow's makedirs writes them, aside)."""
    bucket, _, prefix = SERVING[len("s3://") :].partition("/")
    found = {}
    for page in loop["server"].client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            if "refused_attempt" not in o["Key"] and not o["Key"].endswith("/"):
                found[o["Key"]] = o["ETag"]
    return found


def versions_in_bucket(loop):
    return sorted({int(k.split("/")[3]) for k in served_objects(loop) if k.split("/")[3].isdigit()})


@pytest.fixture(scope="module")
def cold(loop):
    add_span(loop, 1, seed=0)
    return ftune(loop, "1 cold", run_command(loop))


@pytest.fixture(scope="module")
def unchanged(loop, cold):
    return ftune(loop, "2 unchanged", run_command(loop))


@pytest.fixture(scope="module")
def interrupted(loop, unchanged):
    """span-2 added (swapped); the server stops once Transform has started: (result, served before, after)."""
    add_span(loop, 2, seed=2, swap=("circle", "square"))
    before = served_objects(loop)
    started = time.monotonic()
    process = subprocess.Popen(
        run_command(loop, f"object_store_timeout_s={WATCH_TIMEOUT_S}", *STRICT),
        cwd=REPO,
        env=env(loop),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "Transform started" in line:
            loop["server"].down()
            break
    out, err = process.communicate(timeout=900)
    loop["seconds"]["3 server stops mid-run"] = time.monotonic() - started
    loop["server"].up()
    result = subprocess.CompletedProcess(process.args, process.returncode, out, "".join(lines) + err)
    return result, before, served_objects(loop)


@pytest.fixture(scope="module")
def resumed(loop, interrupted):
    before = served_objects(loop)
    result = ftune(loop, "4 server back, same command (refused)", run_command(loop, *STRICT))
    return result, before, served_objects(loop)


def test_a_cold_run_pushes_version_1_into_the_bucket(cold, loop):
    assert cold.returncode == 0, cold.stderr[-4000:]
    data = summary(cold)
    assert data["outcome"]["status"] == "pushed"
    assert versions_in_bucket(loop) == [1]
    assert f"{SERVING}/1" in cold.stderr
    # MLMD, the run lock and the report are on this machine, not in the bucket.
    assert (loop["state_dir"] / "metadata.sqlite").is_file()
    assert (loop["state_dir"] / "report" / "index.html").is_file()


def test_unchanged_data_in_the_bucket_is_a_no_op(unchanged, loop):
    assert unchanged.returncode == 0, unchanged.stderr[-4000:]
    assert summary(unchanged)["outcome"]["status"] == "no_new_data"
    assert versions_in_bucket(loop) == [1]


def test_a_server_that_stops_mid_run_is_one_line_and_loses_nothing(interrupted):
    result, before, after = interrupted
    assert result.returncode == 6, result.stderr[-4000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ftune: error: pipeline_root {ROOT}: the S3 endpoint "), last
    assert "does not answer" in last and "the run stopped there" in last
    assert "Traceback" not in result.stderr
    assert after == before  # version 1, object for object


def test_after_the_server_is_back_the_swapped_span_is_refused_and_the_refusal_lands_in_the_bucket(resumed, loop):
    result, before, after = resumed
    assert result.returncode == 4, result.stderr[-4000:]
    assert summary(result)["outcome"]["status"] == "gate_refused"
    assert after == before  # version 1, object for object
    assert "refused_attempt.json" in loop["server"].keys(SERVING)
    assert "warm start from served version 1" in result.stderr, result.stderr[-3000:]


def test_versions_predict_report_and_rollback_work_on_the_bucket(resumed, loop, tmp_path):
    listed = ftune(loop, "versions", ftune_command(loop, "versions", "--json"))
    assert listed.returncode == 0, listed.stderr[-3000:]
    data = json.loads(listed.stdout)
    assert [v["version"] for v in data["versions"]] == [1]
    assert data["serving_model_dir"] == SERVING
    assert data["last_refused_applies"] is True
    assert data["partial_versions"] == []

    image = next((loop["local"] / "images" / "span-1" / "circle").iterdir())
    predicted = ftune(
        loop, "predict", [sys.executable, "-m", "pipeline.cli", "predict", "--model-dir", f"{SERVING}/1",
                          "--format", "json", str(image)]
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    (row,) = json.loads(predicted.stdout)
    assert row["ok"] and row["top"][0]["class"] == "circle"

    report = ftune(loop, "report", ftune_command(loop, "report", "--output", str(tmp_path / "report")))
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "report" / "index.html").is_file()

    rolled = ftune(loop, "rollback", ftune_command(loop, "rollback", "--to", "1"))
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    # Version 1 is the one served (the refusal kept it): nothing to roll back to, nothing published. Republishing
    # an older version into a bucket: test_object_store_versions.py::test_rollback_in_a_bucket_republishes_the_version.
    assert versions_in_bucket(loop) == [1]


def test_wall_times(loop, resumed, request):
    """Each run's wall time here (shown at the end of the module's output)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\nruns on s3:// (wall time here):")
        for label, seconds in loop["seconds"].items():
            print(f"  {label}: {seconds:.1f} s")
    assert loop["seconds"]["2 unchanged"] < loop["seconds"]["1 cold"]
    shutil.rmtree(loop["state_dir"] / "report", ignore_errors=True)

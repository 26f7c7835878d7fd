"""The compiled Kubeflow package with its pipeline root and images in an s3:// bucket, executed task by task
(tests/kfp_spec_harness.py) against a local S3 server (tests/s3_server.py), as on a cluster whose artifacts live in
KFP's MinIO: every task reads and writes its artifacts at s3:// URIs itself (pipeline/kfp_executor.py registers the
filesystem), the endpoint comes from the compiled `kubeflow.s3_endpoint`, the keys from the pod's environment (the
`kubeflow.s3_credentials_secret` Secret on a cluster; the harness does not read Secrets).

One package, serving folder in the bucket too: the first execution trains and pushes version 1 there, every pod
exits 0 (not tensorflow-io's 134); the same again is a no-op, only ChangeCheck runs. With the serving folder on the
PVC instead, what differs is the Pusher copying the model artifact from the bucket to a local folder
(test_object_store_versions.py::test_a_model_in_the_bucket_is_pushed_to_a_volume); mounting the PVC is
test_kfp_spec_execution.py's (a whole execution more here would cost the suite its budget).
"""

import os
import sys

import pytest
from conftest import IN_MEMORY_BEAM, REPO, pretrained_weights_path
from kfp_spec_harness import execute
from s3_server import S3Server

pytestmark = pytest.mark.slow

BUCKET = "ftune-kfp"
ROOT, DATA = f"s3://{BUCKET}/root", f"s3://{BUCKET}/images"
BUCKET_SERVING = f"s3://{BUCKET}/models"
CLASSES, TRAIN_PER_CLASS, EVAL_PER_CLASS = 3, 16, 5


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    from pipeline.sample_data import generate_sample_data

    local = tmp_path_factory.mktemp("kfp_s3")
    server = S3Server().start()
    server.create_bucket(BUCKET)
    generate_sample_data(str(local / "images" / "train"), classes=CLASSES, per_class=TRAIN_PER_CLASS, seed=0)
    generate_sample_data(str(local / "images" / "validation"), classes=CLASSES, per_class=EVAL_PER_CLASS, seed=1)
    server.upload_tree(str(local / "images"), DATA)
    yield server, local
    server.stop()


def compile_package(local, server, name, *overrides):
    import json

    from pipeline import kubeflow_v2_runner
    from pipeline.configs import load_config

    config = load_config(
        overrides=[
            "data.split_mode=presplit",
            "trainer.image_size=96",
            "trainer.batch_size=16",
            "trainer.phase1_epochs=4",
            "trainer.phase2_epochs=1",
            f"trainer.weights={pretrained_weights_path()}",
            "eval.accuracy_floor=0.5",
            f"beam_args={json.dumps(IN_MEMORY_BEAM)}",
            "kubeflow.gpu_count=0",
            f"kubeflow.s3_endpoint={server.endpoint}",
            "kubeflow.s3_credentials_secret=mlpipeline-minio-artifact",
            *overrides,
        ]
    )
    package = local / f"{name}.yaml"
    kubeflow_v2_runner.compile_pipeline(
        config, str(package), image="registry.example/ftune:test", pipeline_root=ROOT, data_root=DATA
    )
    return str(package)


def pod_env(local, server):
    """The image's variables, the project from this checkout, and the S3 keys a Secret would give."""
    env = {
        "PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(local / "home"),
        "PYTHONPATH": REPO,
        "PYTHONUNBUFFERED": "1",
    }
    keys = server.environment()
    env.update({k: keys[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")})
    return env


def run(bucket, package, **kwargs):
    server, local = bucket
    return execute(package, ROOT, {}, image_env=pod_env(local, server), local_dir=str(local / "harness"), **kwargs)


@pytest.fixture(scope="module")
def in_bucket(bucket):
    server, local = bucket
    package = compile_package(
        local, server, "serving_in_bucket", "kubeflow.serving_pvc=", f"push.serving_dir={BUCKET_SERVING}"
    )
    first = run(bucket, package)
    again = run(bucket, package)
    return first, again


def test_every_task_reads_and_writes_the_bucket_and_version_1_lands_there(in_bucket, bucket):
    from serving import sidecars

    server, _ = bucket
    first, _ = in_bucket
    assert set(first.states().values()) == {"executed"}, first.states()
    assert first.run_root.startswith(f"{ROOT}/")
    for name, task in first.tasks.items():
        for artifact in task.outputs.values():
            assert artifact["uri"].startswith(first.run_root), (name, artifact["uri"])
    keys = server.keys(f"{BUCKET_SERVING}/image_classifier")
    assert "1/saved_model.pb" in keys and "1/variables/variables.index" in keys
    assert ".claims/1" in keys
    # ExampleGen's output, written by Beam's S3 filesystem (boto3), is in the bucket.
    examples = first.artifact(sidecars.EXAMPLE_GEN, "examples")["uri"]
    assert any(k.startswith("Split-train/") for k in server.keys(examples))


def test_unchanged_images_in_the_bucket_run_only_the_change_check(in_bucket, bucket):
    from serving import sidecars

    server, _ = bucket
    _, again = in_bucket
    states = again.states()
    assert states.pop(sidecars.CHANGE_CHECK) == "executed"
    assert set(states.values()) == {"skipped"}, states
    versions = {k.split("/")[0] for k in server.keys(f"{BUCKET_SERVING}/image_classifier")}
    assert {v for v in versions if v.isdigit()} == {"1"}

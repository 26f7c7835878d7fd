"""pipeline/object_stores.py without a server: the endpoint variables every layer reads, where local files go when
the pipeline root is a bucket, what the Kubeflow spec gives every pod for s3://. (The server side:
tests/test_object_store_versions.py, test_scheduled_retraining.py, test_kfp_spec_on_s3.py.)"""

import os

import pytest

from pipeline import object_stores
from pipeline.configs import ConfigError, load_config


@pytest.mark.parametrize(
    "given, expected",
    [
        # MinIO's address as boto3 takes it: TensorFlow's variables follow.
        (
            {"AWS_ENDPOINT_URL": "http://minio:9000"},
            {"AWS_ENDPOINT_URL": "http://minio:9000", "S3_ENDPOINT": "http://minio:9000", "S3_USE_HTTPS": "0"},
        ),
        # As older TFX-on-KFP guides write it: a bare host:port gets its scheme (tensorflow-io needs it).
        (
            {"S3_ENDPOINT": "minio:9000", "S3_USE_HTTPS": "0"},
            {"S3_ENDPOINT": "http://minio:9000", "AWS_ENDPOINT_URL": "http://minio:9000"},
        ),
        (
            {"S3_ENDPOINT": "minio:9000"},
            {"S3_ENDPOINT": "https://minio:9000", "AWS_ENDPOINT_URL": "https://minio:9000"},
        ),
        # AWS S3 itself: nothing to derive.
        ({"AWS_REGION": "eu-west-1"}, {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1"}),
    ],
)
def test_one_endpoint_setting_serves_every_layer(given, expected):
    env = dict(given)
    object_stores.configure_environment(env)
    assert {k: env[k] for k in expected} == expected
    if "S3_ENDPOINT" not in expected:
        assert "S3_ENDPOINT" not in env


def test_a_bucket_root_keeps_mlmd_the_lock_and_the_report_local(tmp_path):
    config = load_config(None, ["pipeline_root=s3://bucket/team/ftune"])
    assert config.local_root == os.path.join(
        os.path.expanduser("~"), ".cache", "ftune", "state", "s3", "bucket/team/ftune"
    )
    assert config.metadata_path.startswith(config.local_root) and "://" not in config.metadata_path
    config = load_config(None, ["pipeline_root=s3://bucket/ftune", f"state_dir={tmp_path}"])
    assert config.metadata_path == str(tmp_path / "metadata.sqlite")
    assert config.serving_dir == "s3://bucket/ftune/serving"  # the artifacts and versions stay in the bucket
    local = load_config(None, [f"pipeline_root={tmp_path}"])
    assert local.local_root == str(tmp_path)


def test_each_bucket_is_checked_once_under_the_first_setting_naming_it():
    config = load_config(
        None,
        ["pipeline_root=s3://art/root", "data.data_root=s3://images/flowers", "push.serving_dir=s3://art/models"],
    )
    assert object_stores.buckets(config) == {"pipeline_root": "s3://art/root", "data.data_root": "s3://images/flowers"}


def test_a_pods_buckets_are_found_in_its_invocation():
    argv = ['{"outputs": {"uri": "s3://ftune-art/root/x"}, "data_root": "s3://images-1/a"}', "--beam_plugins=x"]
    assert object_stores.buckets_named(argv) == {"s3://ftune-art": "s3://ftune-art", "s3://images-1": "s3://images-1"}


def test_beam_workers_import_tensorflow_io_only_for_s3():
    assert object_stores.beam_plugin_args(["s3://b/x"], ["--runner=X"]) == [
        "--runner=X",
        "--beam_plugins=tensorflow_io",
    ]
    assert object_stores.beam_plugin_args(["gs://b/x", "/local"], ["--runner=X"]) == ["--runner=X"]


def test_the_timeout_must_be_positive():
    with pytest.raises(ConfigError, match="object_store_timeout_s"):
        load_config(None, ["object_store_timeout_s=0"])

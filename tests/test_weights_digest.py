"""trainer.weights compared by content (trainer/weights_digest.py, components/change_check.py): the same bytes under
another path do not retrain, other bytes at the same path do; the digest is cached by real path, size and mtime.
The decision functions are called directly on a small fake weights file; no pipeline runs."""

import json
import os
import shutil

import pytest

from components import atomic_pusher
from components import change_check as cc
from pipeline.configs import PipelineConfig
from pipeline.local_runner import change_key
from trainer import weights_digest as wd

FINGERPRINT = "sha256:data"


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    """The digest cache under the test's folder, not the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "ftune" / wd.CACHE_FILE


@pytest.fixture
def weights(tmp_path):
    """a/base.h5 (fake bytes) and b -> a, a symlinked folder: one file, two paths."""
    folder = tmp_path / "a"
    folder.mkdir()
    path = folder / "base.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 40)
    os.symlink(folder, tmp_path / "b")
    return str(path), str(tmp_path / "b" / "base.h5")


def config_dict(weights: str) -> dict:
    config = PipelineConfig()
    config.trainer.weights = weights
    return config.to_dict()


def served_record(weights: str, digest="from the check") -> dict:
    """A served version's record as the Pusher writes it: the path in the settings, the digest the check saw
    (digest=None: a record written before weights_digest existed)."""
    record = {"data": {"fingerprint": FINGERPRINT, "spans": []}, "settings": config_dict(weights)}
    if digest == "from the check":
        digest = cc.current_settings(config_dict(weights), {})[cc.WEIGHTS_KEY]
    if digest is not None:
        record[cc.WEIGHTS_DIGEST_KEY] = digest
    return record


def decide(weights_now: str, record: dict, refused=None) -> cc.Decision:
    return cc.decide(
        fingerprint=FINGERPRINT,
        spans=[],
        settings=cc.current_settings(config_dict(weights_now), {}),
        served_version=3,
        served_record=record,
        refused=refused,
        force=False,
    )


def rewrite(path: str, data: bytes) -> None:
    """Other bytes at the same path, with a later mtime (as a copy over it would have)."""
    stat = os.stat(path)
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_keywords_uris_and_missing_files_stay_strings(tmp_path):
    for value in ("", "imagenet", "ImageNet", "none", "gs://bucket/base.h5", "s3://b/w.h5", str(tmp_path / "no.h5")):
        assert wd.weights_identity(value) == value
    assert wd.weights_identity(str(tmp_path)) == str(tmp_path)  # a folder is not a weights file
    assert wd.weights_identity("sha256:abc") == "sha256:abc"


def test_a_weights_file_is_its_sha256(weights):
    import hashlib

    real, _ = weights
    with open(real, "rb") as f:
        expected = "sha256:" + hashlib.sha256(f.read()).hexdigest()
    assert wd.weights_identity(real) == expected
    settings = cc.current_settings(config_dict(real), {})
    assert settings[cc.WEIGHTS_KEY] == expected
    assert cc.current_settings(config_dict("imagenet"), {})[cc.WEIGHTS_KEY] == "imagenet"


def test_the_same_bytes_under_another_path_do_not_retrain(weights, tmp_path):
    real, linked = weights
    record = served_record(real)
    decision = decide(linked, record)
    assert not decision.changed, decision.reason
    assert decision.reason == "no new data; version 3 stays served"
    copy = str(tmp_path / "copy.h5")
    shutil.copyfile(real, copy)
    assert not decide(copy, record).changed


def test_other_bytes_at_the_same_path_retrain(weights):
    real, linked = weights
    record = served_record(real)
    before = record[cc.WEIGHTS_DIGEST_KEY]
    rewrite(real, b"other weights")
    decision = decide(real, record)
    assert decision.changed
    after = wd.weights_identity(real)
    assert decision.reason == f"settings changed: trainer.weights ('{before[:19]}' -> '{after[:19]}')"
    assert decide(linked, record).changed


def test_keywords_still_compare_as_strings(weights):
    real, _ = weights
    assert not decide("imagenet", served_record("imagenet")).changed
    decision = decide(real, served_record("imagenet"))
    assert decision.changed and decision.reason.startswith("settings changed: trainer.weights ('imagenet' -> 'sha256:")


def test_a_record_from_before_the_digest_hashes_its_path_as_it_is_now(weights, tmp_path):
    """Old records hold the path only: its file now (the old comparison by path assumed it unchanged too), so an
    upgrade does not retrain; a path that is gone compares as the string, and that retrains."""
    real, linked = weights
    old = served_record(real, digest=None)
    assert cc.WEIGHTS_DIGEST_KEY not in old
    assert not decide(real, old).changed
    assert not decide(linked, old).changed
    gone = served_record(str(tmp_path / "gone" / "base.h5"), digest=None)
    decision = decide(real, gone)
    assert decision.changed
    assert f"trainer.weights ('{tmp_path}/gone/base.h5' -> 'sha256:" in decision.reason


def test_a_refused_attempt_compares_weights_by_content(weights):
    real, linked = weights
    served = served_record(real, digest=None)
    served["data"]["fingerprint"] = "sha256:older data"
    tried = cc.Decision(True, "new data", 3, FINGERPRINT, cc.current_settings(config_dict(real), {}))
    refused = cc.refused_attempt(tried, ["accuracy 0.4 < floor 0.6"], "run-1")
    assert decide(linked, served, refused).refused
    # A refusal written before: the path in its settings.
    refused["settings"] = cc.training_settings(config_dict(real))
    assert decide(linked, served, refused).refused


def test_the_pusher_records_the_digest_the_check_compared(tmp_path):
    record = atomic_pusher.build_record(str(tmp_path), None, None, config_dict("/w/base.h5"), None, "sha256:ab12")
    assert record[cc.WEIGHTS_DIGEST_KEY] == "sha256:ab12"
    assert record["settings"]["trainer"]["weights"] == "/w/base.h5"
    for value in ("imagenet", "gs://b/w.h5", None):
        assert atomic_pusher.build_record(str(tmp_path), None, None, None, None, value)[cc.WEIGHTS_DIGEST_KEY] is None


def test_the_digest_is_cached_by_real_path_size_and_mtime(weights, cache_home, monkeypatch):
    real, linked = weights
    hashed = []
    original = wd._hash_file
    monkeypatch.setattr(wd, "_hash_file", lambda path: hashed.append(path) or original(path))
    first = wd.weights_identity(real)
    assert wd.weights_identity(real) == wd.weights_identity(linked) == first
    assert hashed == [os.path.realpath(real)], "read once: the symlinked path is the same real file"
    entry = json.loads(cache_home.read_text())[os.path.realpath(real)]
    assert entry["sha256"] == first[len("sha256:") :] and entry["size"] == os.path.getsize(real)
    stat = os.stat(real)
    os.utime(real, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: same bytes, read again
    assert wd.weights_identity(real) == first and len(hashed) == 2
    rewrite(real, b"other weights")
    assert wd.weights_identity(real) != first and len(hashed) == 3
    assert len(json.loads(cache_home.read_text())) == 1, "one entry per file, replaced"


def test_a_broken_or_unwritable_cache_only_costs_a_read(weights, cache_home, tmp_path):
    real, _ = weights
    cache_home.parent.mkdir(parents=True)
    cache_home.write_text("{not json")
    digest = wd.weights_identity(real)
    assert json.loads(cache_home.read_text())[os.path.realpath(real)]["sha256"] in digest
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    assert wd.weights_identity(real, cache_path=str(blocked / "ftune" / wd.CACHE_FILE)) == digest


def test_the_local_runs_cache_key_follows_the_bytes(weights, tmp_path):
    """MLMD reuses the change check's decision only while change_key is unchanged: other bytes at the same path
    change it, the same file by another path does not."""
    real, linked = weights
    for name in ("cats", "dogs"):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "x.jpg").write_bytes(b"jpeg")
    config = PipelineConfig()
    config.pipeline_root = str(tmp_path / "root")

    def key(path: str) -> str:
        config.trainer.weights = path
        return change_key(config, str(tmp_path / "data"), "hash", [])

    before = key(real)
    assert key(linked) == before
    rewrite(real, b"other weights")
    assert key(real) != before

"""The serving folder's versions with their records: push with a record, `ftune versions`, `ftune rollback`.

Fast: the "models" are small folders with a saved_model.pb and fingerprint.pb (what served_versions and
same_model_served look at); the whole pipeline's versions are checked in test_governance_e2e.py."""

import json
import os
import threading

import numpy as np
import pytest

from pipeline import cli, outcome
from serving import model_record, model_versions, sidecars


def fake_model(path, content: bytes):
    os.makedirs(os.path.join(path, "variables"), exist_ok=True)
    for name in ("saved_model.pb", "fingerprint.pb", "variables/variables.index"):
        with open(os.path.join(path, name), "wb") as f:
            f.write(content + name.encode())
    return str(path)


def trained_record(accuracy, fingerprint):
    return {
        "version": None,
        "kind": "trained",
        "rollback_of": None,
        "pushed_at": model_record.utc_now(),
        "labels": ["a", "b"],
        "data": {"roots": ["/data/images"], "fingerprint": fingerprint, "images_per_class": None, "spans": None},
        "metrics": {"accuracy": accuracy, "macro_recall": accuracy - 0.01},
    }


@pytest.fixture
def serving(tmp_path):
    """A pipeline root whose serving folder holds versions 1 and 2, each pushed with its record."""
    root = tmp_path / "root"
    base = os.path.join(root, "serving", "image_classifier")
    for version, accuracy in ((1, 0.91), (2, 0.93)):
        model = fake_model(tmp_path / f"model{version}", f"model {version}".encode())
        assert model_versions.push(model, base, trained_record(accuracy, f"sha256:{version}" * 4)) == version
    return str(root), base


def test_push_writes_the_record_inside_the_version(serving):
    _, base = serving
    record = sidecars.read_model_record(os.path.join(base, "2"))
    assert record["version"] == 2 and record["metrics"]["accuracy"] == 0.93
    assert os.path.isfile(sidecars.model_record_path(os.path.join(base, "2")))
    assert sorted(os.listdir(base)) == ["1", "2"]  # no staging folder left behind


def test_rollback_republishes_as_the_new_highest_version(serving, capsys):
    root, base = serving
    assert cli.main(["rollback", "--pipeline-root", root]) == outcome.EXIT_OK  # default: the one below the served
    assert model_versions.served_versions(base) == [1, 2, 3]
    for name in ("saved_model.pb", "fingerprint.pb", "variables/variables.index"):
        with open(os.path.join(base, "1", name), "rb") as a, open(os.path.join(base, "3", name), "rb") as b:
            assert a.read() == b.read()
    record = sidecars.read_model_record(os.path.join(base, "3"))
    assert (record["version"], record["kind"], record["rollback_of"]) == (3, "rollback", 1)
    assert record["data"] == sidecars.read_model_record(os.path.join(base, "1"))["data"]
    assert sidecars.read_model_record(os.path.join(base, "1"))["kind"] == "trained"  # the original is untouched
    assert "version 3" in capsys.readouterr().out

    assert cli.main(["rollback", "--pipeline-root", root, "--to", "3"]) == outcome.EXIT_OK  # already served
    assert model_versions.served_versions(base) == [1, 2, 3]
    assert cli.main(["rollback", "--pipeline-root", root, "--to", "7"]) == outcome.EXIT_INVALID_SETTINGS
    assert "no such version under" in capsys.readouterr().err


def test_rollback_with_one_version_is_refused(tmp_path, capsys):
    base = os.path.join(tmp_path, "root", "serving", "image_classifier")
    model_versions.push(fake_model(tmp_path / "m", b"only"), base)
    assert cli.main(["rollback", "--pipeline-root", str(tmp_path / "root")]) == outcome.EXIT_INVALID_SETTINGS
    assert "nothing to roll back to" in capsys.readouterr().err


def test_versions_table_and_json(serving, capsys):
    root, base = serving
    with open(os.path.join(base, "1", "saved_model.pb"), "ab"):
        pass
    os.makedirs(os.path.join(base, "7"))  # an incomplete folder (no saved_model.pb) is not a version
    assert cli.main(["versions", "--pipeline-root", root, "--json"]) == outcome.EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["served"]) for v in listed["versions"]] == [(1, False), (2, True)]
    assert listed["versions"][0]["record"]["metrics"]["accuracy"] == 0.91
    assert cli.main(["versions", "--pipeline-root", root]) == outcome.EXIT_OK
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["version", "pushed", "(UTC)"]
    assert lines[2].startswith("2 ") and "0.930" in lines[2] and "0.920" in lines[2]
    assert "/data/images" in lines[2] and "TF Serving serves this" in lines[2]
    assert "TF Serving serves this" not in lines[1]


# --- atomic push under a polling reader (moved from test_pipeline_e2e.py) ----------------------------------------


def test_polling_reader_only_sees_complete_versions(tmp_path):
    source = tmp_path / "model"
    (source / "variables").mkdir(parents=True)
    files = {
        "saved_model.pb": 3_000_000,
        "variables/variables.data-00000-of-00001": 40_000_000,
        "variables/variables.index": 200_000,
        "fingerprint.pb": 100,
    }
    rng = np.random.default_rng(0)
    for name, size in files.items():
        (source / name).write_bytes(rng.bytes(size))
    serving = tmp_path / "serving" / "m"
    seen_incomplete, polls = [], [0]
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            polls[0] += 1
            for name in os.listdir(serving) if serving.exists() else []:
                if not name.isdigit():
                    continue  # TF Serving ignores non-integer folder names
                for rel, size in files.items():
                    path = serving / name / rel
                    if not path.exists() or path.stat().st_size != size:
                        seen_incomplete.append((name, rel))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        pushed = [model_versions.push_atomically(str(source), str(serving)) for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    assert pushed == [1, 2, 3]
    assert polls[0] > 10, "the reader must have polled during the pushes"
    assert seen_incomplete == []
    assert sorted(os.listdir(serving)) == ["1", "2", "3"]  # no staging leftovers
    assert model_versions.prune_versions(str(serving), keep=2) == [1]
    assert sorted(os.listdir(serving)) == ["2", "3"]

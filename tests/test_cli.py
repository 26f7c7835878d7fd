"""The `ftune` command line: help for every command, errors that name the setting or file at fault."""

import json
import subprocess
import sys
import time

import pytest
from conftest import REPO

from pipeline import cli, outcome
from pipeline.configs import ConfigError, load_config


def ftune(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=300
    )


def test_every_command_has_help():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"sample-data", "config", "ingest", "run", "report", "versions", "rollback"} <= set(commands)
    for name, sub in commands.items():
        text = sub.format_help()
        assert len(sub.description or "") > 20, f"`ftune {name} --help` needs a description"
        assert "usage: ftune" in text


def test_config_overrides_are_typed_and_shown():
    result = ftune("config", "--set", "trainer.phase1_epochs=3", "--set", "eval.accuracy_floor=0.75")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["trainer"]["phase1_epochs"] == 3 and config["eval"]["accuracy_floor"] == 0.75


@pytest.mark.parametrize(
    "override, named",
    [
        ("trainer.bogus=1", "trainer.bogus"),
        ("trainer.learning_rate=fast", "trainer.learning_rate"),
        ("data.eval_fraction=1.5", "data.eval_fraction"),
        ("trainer.phase1_mode=sometimes", "trainer.phase1_mode must be one of cached_features, end_to_end"),
        ("trainer.learning_rate=inf", "trainer.learning_rate must be a finite number"),
        ("trainer.base_model=vgg16", "trainer.base_model must be one of mobilenet_v2, efficientnet_b0"),
        ("trainer.fine_tune_at=200", "below the 154 layers of trainer.base_model=mobilenet_v2"),
        ("trainer.fine_tune_at=12.5", "trainer.fine_tune_at must be a whole layer index"),
        ("push.model_name=../escape", "push.model_name must be a folder name"),
        ("eval.class_recall_floor=1.5", "eval.class_recall_floor must be in [0, 1]"),
        ("eval.min_class_examples=0", "eval.min_class_examples must be at least 1"),
    ],
)
def test_bad_settings_are_errors_naming_the_key(override, named):
    result = ftune("config", "--set", override)
    assert result.returncode == outcome.EXIT_INVALID_SETTINGS == 2
    assert named in result.stderr and "Traceback" not in result.stderr


def test_config_file_is_merged_and_checked(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("trainer:\n  base_model: efficientnet_b0\n  phase2_epochs: 0\npush:\n  keep_versions: 2\n")
    config = load_config(str(good), ["trainer.phase2_epochs=4"])
    assert (config.trainer.base_model, config.trainer.phase2_epochs, config.push.keep_versions) == (
        "efficientnet_b0",
        4,
        2,
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="trainer.epochs"):
        load_config(str(bad))


def test_missing_weights_file_stops_before_anything_runs(tmp_path):
    started = time.monotonic()
    result = ftune("run", "--pipeline-root", str(tmp_path / "root"), "--weights", str(tmp_path / "nope.h5"))
    assert result.returncode == outcome.EXIT_INVALID_SETTINGS  # trainer.weights names a file that is not there
    assert "nope.h5" in result.stderr and "trainer.weights" in result.stderr
    assert not (tmp_path / "root").exists()
    # Answered before TensorFlow loads (~12 s here when it did; 0.3 s now): a generous bound for a loaded machine.
    assert time.monotonic() - started < 5


def test_no_weights_and_no_network_is_a_clear_error(tmp_path):
    """Without a file and without network, the ImageNet download fails: the error says how to supply weights."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "FTUNE_WEIGHTS"}
    env["KERAS_HOME"] = str(tmp_path / "keras_home")  # an empty cache, so Keras really has to download
    env["HTTPS_PROXY"] = env["HTTP_PROXY"] = "http://127.0.0.1:9"  # nothing listens there: fails at once
    result = ftune("run", "--pipeline-root", str(tmp_path / "root"), env=env)
    assert result.returncode == outcome.EXIT_UNUSABLE_INPUT, result.stderr[-2000:]
    assert "FTUNE_WEIGHTS" in result.stderr and "--weights" in result.stderr


def test_missing_data_root_is_named(tmp_path):
    result = ftune("ingest", "--pipeline-root", str(tmp_path / "root"), "--data-root", str(tmp_path / "nothing"))
    assert result.returncode == outcome.EXIT_UNUSABLE_INPUT and "nothing" in result.stderr


def test_unusable_data_is_reported_as_such(tmp_path):
    (tmp_path / "data" / "only_class").mkdir(parents=True)
    (tmp_path / "data" / "only_class" / "a.txt").write_text("x")
    result = ftune(
        "ingest",
        "--pipeline-root",
        str(tmp_path / "root"),
        "--data-root",
        str(tmp_path / "data"),
        "--set",
        'beam_args=["--direct_running_mode=in_memory"]',
    )
    assert result.returncode == outcome.EXIT_UNUSABLE_INPUT
    assert "unusable data" in result.stderr and "at least 2" in result.stderr


def test_every_command_has_the_quiet_console_and_verbose():
    parser = cli.build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        assert "--verbose" in sub.format_help(), f"`ftune {name}` has no --verbose"


def test_a_bug_is_a_traceback_and_a_line_saying_so(monkeypatch, capsys):
    def broken(args):
        raise KeyError("no such key in a dict ftune built itself")

    monkeypatch.setattr(cli, "cmd_config", broken)
    assert cli.main(["config"]) == outcome.EXIT_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err
    assert err.strip().splitlines()[-1].startswith("ftune: error: unexpected KeyError") and "bug" in err


def test_user_errors_are_found_anywhere_in_the_chain():
    from pipeline.cli_errors import classify_error

    try:
        try:
            raise ConfigError("trainer.bogus is not a setting")
        except ConfigError as inner:
            raise RuntimeError("TFX wrapped it") from inner
    except RuntimeError as wrapped:
        assert classify_error(wrapped) == (outcome.EXIT_INVALID_SETTINGS, "trainer.bogus is not a setting")
    denied = PermissionError(13, "Permission denied", "/srv/report")
    assert classify_error(denied) == (outcome.EXIT_UNUSABLE_INPUT, "Permission denied: /srv/report")
    assert classify_error(ValueError("a bug")) is None
    assert classify_error(OSError("an OSError without a path is a bug too")) is None


def test_argument_errors_are_one_line_exit_2():
    result = ftune("rollback", "--to", "latest")
    assert result.returncode == outcome.EXIT_INVALID_SETTINGS
    assert result.stderr.strip().splitlines() == [
        "ftune rollback: error: argument --to: invalid int value: 'latest' (see `ftune rollback --help`)"
    ]


# Runs a command in-process, then says which heavy libraries it imported.
_IMPORTS_AFTER = """
import sys
from pipeline import cli
code = cli.main(sys.argv[1:])
print("loaded:", sorted(m for m in ("tensorflow", "tfx", "apache_beam") if m in sys.modules), "exit:", code)
"""


def test_record_and_kfp_commands_start_without_tensorflow(tmp_path):
    """`versions`, `rollback` (with a real copy) and `submit` (against a closed port) on local paths never import
    TensorFlow, TFX or Beam; nor does `compile --help`."""
    base = tmp_path / "serving" / "image_classifier"
    for version in (1, 2):
        (base / str(version) / "assets.extra").mkdir(parents=True)
        (base / str(version) / "saved_model.pb").write_bytes(b"model %d" % version)
        (base / str(version) / "assets.extra" / "model_record.json").write_text(json.dumps({"version": version}))
    package = tmp_path / "p.yaml"
    package.write_text(json.dumps({"pipelineInfo": {"name": "ftune"}, "root": {"dag": {"tasks": {}}}}))
    serving = f"push.serving_dir={tmp_path / 'serving'}"
    for argv, code in (
        (["versions", "--set", serving], outcome.EXIT_OK),
        (["rollback", "--set", serving], outcome.EXIT_OK),
        (["submit", "--host", "http://127.0.0.1:9", "--package", str(package), "--timeout", "1"], 6),
    ):
        result = subprocess.run(
            [sys.executable, "-c", _IMPORTS_AFTER, *argv], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert f"loaded: [] exit: {code}" in result.stdout, (argv, result.stdout, result.stderr[-2000:])
    assert (base / "3" / "saved_model.pb").read_bytes() == b"model 1"  # the rollback did copy version 1
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pipeline.cli", "compile", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and " tensorflow\n" not in result.stderr and " tfx\n" not in result.stderr


REFUSED_CHECKS = [
    "class 'square' recall 0.000 is below the floor 0.300",
    "class 'square' recall 0.000 vs 1.000 on the served model (version 1): changed by -1.000, at most 0.100 drop "
    "allowed",
]


def test_versions_shows_the_last_refusal_while_it_applies(tmp_path, capsys):
    """`ftune versions` names the last refused attempt (refused_attempt.json beside the versions) while the version
    it was compared with is served, without TensorFlow; a push since makes it history, kept in --json only."""
    from serving import sidecars

    base = tmp_path / "serving" / "image_classifier"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"model 1")
    sidecars.write_model_record(str(base / "1"), {"version": 1, "kind": "trained", "metrics": {"accuracy": 0.9}})
    attempt = {
        "fingerprint": "sha256:abc",
        "settings": {"trainer.phase1_epochs": 2},
        "served_version": 1,
        "failed_checks": REFUSED_CHECKS,
        "pipeline_run": "20261204-061000.123456",
        "time": "2026-12-04T06:10:00+00:00",
    }
    sidecars.write_refused_attempt(str(base), attempt)
    serving = ["--set", f"push.serving_dir={tmp_path / 'serving'}"]

    result = subprocess.run(
        [sys.executable, "-c", _IMPORTS_AFTER, "versions", *serving],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "loaded: [] exit: 0" in result.stdout, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[1].startswith("1 ") and "TF Serving serves this" in lines[1]
    assert lines[2] == (
        "last refused: 2026-12-04T06:10:00+00:00 (run 20261204-061000.123456) against version 1: class 'square' "
        "recall 0.000 is below the floor 0.300 (and 1 more)"
    )
    assert "version 1 stays served" in lines[3] and "--force" in lines[3] and "force=1" in lines[3]
    assert cli.main(["versions", "--json", *serving]) == outcome.EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert listed["last_refused"] == attempt and listed["last_refused_applies"] is True

    # Version 2 pushed since: the change check no longer holds the refusal, and the table ends with the versions.
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_bytes(b"model 2")
    assert cli.main(["versions", *serving]) == outcome.EXIT_OK
    out = capsys.readouterr().out
    assert "last refused" not in out and out.strip().splitlines()[-1].startswith("2 ")
    assert cli.main(["versions", "--json", *serving]) == outcome.EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert listed["last_refused"] == attempt and listed["last_refused_applies"] is False


def test_versions_shows_a_refused_first_run_and_names_a_broken_refusal_file(tmp_path, capsys):
    from serving import sidecars

    base = tmp_path / "serving" / "image_classifier"
    attempt = {"served_version": -1, "failed_checks": REFUSED_CHECKS[:1], "pipeline_run": None, "time": "t0"}
    sidecars.write_refused_attempt(str(base), attempt)
    serving = ["--set", f"push.serving_dir={tmp_path / 'serving'}"]
    assert cli.main(["versions", *serving]) == outcome.EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"[ftune] no versions under {base}"
    assert lines[1] == f"last refused: t0 against nothing served: {REFUSED_CHECKS[0]}"
    assert "while nothing is served" in lines[2]
    (base / sidecars.REFUSED_ATTEMPT_FILE).write_text("{not json")
    assert cli.main(["versions", *serving]) == outcome.EXIT_UNUSABLE_INPUT
    err = capsys.readouterr().err
    assert sidecars.REFUSED_ATTEMPT_FILE in err and "not JSON" in err and "delete the file" in err

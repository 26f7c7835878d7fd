"""Follows the Getting started page (docs/getting-started.md) and nothing else, as a new user would.

Every fenced ```bash block of the page is run, in order, as one bash script in a temporary folder that stands for
the checkout (links to this checkout's files, its `.venv` included, and no `outputs/`), with HOME pointing at a
temporary folder, so that the page's `~/...` paths land there. The only additions are documented `--set` options
appended to each `ftune run` that make training tiny (TINY_SETTINGS, like conftest's small run) and the weights
file in FTUNE_WEIGHTS, as the page says to do offline. The run must reach a served model (a version folder with
saved_model.pb) and the page's second run must be the no-op it promises.

The fast tests check, without running anything, that every `ftune` command on the page parses with the real
parser and that the appended settings are valid ones.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
from typing import List

import pytest
from conftest import REPO, pretrained_weights_path

PAGE = os.path.join(REPO, "docs", "getting-started.md")
# Documented settings (docs/reference/settings.md) that make training tiny; the gate's floors are 0 so that the
# tiny model is pushed whatever its accuracy: the page's path, not the model's quality, is under test here.
TINY_SETTINGS = [
    "trainer.image_size=96",
    "trainer.batch_size=16",
    "trainer.phase1_epochs=3",
    "trainer.phase2_epochs=2",
    "eval.accuracy_floor=0",
    "eval.class_recall_floor=0",
]
# Left out of the folder standing for the checkout: what a fresh clone does not have.
NOT_IN_A_CLONE = {".git", "outputs", "site", ".pytest_cache"}


def bash_blocks(text: str) -> List[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def page_script(settings: List[str] = ()) -> str:
    """The page's bash blocks as one script, `--set` for each of `settings` inserted after every `ftune run`."""
    with open(PAGE, encoding="utf-8") as f:
        blocks = bash_blocks(f.read())
    extra = "".join(f" --set {shlex.quote(item)}" for item in settings)
    lines = []
    for line in "\n".join(blocks).splitlines():
        code, sep, comment = line.partition(" #")
        lines.append(re.sub(r"\bftune run\b", "ftune run" + extra, code) + sep + comment)
    return "\n".join(lines) + "\n"


def page_commands() -> List[List[str]]:
    """Each command of the page's bash blocks, split as the shell would (comments dropped, `\\` lines joined)."""
    script = page_script().replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in script.splitlines() if shlex.split(line, comments=True)]


def test_the_page_has_the_steps_the_test_relies_on():
    programs = [" ".join(argv[:2]) for argv in page_commands()]
    assert programs[0] == "make setup"
    for step in (".venv/bin/ftune run", ".venv/bin/ftune predict", ".venv/bin/ftune versions"):
        assert step in programs, step
    assert programs.count(".venv/bin/ftune run") >= 2, "the page's second run (the no-op) is missing"


def test_every_ftune_command_on_the_page_parses():
    from pipeline.cli import build_parser

    for argv in page_commands():
        if argv[0].endswith("ftune"):
            build_parser().parse_args(argv[1:])  # a wrong flag exits 2 (SystemExit fails the test)


def test_the_tiny_settings_are_valid():
    from pipeline.configs import load_config

    load_config(None, TINY_SETTINGS)


@pytest.mark.slow
def test_the_getting_started_page_reaches_a_served_model(tmp_path):
    # The page's `make setup` must find everything installed: in the stand-in checkout it would otherwise
    # reinstall this checkout's editable package from the temporary folder.
    up_to_date = subprocess.run(["make", "-q", ".venv/.installed"], cwd=REPO)
    assert up_to_date.returncode == 0, "run `make setup` first"
    checkout = tmp_path / "ftune"
    checkout.mkdir()
    for name in sorted(os.listdir(REPO)):
        if name not in NOT_IN_A_CLONE:
            os.symlink(os.path.join(REPO, name), checkout / name)
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), FTUNE_WEIGHTS=pretrained_weights_path())
    script = "set -euxo pipefail\n" + page_script(TINY_SETTINGS)
    result = subprocess.run(["bash", "-c", script], cwd=checkout, env=env, capture_output=True, text=True, timeout=1800)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    served = glob.glob(os.path.join(home, "**", "serving", "*", "[0-9]*", "saved_model.pb"), recursive=True)
    assert served, "no served model under the page's folders:\n" + log[-6000:]
    assert "no new data; version 1 stays served" in log, log[-3000:]
    assert not os.path.exists(checkout / "outputs"), "the page wrote outside the folders it names"

"""A run's scratch folder (pipeline/scratch.py): temporary files made during the run go into it, and it is removed
at the end, also when the run fails. Milliseconds."""

import os
import tempfile

import pytest

from pipeline.scratch import run_scratch


def test_temporary_files_of_a_run_go_into_its_scratch_folder_which_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with run_scratch() as folder:
        assert os.path.dirname(folder) == str(tmp_path)
        made = tempfile.mkdtemp()  # as TFX's build_ephemeral_package does
        assert made.startswith(folder + os.sep)
        open(os.path.join(made, "tfx_ephemeral-1.16.0.tar.gz"), "wb").close()
    assert os.listdir(tmp_path) == [] and tempfile.tempdir == str(tmp_path)


def test_the_scratch_folder_goes_also_when_the_run_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(RuntimeError, match="component failed"):
        with run_scratch():
            tempfile.mkstemp()
            raise RuntimeError("component failed")
    assert os.listdir(tmp_path) == [] and tempfile.tempdir == str(tmp_path)

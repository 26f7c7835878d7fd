"""The compiled Kubeflow package, executed task by task (tests/kfp_spec_harness.py), from the project installed as a
wheel -- the closest this machine gets to a KFP run in the project image.

One wheel is built from the tracked sources and installed without dependencies into an empty folder; that folder
alone puts the project on the tasks' PYTHONPATH (the image installs the same wheel). Then, on generated sample data:

1. execution 1 with the compiled defaults: every task runs, the model is blessed, version 1 lands on the serving
   volume, and its `serving_default` signature names the right class for images it never saw;
2. execution 2 of the same package with other run parameters (1 warm epoch, no fine-tuning, accuracy_floor=1.0):
   the Trainer warm-starts from the served version 1 and trains what the parameters say, the Evaluator compares
   against the served version 1 and refuses, and the serving volume is left exactly as it was. The validation
   split holds one image under two labels, so no model can reach accuracy 1.0 and the refusal is certain (the
   sample shapes are easy enough that a warm-started model often scores 1.0 on the rest). With unchanged
   data every task runs again: ImageExampleGen is never cached (the spec says so), so no downstream cache key can
   match -- what a scheduled run does on KFP.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import IN_MEMORY_BEAM, REPO, pretrained_weights_path, tree_digest
from kfp_spec_harness import execute, read_package

pytestmark = pytest.mark.slow

CLASSES, TRAIN_PER_CLASS, EVAL_PER_CLASS = 3, 24, 6
PVC = "ftune-models"
MODEL_NAME = "image_classifier"
# Files that are not part of the source tree the image is built from (.dockerignore keeps them out too).
_NOT_SOURCE = (".git", ".venv", "outputs", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache")


# --- the wheel, installed alone ------------------------------------------------------------------------------------


def copy_sources(dest):
    """The tracked files (git ls-files), or the tree minus local state when there is no git checkout."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    if listed.returncode == 0 and listed.stdout:
        names = [n for n in listed.stdout.decode().split("\0") if n]
    else:
        names = []
        for dirpath, dirnames, filenames in os.walk(REPO):
            dirnames[:] = [d for d in dirnames if d not in _NOT_SOURCE and not d.endswith(".egg-info")]
            names += [os.path.relpath(os.path.join(dirpath, f), REPO) for f in filenames]
    for name in names:
        source = os.path.join(REPO, name)
        if os.path.isfile(source):
            target = os.path.join(dest, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(source, "rb") as f, open(target, "wb") as g:
                g.write(f.read())


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory):
    """(wheel path, folder holding only the installed project), like the Dockerfile's `pip wheel` + `pip install`."""
    root = tmp_path_factory.mktemp("wheel")
    source, wheels, site = root / "src", root / "wheels", root / "site"
    copy_sources(str(source))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    # No build isolation: no network here; the venv's setuptools builds it (the image build uses isolation).
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = wheels.glob("ftune-*.whl")
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    return wheel, site


def image_env(site, home):
    """The variables a pod of the image has (Dockerfile ENV), with the wheel's folder as its site-packages."""
    os.makedirs(home, exist_ok=True)
    return {
        "PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "PYTHONPATH": str(site),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


# --- the package, compiled as `ftune compile` does -------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory, installed_wheel):
    from pipeline import kubeflow_v2_runner
    from pipeline.configs import load_config
    from pipeline.sample_data import generate_sample_data

    root = tmp_path_factory.mktemp("kfp_exec")
    data = root / "data"
    generate_sample_data(str(data / "train"), classes=CLASSES, per_class=TRAIN_PER_CLASS, seed=0)
    counts = generate_sample_data(str(data / "validation"), classes=CLASSES, per_class=EVAL_PER_CLASS, seed=1)
    # One validation image also filed under a second class: a model gets at most one of the two right.
    first_class, second_class = sorted(counts)[:2]
    image = sorted((data / "validation" / first_class).iterdir())[0]
    shutil.copyfile(image, data / "validation" / second_class / f"mislabelled_{image.name}")
    config = load_config(
        overrides=[
            "data.split_mode=presplit",
            "trainer.image_size=96",
            "trainer.batch_size=16",
            "trainer.phase1_epochs=6",
            "trainer.phase2_epochs=2",
            # The pods have no FTUNE_WEIGHTS: the weights file is a setting compiled into the spec.
            f"trainer.weights={pretrained_weights_path()}",
            "eval.accuracy_floor=0.7",
            f"beam_args={json.dumps(IN_MEMORY_BEAM)}",
            f"kubeflow.serving_pvc={PVC}",
            # Where the PVC is mounted in the pods: a folder this machine can create (the cluster's is /models).
            f"kubeflow.serving_mount_path={root / 'mnt' / 'models'}",
        ]
    )
    package = root / "pipeline.yaml"
    kubeflow_v2_runner.compile_pipeline(
        config,
        str(package),
        image="registry.example/ftune:test",
        pipeline_root="gs://ftune-harness/root",  # what the spec says; each execution uses a local root instead
        data_root=str(data),
    )
    return {
        "root": root,
        "package": str(package),
        "volume": root / "volumes" / PVC,
        "mount": root / "mnt" / "models",
        "env": image_env(installed_wheel[1], root / "home"),
    }


def run(setup, **params):
    return execute(
        setup["package"],
        str(setup["root"] / "pipeline_root"),
        params,
        image_env=setup["env"],
        volumes={PVC: str(setup["volume"])},
    )


@pytest.fixture(scope="module")
def first(setup):
    return run(setup)


@pytest.fixture(scope="module")
def second(setup, first):
    before = tree_digest(setup["volume"])
    # Version 1 is served, so the Trainer warm-starts (trainer.warm_start=auto) and trains the warm epoch counts.
    execution = run(setup, warm_phase1_epochs=1, warm_phase2_epochs=0, accuracy_floor=1.0)
    return execution, before, tree_digest(setup["volume"])


def history(execution):
    from serving import sidecars

    return sidecars.read_history(execution.artifact(sidecars.TRAINER, "model")["uri"])


def served_versions(setup):
    model_dir = setup["volume"] / MODEL_NAME
    return sorted(int(v) for v in os.listdir(model_dir) if v.isdigit()) if model_dir.is_dir() else []


# --- the wheel ----------------------------------------------------------------------------------------------------


def named_import_paths(spec):
    """Every `module.attr` the compiled spec names: executor classes (--executor_class_path) and module functions
    (run_fn, preprocessing_fn, module_path...)."""
    from google.protobuf import json_format

    names = set()
    for body in json_format.MessageToDict(spec.deployment_spec)["executors"].values():
        args = body.get("container", {}).get("args", [])
        names |= {args[i + 1] for i, a in enumerate(args[:-1]) if a == "--executor_class_path"}
    for task in spec.root.dag.tasks.values():
        for key, parameter in task.inputs.parameters.items():
            value = parameter.runtime_value.constant.string_value
            if key.endswith(("_fn", "module_path", "module_file")) and value:
                names.add(value)
    return names


def test_wheel_alone_provides_everything_the_spec_names(installed_wheel, setup):
    wheel, site = installed_wheel
    with zipfile.ZipFile(wheel) as whl:
        top_level = {n.split("/")[0] for n in whl.namelist() if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"components", "pipeline", "serving", "trainer"}
    spec, _ = read_package(setup["package"])
    paths = named_import_paths(spec)
    project = sorted(p for p in paths if p.split(".")[0] in top_level)
    assert {"components.fine_tune_trainer.run_fn", "components.image_transform.preprocessing_fn"} <= set(project)
    assert len([p for p in project if p.endswith("Executor")]) >= 4, project
    # Imported in a fresh interpreter whose only copy of the project is the wheel's folder; each module must come
    # from there (not from a source tree or an editable install), and the console script's target must exist.
    script = (
        "import importlib, json, sys\n"
        "site, paths = sys.argv[1], json.loads(sys.argv[2])\n"
        "for path in paths:\n"
        "    module_name, attr = path.rsplit('.', 1)\n"
        "    module = importlib.import_module(module_name)\n"
        "    getattr(module, attr)\n"
        "    assert module.__file__.startswith(site), (path, module.__file__)\n"
        "print('imported', len(paths))\n"
    )
    checked = sorted(set(project) | {"pipeline.cli.main", "pipeline.kubeflow_v2_runner.compile_pipeline"})
    env = dict(setup["env"], TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", script, str(site), json.dumps(checked)],
        cwd=str(setup["root"]),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"imported {len(checked)}" in result.stdout
    with zipfile.ZipFile(wheel) as whl:
        entry_points = next(n for n in whl.namelist() if n.endswith("entry_points.txt"))
        assert "ftune = pipeline.cli:main" in whl.read(entry_points).decode()


# --- execution 1: defaults ----------------------------------------------------------------------------------------


def test_first_execution_runs_every_task_and_pushes_version_1(first, setup):
    spec, _ = read_package(setup["package"])
    assert set(first.tasks) == set(spec.root.dag.tasks)
    assert all(state == "executed" for state in first.states().values()), first.states()
    # The run parameters' defaults are the compiled configuration.
    assert first.parameters["phase1_epochs"] == 6 and first.parameters["accuracy_floor"] == pytest.approx(0.7)
    # Metadata travels: nothing was served, the Evaluator blessed, the Pusher says where the model went.
    assert first.artifact("ServedModelBaseline", "baseline_model")["metadata"]["served_version"] == -1
    assert first.artifact("Evaluator", "blessing")["metadata"]["blessed"] == 1
    pushed = first.artifact("Pusher", "pushed_model")["metadata"]
    assert pushed["pushed"] == 1
    assert pushed["pushed_destination"] == str(setup["mount"] / MODEL_NAME / "1")
    assert served_versions(setup) == [1]
    # Artifacts live under the run's root, one folder per task and output key.
    assert first.artifact("Trainer", "model")["uri"] == f"{first.run_root}/Trainer/model"
    assert history(first)["phase2_start_epoch"] is not None


def test_pushed_model_answers_from_serving_default(first, setup):
    import tensorflow as tf

    model = tf.saved_model.load(str(setup["volume"] / MODEL_NAME / "1"))
    serve = model.signatures["serving_default"]
    # Images the pipeline never saw (another seed), as the bytes a REST client sends.
    unseen = setup["root"] / "unseen"
    from pipeline.sample_data import generate_sample_data

    generate_sample_data(str(unseen), classes=CLASSES, per_class=6, seed=123)
    files, labels = [], []
    for class_name in sorted(os.listdir(unseen)):
        for name in sorted(os.listdir(unseen / class_name)):
            with open(unseen / class_name / name, "rb") as f:
                files.append(f.read())
            labels.append(class_name)
    out = serve(image_bytes=tf.constant(files))
    predicted = [n.decode() for n in out["class_names"].numpy()]
    accuracy = sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(labels)
    assert accuracy >= 0.8, list(zip(labels, predicted, strict=True))
    assert out["probabilities"].shape == (len(files), CLASSES)


# --- execution 2: other run parameters ------------------------------------------------------------------------


def test_other_run_parameters_change_what_runs_and_push_nothing(first, second, setup):
    execution, before, after = second
    assert execution.parameters["warm_phase1_epochs"] == 1 and execution.parameters["accuracy_floor"] == 1.0
    trained = history(execution)
    # The served-model baseline reached the Trainer: it started from version 1's weights.
    assert trained["warm_start"]["from_version"] == 1, trained["warm_start"]
    assert trained["phase"] == [1] and trained["phase2_start_epoch"] is None  # 1 epoch, no fine-tuning
    # The baseline is the version the first execution pushed, and the gate compared against it.
    baseline = execution.artifact("ServedModelBaseline", "baseline_model")
    assert baseline["metadata"]["served_version"] == 1
    blessing = execution.artifact("Evaluator", "blessing")["metadata"]
    assert blessing["blessed"] == 0
    assert blessing.get("baseline_model_id") == baseline["name"]
    assert execution.artifact("Pusher", "pushed_model")["metadata"]["pushed"] == 0
    assert served_versions(setup) == [1] and after == before  # the serving volume is untouched


def test_unchanged_data_reruns_every_task(first, second, setup):
    """KFP's cache key includes the input artifacts' ids. ImageExampleGen is never cached (it reads a folder the
    cache cannot see), so its Examples are a new artifact in every run, and no downstream key can match."""
    execution = second[0]
    spec, _ = read_package(setup["package"])
    assert not spec.root.dag.tasks["ImageExampleGen"].caching_options.enable_cache
    assert all(state == "executed" for state in execution.states().values()), execution.states()
    assert (
        execution.artifact("ImageExampleGen", "examples")["name"]
        != first.artifact("ImageExampleGen", "examples")["name"]
    )

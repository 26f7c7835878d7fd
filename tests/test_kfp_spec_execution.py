"""The compiled Kubeflow package, executed task by task (tests/kfp_spec_harness.py), from the project installed as a
wheel -- the closest this machine gets to a KFP run in the project image.

One wheel is built from the tracked sources and installed without dependencies into an empty folder; that folder
alone puts the project on the tasks' PYTHONPATH (the image installs the same wheel). Then, on generated sample data
in a span folder (`span-1/train/`, `span-1/validation/`), the same package runs five times, in this order (issue 21:
a scheduled run knows when to stop):

1. run parameters at their compiled defaults: the change check finds nothing served, every task runs, the model is
   blessed, version 1 lands on the serving volume, and its `serving_default` signature names the right class for
   images it never saw;
2. the same again, data unchanged: only ChangeCheck runs (its decision says changed=0, "no new data; version 1
   stays served"), every other task is skipped, nothing is pushed, the volume is byte-identical, and the whole
   execution takes seconds (reported at the end of the module);
3. a new span (`span-2/`) and other run parameters (1 warm epoch, no fine-tuning, accuracy_floor=1.0): the check
   says "new data: span-2", every task runs again (no false KFP cache hit), the Trainer warm-starts from the served
   version 1, the Evaluator compares against version 1 and refuses, the versions stay byte-identical and
   `refused_attempt.json` beside them names the failed check. span-1's validation split holds one image under two
   labels, so no model can reach accuracy 1.0 and the refusal is certain (the sample shapes are easy enough that a
   warm-started model often scores 1.0 on the rest);
4. the same parameters again, nothing new: only ChangeCheck runs, "no new data since the refused run of ...";
5. the package with ChangeCheck's executor swapped for one whose decision lacks the `changed` property, with
   force=1: the first guarded task's trigger condition cannot be evaluated, the run fails naming that task, and
   nothing is pushed.

Two executions train (1 and 3, minutes each); 2, 4 and 5 run one pod each. Issue 21's "done means" for the compiled
spec: (1) is execution 1, (2) execution 2, (3) executions 3 and 4, (4) "a new span trains" execution 3.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile

import pytest
from conftest import IN_MEMORY_BEAM, REPO, pretrained_weights_path, tree_digest
from kfp_spec_harness import ConditionError, execute, read_package

pytestmark = pytest.mark.slow

CLASSES, TRAIN_PER_CLASS, EVAL_PER_CLASS = 3, 24, 6
# The span execution 3 adds: a few images per class in both splits.
NEW_SPAN, NEW_SPAN_TRAIN, NEW_SPAN_EVAL = "span-2", 6, 2
PVC = "ftune-models"
MODEL_NAME = "image_classifier"
# Files that are not part of the source tree the image is built from (.dockerignore keeps them out too).
_NOT_SOURCE = (".git", ".venv", "outputs", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache")
# A no-op execution (one pod: ChangeCheck) must stay far below a training one (minutes).
NO_OP_MAX_S = 60
# Execution 5: a module on the tasks' PYTHONPATH whose executor drops the decision's `changed` property.
NO_CHANGED_MODULE = "no_changed_check"
NO_CHANGED_EXECUTOR = '''"""ChangeCheck's executor, its decision without the `changed` property (a test's)."""
from components import change_check


class Executor(change_check.Executor):
    def Do(self, input_dict, output_dict, exec_properties):
        super().Do(input_dict, output_dict, exec_properties)
        for artifact in output_dict[change_check.DECISION_KEY]:
            del artifact.mlmd_artifact.custom_properties[change_check.CHANGED_PROPERTY]
'''
MISSING_RUN_ID = "missing-changed"


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
def setup(request, tmp_path_factory, installed_wheel):
    from pipeline import kubeflow_v2_runner
    from pipeline.configs import load_config
    from pipeline.sample_data import generate_sample_data

    root = tmp_path_factory.mktemp("kfp_exec")
    data = root / "data"
    span = data / "span-1"
    generate_sample_data(str(span / "train"), classes=CLASSES, per_class=TRAIN_PER_CLASS, seed=0)
    counts = generate_sample_data(str(span / "validation"), classes=CLASSES, per_class=EVAL_PER_CLASS, seed=1)
    # One validation image also filed under a second class: a model gets at most one of the two right.
    first_class, second_class = sorted(counts)[:2]
    image = sorted((span / "validation" / first_class).iterdir())[0]
    shutil.copyfile(image, span / "validation" / second_class / f"mislabelled_{image.name}")
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
            # The spec asks a GPU for the Trainer (kubeflow.gpu_count=1, the default), which `auto` answers with the
            # GPU recipe; the harness runs the pods on this CPU, so the CPU recipe is asked for by name.
            "trainer.profile=fast",
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
    wall_s = {}
    yield {
        "root": root,
        "data": data,
        "package": str(package),
        "volume": root / "volumes" / PVC,
        "mount": root / "mnt" / "models",
        "site": installed_wheel[1],
        "env": image_env(installed_wheel[1], root / "home"),
        "wall_s": wall_s,
    }
    report_wall_times(request, wall_s)


def report_wall_times(request, wall_s):
    """Each execution's wall time on this machine, shown even under `pytest -q` (issue 21 asks for the no-op's)."""
    if not wall_s:
        return
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\nKFP spec executions (wall time here):")
        for label, seconds in wall_s.items():
            print(f"  {label}: {seconds:.1f} s")


def run(setup, label, *, package=None, env=None, run_id=None, **params):
    """One execution of the package under the shared pipeline root (so KFP's cache file is shared), timed."""
    started = time.monotonic()
    try:
        return execute(
            package or setup["package"],
            str(setup["root"] / "pipeline_root"),
            params,
            image_env=env or setup["env"],
            volumes={PVC: str(setup["volume"])},
            run_id=run_id,
        )
    finally:
        setup["wall_s"][label] = time.monotonic() - started


def add_new_span(setup):
    from pipeline.sample_data import generate_sample_data

    span = setup["data"] / NEW_SPAN
    generate_sample_data(str(span / "train"), classes=CLASSES, per_class=NEW_SPAN_TRAIN, seed=2)
    generate_sample_data(str(span / "validation"), classes=CLASSES, per_class=NEW_SPAN_EVAL, seed=3)


def refused_path(setup):
    from serving import sidecars

    return setup["volume"] / MODEL_NAME / sidecars.REFUSED_ATTEMPT_FILE


def versions_digest(setup):
    """The serving volume without the refused-attempt record (the one file a refusal adds)."""
    from serving import sidecars

    return tree_digest(setup["volume"], skip={sidecars.REFUSED_ATTEMPT_FILE})


@pytest.fixture(scope="module")
def first(setup):
    return run(setup, "1 first (trains, pushes version 1)")


@pytest.fixture(scope="module")
def unchanged(setup, first):
    before = tree_digest(setup["volume"])
    execution = run(setup, "2 unchanged data (no-op)")
    return execution, before, tree_digest(setup["volume"])


@pytest.fixture(scope="module")
def refused(setup, unchanged):
    before = versions_digest(setup)
    refused_before = refused_path(setup).exists()
    add_new_span(setup)
    # Version 1 is served, so the Trainer warm-starts (trainer.warm_start=auto) and trains the warm epoch counts.
    execution = run(
        setup,
        "3 new span, other parameters (trains, refused)",
        warm_phase1_epochs=1,
        warm_phase2_epochs=0,
        accuracy_floor=1.0,
    )
    return execution, before, versions_digest(setup), refused_before


@pytest.fixture(scope="module")
def refused_again(setup, refused):
    before = tree_digest(setup["volume"])
    execution = run(
        setup,
        "4 same parameters after the refusal (no-op)",
        warm_phase1_epochs=1,
        warm_phase2_epochs=0,
        accuracy_floor=1.0,
    )
    return execution, before, tree_digest(setup["volume"])


def no_changed_package(setup):
    """(package, image env) for execution 5: ChangeCheck's executor is NO_CHANGED_MODULE's, found on PYTHONPATH."""
    with open(setup["package"]) as f:
        text = f.read()
    real = "- components.change_check.Executor\n"
    assert text.count(real) == 1, "the compiled spec names ChangeCheck's executor once"
    package = setup["root"] / "pipeline_no_changed.yaml"
    package.write_text(text.replace(real, f"- {NO_CHANGED_MODULE}.Executor\n"))
    helper = setup["root"] / "no_changed_site"
    helper.mkdir(exist_ok=True)
    (helper / f"{NO_CHANGED_MODULE}.py").write_text(NO_CHANGED_EXECUTOR)
    env = dict(setup["env"], PYTHONPATH=f"{helper}{os.pathsep}{setup['site']}")
    return str(package), env


@pytest.fixture(scope="module")
def missing_changed(setup, refused_again):
    package, env = no_changed_package(setup)
    before = tree_digest(setup["volume"])
    # force=1: the check would say "train"; the missing property must still stop the run before anything runs.
    with pytest.raises(ConditionError) as raised:
        run(setup, "5 decision without `changed` (fails)", package=package, env=env, run_id=MISSING_RUN_ID, force=1)
    return raised.value, before, tree_digest(setup["volume"])


def history(execution):
    from serving import sidecars

    return sidecars.read_history(execution.artifact(sidecars.TRAINER, "model")["uri"])


def decision(execution):
    from components import change_check
    from serving import sidecars

    return execution.artifact(sidecars.CHANGE_CHECK, change_check.DECISION_KEY)["metadata"]


def served_versions(setup):
    model_dir = setup["volume"] / MODEL_NAME
    return sorted(int(v) for v in os.listdir(model_dir) if v.isdigit()) if model_dir.is_dir() else []


def assert_only_the_check_ran(execution):
    """ChangeCheck executed; the tasks reading only its decision were skipped by their condition, the rest because
    a task they depend on was skipped; nothing was written under the run's root but the decision."""
    from serving import sidecars

    states = execution.states()
    assert states.pop(sidecars.CHANGE_CHECK) == "executed"
    assert set(states.values()) == {"skipped"}, states
    for name in (sidecars.EXAMPLE_GEN, sidecars.SERVED_MODEL_BASELINE):
        assert execution.tasks[name].note.startswith("condition false: "), execution.tasks[name].note
    assert "depends on skipped" in execution.tasks[sidecars.PUSHER].note
    assert sorted(os.listdir(execution.run_root)) == [sidecars.CHANGE_CHECK]


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
    checked = sorted(
        set(project)
        | {"pipeline.cli.run", "pipeline.kfp_executor.main", "pipeline.kubeflow_v2_runner.compile_pipeline"}
    )
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
        assert "ftune = pipeline.cli:run" in whl.read(entry_points).decode()


# --- execution 1: defaults ----------------------------------------------------------------------------------------


def test_first_execution_runs_every_task_and_pushes_version_1(first, setup):
    spec, _ = read_package(setup["package"])
    assert set(first.tasks) == set(spec.root.dag.tasks)
    assert all(state == "executed" for state in first.states().values()), first.states()
    # The run parameters' defaults are the compiled configuration; `force` is off.
    assert first.parameters["phase1_epochs"] == 6 and first.parameters["accuracy_floor"] == pytest.approx(0.7)
    assert first.parameters["force"] == 0
    # The change check found nothing served: train.
    assert decision(first)["changed"] == 1 and decision(first)["reason"] == "nothing served yet"
    # Metadata travels: nothing was served, the Evaluator blessed, the Pusher says where the model went.
    assert first.artifact("ServedModelBaseline", "baseline_model")["metadata"]["served_version"] == -1
    assert first.artifact("Evaluator", "blessing")["metadata"]["blessed"] == 1
    pushed = first.artifact("Pusher", "pushed_model")["metadata"]
    assert pushed["pushed"] == 1
    assert pushed["pushed_destination"] == str(setup["mount"] / MODEL_NAME / "1")
    assert served_versions(setup) == [1]
    assert not refused_path(setup).exists()
    # Artifacts live under the run's root, one folder per task and output key.
    assert first.artifact("Trainer", "model")["uri"] == f"{first.run_root}/Trainer/model"
    assert history(first)["phase2_start_epoch"] is not None
    # The profile chosen at compile time reached the Trainer's pod (and from there the history and the record).
    assert history(first)["profile"] == {
        "setting": "fast",
        "resolved": "fast",
        "why": "as set (kubeflow.gpu_count: 1 GPU)",
    }
    # The Trainer's check of its training data: label_issues.json beside the history, and the feature profile in
    # the pushed version, for the next run to compare with.
    from serving import sidecars

    issues = sidecars.read_label_issues(first.artifact("Trainer", "model")["uri"])
    assert issues is not None and issues["images"] == CLASSES * TRAIN_PER_CLASS and "flagged" in issues, issues
    profile = sidecars.read_feature_profile(str(setup["volume"] / MODEL_NAME / "1"))
    assert profile["spans"] == ["span-1"] and len(profile["classes"]) == CLASSES


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


# --- execution 2: the same data and parameters --------------------------------------------------------------------


def test_unchanged_data_runs_only_the_change_check(first, unchanged, setup):
    execution, before, after = unchanged
    assert_only_the_check_ran(execution)
    assert decision(execution)["changed"] == 0 and decision(execution)["refused"] == 0
    assert decision(execution)["reason"] == "no new data; version 1 stays served"
    assert decision(execution)["served_version"] == 1
    # Nothing pushed: the volume is byte-identical and no refusal was recorded either.
    assert after == before and served_versions(setup) == [1]
    assert not refused_path(setup).exists()
    wall = setup["wall_s"]["2 unchanged data (no-op)"]
    assert wall < NO_OP_MAX_S, f"the no-op execution took {wall:.1f} s"


# --- execution 3: a new span, other run parameters -----------------------------------------------------------------


def test_a_new_span_trains(refused):
    execution = refused[0]
    made = decision(execution)
    assert made["changed"] == 1 and made["refused"] == 0
    # Both changes are named: the new span first, then the run parameters that differ from version 1's record.
    assert made["reason"].startswith(f"new data: {NEW_SPAN}; settings changed: "), made["reason"]
    assert "eval.accuracy_floor (0.7 -> 1.0)" in made["reason"], made["reason"]
    assert json.loads(execution.artifact("ImageExampleGen", "examples")["metadata"]["spans"]) == ["span-1", NEW_SPAN]


def test_other_run_parameters_change_what_runs_and_push_nothing(first, refused, setup):
    from serving import sidecars

    execution, before, after, refused_before = refused
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
    # The versions are untouched; the refusal is remembered beside them, naming the failed check.
    assert served_versions(setup) == [1] and after == before
    assert not refused_before and refused_path(setup).exists()
    attempt = sidecars.read_refused_attempt(str(setup["volume"] / MODEL_NAME))
    assert any("overall accuracy" in c and "below the floor 1.000" in c for c in attempt["failed_checks"]), attempt
    assert attempt["served_version"] == 1
    assert attempt["fingerprint"] == decision(execution)["fingerprint"]
    # The new span was compared with the data version 1 was trained on (its profile reached the Trainer).
    changes = sidecars.read_data_changes(execution.artifact("Trainer", "model")["uri"])
    assert changes["compared"] and changes["served_version"] == 1 and changes["new_spans"] == [NEW_SPAN], changes


def test_every_task_runs_again_without_a_false_cache_hit(first, refused, setup):
    """KFP's cache key includes the input artifacts' ids. The tasks that read folders outside the pipeline
    (ChangeCheck, ImageExampleGen, ServedModelBaseline) are never cached (the spec says so), so their outputs are new
    artifacts in every run, and no downstream key can match -- what a scheduled run does on KFP."""
    from pipeline.kubeflow_v2_runner import SOURCE_NODES

    execution = refused[0]
    spec, _ = read_package(setup["package"])
    for name in SOURCE_NODES:
        assert not spec.root.dag.tasks[name].caching_options.enable_cache, name
    assert all(state == "executed" for state in execution.states().values()), execution.states()
    assert (
        execution.artifact("ImageExampleGen", "examples")["name"]
        != first.artifact("ImageExampleGen", "examples")["name"]
    )


# --- execution 4: the refused batch again ---------------------------------------------------------------------------


def test_a_refused_batch_is_not_trained_again(refused, refused_again, setup):
    from serving import sidecars

    execution, before, after = refused_again
    assert_only_the_check_ran(execution)
    made = decision(execution)
    assert made["changed"] == 0 and made["refused"] == 1
    attempt = sidecars.read_refused_attempt(str(setup["volume"] / MODEL_NAME))
    expected = f"no new data since the refused run of {attempt['time']}: {attempt['failed_checks'][0]}"
    assert made["reason"].startswith(expected), made["reason"]
    assert made["reason"].endswith("; version 1 stays served"), made["reason"]
    # Nothing written: the versions and the refusal record are byte-identical.
    assert after == before and served_versions(setup) == [1]
    wall = setup["wall_s"]["4 same parameters after the refusal (no-op)"]
    assert wall < NO_OP_MAX_S, f"the no-op execution took {wall:.1f} s"


# --- execution 5: a decision without `changed` ------------------------------------------------------------------


def test_a_condition_that_cannot_be_evaluated_fails_the_run_and_pushes_nothing(missing_changed, setup):
    from serving import sidecars

    error, before, after = missing_changed
    # The first task whose condition reads the decision fails the run (KFP's driver fails the task), naming it.
    assert error.task in (sidecars.EXAMPLE_GEN, sidecars.SERVED_MODEL_BASELINE), error.task
    assert str(error).startswith(f"task {error.task}: trigger condition "), str(error)
    assert "metadata['changed']" in error.condition
    assert "no such key: 'changed'" in str(error), str(error)
    # ChangeCheck ran; no guarded task started a pod, and the volume is byte-identical.
    pods = setup["root"] / "pipeline_root" / ".pods" / MISSING_RUN_ID
    assert sorted(os.listdir(pods)) == [sidecars.CHANGE_CHECK]
    assert after == before and served_versions(setup) == [1]

"""The KFP spec harness itself (tests/kfp_spec_harness.py), on a two-task pipeline compiled by kfp 2.5's own
compiler, whose containers are `sh` one-liners: seconds, no TFX. The whole product runs through the same harness in
test_kfp_spec_execution.py (slow)."""

import os

import pytest
from kfp_spec_harness import HarnessError, TaskFailed, execute, read_package, task_order

ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    from kfp import compiler, dsl

    @dsl.container_component
    def write(text: str, repeat: int, out: dsl.Output[dsl.Artifact]):
        return dsl.ContainerSpec(
            image="busybox:1.36",
            command=["sh", "-c", 'mkdir -p "$(dirname "$0")" && for i in $(seq "$2"); do printf %s "$1"; done > "$0"'],
            args=[out.path, text, repeat],
        )

    @dsl.container_component
    def shout(data: dsl.Input[dsl.Artifact], fail: bool, out: dsl.Output[dsl.Artifact]):
        return dsl.ContainerSpec(
            image="busybox:1.36",
            command=["sh", "-c", '[ "$2" = false ] || exit 3; mkdir -p "$(dirname "$1")"; tr a-z A-Z < "$0" > "$1"'],
            args=[data.path, out.path, fail],
        )

    @dsl.pipeline(name="harness-check")
    def check(text: str = "ab", repeat: int = 2, fail: bool = False):
        first = write(text=text, repeat=repeat)
        shout(data=first.outputs["out"], fail=fail)

    path = tmp_path_factory.mktemp("tiny") / "tiny.yaml"
    compiler.Compiler().compile(check, str(path))
    return str(path)


def read(execution, task):
    with open(execution.artifact(task, "out")["uri"]) as f:
        return f.read()


def test_tasks_run_in_dependency_order_and_pass_artifacts_downstream(package, tmp_path):
    spec, _ = read_package(package)
    order = task_order(spec)
    assert order.index("write") < order.index("shout")
    execution = execute(package, str(tmp_path), {"text": "xy", "repeat": 3}, image_env=ENV)
    assert read(execution, "write") == "xyxyxy"
    assert read(execution, "shout") == "XYXYXY"
    assert execution.parameters == {"text": "xy", "repeat": 3, "fail": False}
    uri = execution.artifact("write", "out")["uri"]
    assert uri == os.path.join(str(tmp_path), "harness-check", execution.run_id, "write", "out")


def test_kfp_cache_reuses_identical_tasks_and_reruns_what_changed(package, tmp_path):
    first = execute(package, str(tmp_path), {"text": "q"}, image_env=ENV)
    assert first.states() == {"write": "executed", "shout": "executed"}
    again = execute(package, str(tmp_path), {"text": "q"}, image_env=ENV)
    assert again.states() == {"write": "cached", "shout": "cached"}
    assert again.artifact("shout", "out")["uri"] == first.artifact("shout", "out")["uri"]  # the earlier outputs
    # A new value upstream makes a new artifact, so the downstream key (input artifact names) changes too.
    changed = execute(package, str(tmp_path), {"text": "r"}, image_env=ENV)
    assert changed.states() == {"write": "executed", "shout": "executed"}
    assert read(changed, "shout") == "RR"


def test_run_parameters_are_checked_like_the_kfp_api(package, tmp_path):
    with pytest.raises(HarnessError, match="not inputs of the pipeline"):
        execute(package, str(tmp_path), {"epochs": 1}, image_env=ENV)
    with pytest.raises(HarnessError, match="is not a NUMBER_INTEGER"):
        execute(package, str(tmp_path), {"repeat": 1.5}, image_env=ENV)


def test_a_failing_task_stops_the_run_with_its_log(package, tmp_path):
    with pytest.raises(TaskFailed, match="task shout exited with 3") as failure:
        execute(package, str(tmp_path), {"fail": True}, image_env=ENV)
    assert failure.value.task == "shout"


def test_only_the_image_environment_reaches_the_task(package, tmp_path):
    with pytest.raises(HarnessError, match="not on the image's PATH"):
        execute(package, str(tmp_path), {}, image_env={"PATH": str(tmp_path / "empty")})

"""The KFP spec harness itself (tests/kfp_spec_harness.py), on a two-task pipeline compiled by kfp 2.5's own
compiler, whose containers are `sh` one-liners: seconds, no TFX. The whole product runs through the same harness in
test_kfp_spec_execution.py (slow)."""

import os

import pytest
from kfp_spec_harness import (
    ConditionError,
    HarnessError,
    TaskFailed,
    evaluate_condition,
    execute,
    read_package,
    task_order,
)

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


# --- trigger conditions: a hand-written spec shaped like TFX's `tfx.dsl.Cond` output -------------------------------
# `check` writes a decision artifact whose metadata is the run parameter `metadata` (JSON); `train` and `push` carry
# the condition TFX writes for every node inside the Cond (over the implicit input `_check.decision`); `note`
# depends on `check` only and has no condition.

CONDITION = "(inputs.artifacts['_check.decision'].artifacts[0].metadata['changed'] == 1.0)"
ARTIFACT_TYPE = {"artifactType": {"schemaTitle": "system.Artifact", "schemaVersion": "0.0.1"}}
WRITE = 'mkdir -p "$(dirname "$0")" && printf %s "$1" > "$0"'


def _container(command, args):
    return {"container": {"image": "busybox:1.36", "command": ["sh", "-c", command], "args": args}}


def _from(task, key):
    return {"taskOutputArtifact": {"producerTask": task, "outputArtifactKey": key}}


def conditional_spec():
    report = '{"artifacts":{"decision":{"artifacts":[{"metadata":%s}]}}}'
    components = {
        "comp-check": {
            "executorLabel": "exec-check",
            "inputDefinitions": {"parameters": {"metadata": {"parameterType": "STRING"}}},
            "outputDefinitions": {"artifacts": {"decision": ARTIFACT_TYPE}},
        },
        "comp-train": {
            "executorLabel": "exec-train",
            "inputDefinitions": {"artifacts": {"_check.decision": ARTIFACT_TYPE}},
            "outputDefinitions": {"artifacts": {"model": ARTIFACT_TYPE}},
        },
        "comp-push": {
            "executorLabel": "exec-push",
            "inputDefinitions": {"artifacts": {"model": ARTIFACT_TYPE, "_check.decision": ARTIFACT_TYPE}},
            "outputDefinitions": {"artifacts": {"pushed": ARTIFACT_TYPE}},
        },
        "comp-note": {
            "executorLabel": "exec-note",
            "inputDefinitions": {"artifacts": {"decision": ARTIFACT_TYPE}},
            "outputDefinitions": {"artifacts": {"out": ARTIFACT_TYPE}},
        },
    }
    executors = {
        "exec-check": _container(
            f'mkdir -p "$(dirname "$0")" && printf \'{report}\' "$1" > "$0"',
            ["{{$.outputs.output_file}}", "{{$.inputs.parameters['metadata']}}"],
        ),
        "exec-train": _container(WRITE, ["{{$.outputs.artifacts['model'].path}}", "trained"]),
        "exec-push": _container(
            'mkdir -p "$(dirname "$1")" && cp "$0" "$1"',
            ["{{$.inputs.artifacts['model'].path}}", "{{$.outputs.artifacts['pushed'].path}}"],
        ),
        "exec-note": _container(WRITE, ["{{$.outputs.artifacts['out'].path}}", "noted"]),
    }
    tasks = {
        "check": {
            "taskInfo": {"name": "check"},
            "componentRef": {"name": "comp-check"},
            "inputs": {"parameters": {"metadata": {"componentInputParameter": "metadata"}}},
        },
        "train": {
            "taskInfo": {"name": "train"},
            "componentRef": {"name": "comp-train"},
            "dependentTasks": ["check"],
            "inputs": {"artifacts": {"_check.decision": _from("check", "decision")}},
            "triggerPolicy": {"condition": CONDITION},
        },
        "push": {
            "taskInfo": {"name": "push"},
            "componentRef": {"name": "comp-push"},
            "dependentTasks": ["check", "train"],
            "inputs": {"artifacts": {"model": _from("train", "model"), "_check.decision": _from("check", "decision")}},
            "triggerPolicy": {"condition": CONDITION},
        },
        "note": {
            "taskInfo": {"name": "note"},
            "componentRef": {"name": "comp-note"},
            "dependentTasks": ["check"],
            "inputs": {"artifacts": {"decision": _from("check", "decision")}},
        },
    }
    return {
        "pipelineInfo": {"name": "condition-check"},
        "schemaVersion": "2.1.0",
        "sdkVersion": "kfp-2.5.0",
        "components": components,
        "deploymentSpec": {"executors": executors},
        "root": {
            "dag": {"tasks": tasks},
            "inputDefinitions": {
                "parameters": {
                    "metadata": {"parameterType": "STRING", "defaultValue": '{"changed": 1}', "isOptional": True}
                }
            },
        },
    }


@pytest.fixture(scope="module")
def conditional_package(tmp_path_factory):
    import yaml

    path = tmp_path_factory.mktemp("cond") / "cond.yaml"
    path.write_text(yaml.safe_dump(conditional_spec()))
    return str(path)


def test_a_true_condition_runs_the_task(conditional_package, tmp_path):
    # The reported metadata is JSON (`1`); the driver's CEL sees a Struct number, a double, so `== 1.0` holds.
    execution = execute(conditional_package, str(tmp_path), {"metadata": '{"changed": 1}'}, image_env=ENV)
    assert execution.states() == {"check": "executed", "train": "executed", "push": "executed", "note": "executed"}
    with open(execution.artifact("push", "pushed")["uri"]) as f:
        assert f.read() == "trained"


def test_a_false_condition_skips_the_task_and_its_dependants_and_the_run_succeeds(conditional_package, tmp_path):
    execution = execute(conditional_package, str(tmp_path), {"metadata": '{"changed": 0}'}, image_env=ENV)
    assert execution.states() == {"check": "executed", "train": "skipped", "push": "skipped", "note": "executed"}
    assert set(execution.skipped()) == {"train", "push"}
    assert "condition false" in execution.tasks["train"].note
    assert "train" in execution.tasks["push"].note  # skipped because train was, its condition never looked at
    assert execution.tasks["train"].outputs == {} and execution.tasks["push"].outputs == {}
    # No pod, no output folder.
    assert not os.path.exists(os.path.join(execution.run_root, "train"))
    assert not os.path.exists(os.path.join(str(tmp_path), ".pods", execution.run_id, "train"))


@pytest.mark.parametrize(
    "metadata, why",
    [('{"other": 1}', "no such key"), ('{"changed": "yes"}', "overload")],
    ids=["missing-key", "wrong-type"],
)
def test_a_condition_that_cannot_be_evaluated_fails_the_run_naming_the_task(
    conditional_package, tmp_path, metadata, why
):
    with pytest.raises(ConditionError, match=f"task train: trigger condition .* cannot be evaluated: .*{why}") as err:
        execute(conditional_package, str(tmp_path), {"metadata": metadata}, image_env=ENV, run_id="bad")
    assert err.value.task == "train"
    # Neither the task nor anything after it ran.
    pods = os.path.join(str(tmp_path), ".pods", "bad")
    assert not os.path.exists(os.path.join(pods, "train")) and not os.path.exists(os.path.join(pods, "push"))


def test_the_condition_reads_the_executor_input_as_kfps_driver_does():
    artifact = {"name": "r/check/decision", "uri": "/x", "metadata": {"changed": 1, "reason": "new data"}}
    executor_input = {"inputs": {"artifacts": {"_check.decision": {"artifacts": [artifact]}}, "parameterValues": {}}}
    assert evaluate_condition("t", CONDITION, executor_input) is True
    reason = "inputs.artifacts['_check.decision'].artifacts[0].metadata['reason'] == 'new data'"
    assert evaluate_condition("t", reason, executor_input) is True
    uri = "inputs.artifacts['_check.decision'].artifacts[0].uri == '/x' && size(inputs.parameter_values) == 0"
    assert evaluate_condition("t", uri, executor_input) is True
    with pytest.raises(ConditionError, match="not a bool"):
        evaluate_condition("t", "inputs.artifacts['_check.decision'].artifacts[0].uri", executor_input)
    with pytest.raises(ConditionError, match="task t"):
        evaluate_condition("t", "inputs.artifacts[", executor_input)

"""The change check (components/change_check.py): its decision as plain functions, its executor's reading of a data
folder and a serving folder, and what TFX 1.16 compiles `tfx.dsl.Cond` on its decision into for Kubeflow. Seconds;
no pipeline runs."""

import json
import os

from components import change_check as cc
from pipeline.configs import PipelineConfig
from serving import sidecars
from serving.model_versions import served_versions

OLD, NEW = "sha256:old", "sha256:new"


def settings(**trainer):
    config = PipelineConfig()
    for key, value in trainer.items():
        setattr(config.trainer, key, value)
    return config.to_dict()


def record(fingerprint=OLD, spans=("span-1",), config=None, **extra):
    return {"data": {"fingerprint": fingerprint, "spans": list(spans)}, "settings": config or settings(), **extra}


def decide(fingerprint=OLD, spans=("span-1",), now=None, served_version=3, served_record="default", refused=None, **kw):
    return cc.decide(
        fingerprint=fingerprint,
        spans=list(spans),
        settings=cc.training_settings(now or settings()),
        served_version=served_version,
        served_record=record() if served_record == "default" else served_record,
        refused=refused,
        force=kw.get("force", False),
    )


def test_same_data_and_settings_as_the_served_version_is_unchanged():
    decision = decide()
    assert not decision.changed
    assert decision.reason == "no new data; version 3 stays served"
    assert (decision.served_version, decision.fingerprint) == (3, OLD)


def test_a_new_file_or_a_new_span_is_new_data():
    assert decide(fingerprint=NEW).changed
    assert decide(fingerprint=NEW).reason == "new data: the input files differ from version 3's"
    decision = decide(fingerprint=NEW, spans=("span-1", "span-2"))
    assert decision.changed and decision.reason == "new data: span-2"
    assert decide(fingerprint=NEW, spans=()).reason == "data changed: span-1 no longer selected"


def test_a_changed_setting_trains_and_names_the_key():
    decision = decide(now=settings(learning_rate=0.01))
    assert decision.changed
    assert decision.reason == "settings changed: trainer.learning_rate (0.001 -> 0.01)"
    both = decide(fingerprint=NEW, spans=("span-1", "span-2"), now=settings(learning_rate=0.01))
    assert both.reason.startswith("new data: span-2; settings changed: trainer.learning_rate")


def test_a_record_from_before_the_training_profile_compares_as_the_fast_profile():
    old = settings()
    del old["trainer"]["profile"], old["trainer"]["augmentation"]  # as written before issue 33
    now = settings(profile="fast")  # what auto resolves to on a CPU
    assert not decide(now=now, served_record=record(config=old)).changed
    moved = decide(now=settings(profile="best"), served_record=record(config=old))
    assert moved.reason.startswith("settings changed: trainer.profile ('fast' -> 'best')"), moved.reason


def test_a_record_from_before_the_warm_start_rate_compares_as_the_rate_it_warm_started_with():
    old = settings()
    del old["trainer"]["warm_fine_tune_lr_factor"]  # as written before it existed: warm starts ran at 0.1
    assert not decide(now=settings(), served_record=record(config=old)).changed
    # The cold-start rate's default moved from 0.1 to 0.3 (issue 33): a version trained at 0.1 is retrained once.
    old["trainer"]["fine_tune_lr_factor"] = 0.1
    moved = decide(now=settings(), served_record=record(config=old))
    assert moved.reason == "settings changed: trainer.fine_tune_lr_factor (0.1 -> 0.3)", moved.reason


def test_where_things_live_is_not_a_training_setting():
    now = settings()
    now["pipeline_root"] = "/elsewhere"
    now["beam_args"] = ["--direct_num_workers=2"]
    now["kubeflow"]["image"] = "registry.example/ftune:2"
    now["data"]["data_root"] = "/mnt/images"
    now["push"].update(keep_versions=9, serving_dir="/models", model_name="other")
    now["trainer"]["cache_max_mb"] = 16
    assert not decide(now=now).changed
    now["push"]["tflite"] = "int8"  # changes what is pushed
    assert decide(now=now).reason == "settings changed: push.tflite ('off' -> 'int8')"


def test_run_parameters_are_applied_before_comparing():
    # A Kubeflow run with learning_rate=0.01 trained the served version (its record holds the value in effect).
    trained = settings(learning_rate=0.01)
    now = cc.apply_overrides(settings(), {"learning_rate": 0.01, "phase1_epochs": None})
    assert not decide(now=now, served_record=record(config=trained)).changed
    assert decide(now=settings(), served_record=record(config=trained)).changed


def test_the_training_code_version_is_part_of_the_settings():
    # A record from before the constant existed counts as version 1.
    assert cc.recorded_settings(record())[cc.CODE_VERSION_KEY] == cc.FIRST_TRAINING_CODE_VERSION
    bumped = cc.decide(
        fingerprint=OLD,
        spans=["span-1"],
        settings=cc.training_settings(settings(), code_version=cc.TRAINING_CODE_VERSION + 1),
        served_version=3,
        served_record=record(**{cc.CODE_VERSION_KEY: cc.TRAINING_CODE_VERSION}),
        refused=None,
        force=False,
    )
    assert bumped.changed
    v = cc.TRAINING_CODE_VERSION
    assert bumped.reason == f"settings changed: training code version {v} -> {v + 1}"


def refusal(fingerprint=NEW, now=None, served_version=2, checks=("accuracy 0.41 < floor 0.60",)):
    attempt = cc.Decision(
        True, "new data: span-2", served_version, fingerprint, cc.training_settings(now or settings())
    )
    result = cc.refused_attempt(attempt, list(checks), pipeline_run="run-7")
    result["time"] = "2026-12-03T10:00:00+00:00"
    return result


def test_the_refused_batch_again_is_unchanged_with_the_refusal_as_reason():
    decision = decide(fingerprint=NEW, spans=("span-1", "span-2"), served_version=2, refused=refusal())
    assert not decision.changed
    assert decision.reason == (
        "no new data since the refused run of 2026-12-03T10:00:00+00:00: accuracy 0.41 < floor 0.60; "
        "version 2 stays served"
    )
    two = refusal(checks=("accuracy 0.41 < floor 0.60", "recall of circle 0.1 < 0.5"))
    assert (
        "accuracy 0.41 < floor 0.60 (and 1 more); version 2"
        in decide(fingerprint=NEW, refused=two, served_version=2).reason
    )


def test_a_refusal_no_longer_applies_to_new_data_new_settings_or_another_served_version():
    assert decide(fingerprint="sha256:newer", served_version=2, refused=refusal()).changed
    assert decide(fingerprint=NEW, now=settings(learning_rate=0.01), served_version=2, refused=refusal()).changed
    # Rolled back to version 1 since: the gate's baseline changed, so the batch gets another try.
    rolled_back = decide(fingerprint=NEW, served_version=1, refused=refusal())
    assert rolled_back.changed and rolled_back.reason == "new data: the input files differ from version 1's"


def test_force_trains_even_when_nothing_changed():
    decision = decide(force=True)
    assert decision.changed and decision.reason == "forced"
    assert decide(fingerprint=NEW, served_version=2, refused=refusal(), force=True).changed


def test_nothing_served_trains_and_a_refused_first_run_is_remembered_too():
    decision = decide(served_version=-1, served_record=None)
    assert decision.changed and decision.reason == "nothing served yet" and decision.served_version == -1
    first = decide(fingerprint=NEW, served_version=-1, served_record=None, refused=refusal(served_version=-1))
    assert not first.changed and first.reason.endswith("; nothing is served")


def test_a_served_version_without_a_record_trains():
    decision = decide(served_record=None)
    assert decision.changed and "served version 3 has no data record" in decision.reason


# --- the executor's reading of real folders ---------------------------------------------------------------------


def _write(path, data=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _exec_properties(data_root, serving_model_dir, force=0):
    config = PipelineConfig()
    return {
        cc.DATA_ROOT_KEY: str(data_root),
        cc.SPLIT_MODE_KEY: "auto",
        cc.TRAIN_DIR_KEY: config.data.train_dir,
        cc.EVAL_DIR_KEY: config.data.eval_dir,
        cc.SPANS_KEY: "all",
        cc.SETTINGS_KEY: json.dumps(config.to_dict()),
        cc.SERVING_MODEL_DIR_KEY: str(serving_model_dir),
        cc.FORCE_KEY: force,
    }


def test_the_check_reads_the_data_folder_the_served_record_and_the_refusal_file(tmp_path):
    data, serving = tmp_path / "data", tmp_path / "serving" / "model"
    for name in ("span-1/circle/a.png", "span-1/square/b.png"):
        _write(str(data / name))
    first = cc.check(_exec_properties(data, serving))
    assert first.changed and first.reason == "nothing served yet" and first.fingerprint.startswith("sha256:")

    # Version 1 pushed from exactly this data and these settings.
    _write(str(serving / "1" / "saved_model.pb"))
    sidecars.write_model_record(
        str(serving / "1"), record(fingerprint=first.fingerprint, spans=["span-1"], config=settings())
    )
    again = cc.check(_exec_properties(data, serving))
    assert not again.changed and again.reason == "no new data; version 1 stays served"
    assert cc.check(_exec_properties(data, serving, force=1)).reason == "forced"

    # A new span is new data; the gate refuses it; the same span again is not retrained.
    _write(str(data / "span-2" / "circle" / "c.png"))
    attempt = cc.check(_exec_properties(data, serving))
    assert attempt.changed and attempt.reason == "new data: span-2"
    sidecars.write_refused_attempt(str(serving), cc.refused_attempt(attempt, ["recall of circle 0.1 < 0.5"], "r2"))
    # TF Serving and model_versions take only integer-named entries: the file beside the versions is not one.
    assert sorted(os.listdir(serving)) == ["1", sidecars.REFUSED_ATTEMPT_FILE] and served_versions(str(serving)) == [1]
    refused = cc.check(_exec_properties(data, serving))
    assert not refused.changed
    assert refused.reason.endswith(": recall of circle 0.1 < 0.5; version 1 stays served")
    # Another new file: the refusal no longer applies (and stays on file: `ftune versions` shows the last one).
    _write(str(data / "span-2" / "square" / "d.png"))
    assert cc.check(_exec_properties(data, serving)).changed
    assert sidecars.read_refused_attempt(str(serving))["failed_checks"] == ["recall of circle 0.1 < 0.5"]


def test_the_decision_is_carried_in_the_artifacts_custom_properties():
    from tfx.types.experimental.simple_artifacts import File

    artifact = File()
    decision = decide(fingerprint=NEW, spans=("span-1", "span-2"))
    cc.write_decision(artifact, decision)
    assert artifact.get_int_custom_property("changed") == 1
    assert artifact.get_string_custom_property("reason") == "new data: span-2"
    assert artifact.get_int_custom_property("served_version") == 3
    assert cc.read_decision(artifact) == decision


# --- what TFX 1.16 compiles `Cond` on the decision into for Kubeflow ------------------------------------------------


def test_tfx_compiles_cond_on_the_decision_into_a_trigger_condition_that_kfp_evaluates(tmp_path):
    from kfp_spec_harness import evaluate_condition
    from tfx import v1 as tfx
    from tfx.orchestration.data_types import RuntimeParameter

    from components.served_model_baseline import ServedModelBaseline
    from pipeline.kubeflow_v2_runner import compile_spec

    config = PipelineConfig()
    check = cc.ChangeCheck(
        data_root=RuntimeParameter(name="data_root", ptype=str, default="/data"),
        split_mode="hash",
        train_dir=config.data.train_dir,
        eval_dir=config.data.eval_dir,
        spans=config.data.spans,
        settings=config.to_dict(),
        serving_model_dir="/models/image_classifier",
        force=RuntimeParameter(name="force", ptype=int, default=0),
        learning_rate=RuntimeParameter(name="learning_rate", ptype=float, default=config.trainer.learning_rate),
    ).with_id(sidecars.CHANGE_CHECK)
    with tfx.dsl.Cond(check.outputs[cc.DECISION_KEY].future()[0].custom_property(cc.CHANGED_PROPERTY) == 1):
        downstream = ServedModelBaseline(serving_model_dir="/models/image_classifier")
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="cond-skeleton", pipeline_root="gs://b/root", components=[check, downstream]
    )
    spec = compile_spec(pipeline, image="registry.example/ftune:1")

    tasks = spec.root.dag.tasks
    condition = tasks["ServedModelBaseline"].trigger_policy.condition
    print(f"\ncompiled triggerPolicy.condition: {condition}")
    assert condition == "(inputs.artifacts['_ChangeCheck.decision'].artifacts[0].metadata['changed'] == 1.0)"
    assert not tasks[sidecars.CHANGE_CHECK].trigger_policy.condition
    # The Cond adds the decision as an input of the guarded task (hence its dependency on the check).
    wiring = tasks["ServedModelBaseline"].inputs.artifacts["_ChangeCheck.decision"].task_output_artifact
    assert (wiring.producer_task, wiring.output_artifact_key) == (sidecars.CHANGE_CHECK, cc.DECISION_KEY)
    assert {"data_root", "force", "learning_rate"} <= set(spec.root.input_definitions.parameters)

    # KFP's driver, emulated: the Struct number the launcher records for the int property is a double.
    def executor_input(changed):
        artifact = {"name": "r/ChangeCheck/decision", "metadata": {"changed": changed, "reason": "r"}}
        return {"inputs": {"artifacts": {"_ChangeCheck.decision": {"artifacts": [artifact]}}}}

    assert evaluate_condition("ServedModelBaseline", condition, executor_input(1)) is True
    assert evaluate_condition("ServedModelBaseline", condition, executor_input(0)) is False


def test_the_local_dag_runner_skips_what_the_cond_guards_when_nothing_changed(tmp_path):
    """LocalDagRunner (`ftune run`) honours the same Cond: a guarded node executes after "nothing served yet" and
    is skipped (no execution, no output) once the served record matches."""
    from tfx import v1 as tfx

    from components.served_model_baseline import ServedModelBaseline

    data, serving = tmp_path / "data", tmp_path / "serving" / "model"
    _write(str(data / "circle" / "a.png"))
    properties = _exec_properties(data, serving)

    def run(cache_key):
        check = cc.ChangeCheck(
            data_root=str(data),
            split_mode="hash",
            train_dir=properties[cc.TRAIN_DIR_KEY],
            eval_dir=properties[cc.EVAL_DIR_KEY],
            spans="all",
            settings=PipelineConfig().to_dict(),
            serving_model_dir=str(serving),
            force=0,
            cache_key=cache_key,
        ).with_id(sidecars.CHANGE_CHECK)
        with tfx.dsl.Cond(check.outputs[cc.DECISION_KEY].future()[0].custom_property(cc.CHANGED_PROPERTY) == 1):
            guarded = ServedModelBaseline(serving_model_dir=str(serving), serving_state=cache_key)
        metadata = tfx.orchestration.metadata.sqlite_metadata_connection_config(str(tmp_path / "metadata.sqlite"))
        tfx.orchestration.LocalDagRunner().run(
            tfx.dsl.Pipeline(
                pipeline_name="cond-local",
                pipeline_root=str(tmp_path / "root"),
                components=[check, guarded],
                metadata_connection_config=metadata,
            )
        )
        return sorted(os.listdir(tmp_path / "root" / sidecars.SERVED_MODEL_BASELINE / "baseline_model"))

    assert len(run("first")) == 1  # nothing served yet: the guarded node ran
    first = cc.check(properties)
    _write(str(serving / "1" / "saved_model.pb"))
    sidecars.write_model_record(str(serving / "1"), record(fingerprint=first.fingerprint, spans=[], config=settings()))
    assert len(run("second")) == 1  # unchanged: skipped, no second execution
    assert len(os.listdir(tmp_path / "root" / sidecars.CHANGE_CHECK / cc.DECISION_KEY)) == 2

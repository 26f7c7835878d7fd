"""`ftune compile`: the KFP package TFX's KubeflowV2DagRunner makes from create_pipeline, plus our additions.

The package is compiled here (offline, into a temporary folder) and read back with KFP's own protos: the pipeline
spec as `PipelineSpec`, the second YAML document as `PlatformSpec` whose executors are kfp-kubernetes'
`KubernetesExecutorConfig`. Expected nodes come from create_pipeline's own component list, so a node added to
the pipeline is checked without editing this file.
"""

import json
import os
import re
import subprocess
import sys

import pytest
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline import kubeflow_v2_runner as runner
from pipeline.configs import KUBEFLOW_BEAM_ARGS, ConfigError, PipelineConfig
from serving import sidecars

IMAGE = "registry.example/ftune:1.2.3"
PIPELINE_ROOT = "gs://ftune-test/root"
DATA_ROOT = "/data/images"
CORE_NODES = {"ImageExampleGen", "StatisticsGen", "SchemaGen", "Transform", "Trainer", "Evaluator", "Pusher"}
TFX_COMMAND = ["python", "-m", "pipeline.kfp_executor"]
# Fields of kfp_kubernetes.Toleration (kubernetes_executor_config.proto, KFP >= 2.1).
TOLERATION_FIELDS = {"key", "operator", "value", "effect", "tolerationSeconds"}


def make_config(**push) -> PipelineConfig:
    config = PipelineConfig()
    config.data.split_mode = "hash"  # the compiler cannot look into the pods' data folder
    for key, value in push.items():
        setattr(config.push, key, value)
    return config


def compile_to(path, config=None, **kwargs):
    runner.compile_pipeline(
        config or make_config(), str(path), image=IMAGE, pipeline_root=PIPELINE_ROOT, data_root=DATA_ROOT, **kwargs
    )
    return runner.read_package(str(path))


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    spec, platform = compile_to(path)
    return path, spec, platform


@pytest.fixture(scope="module")
def spec(package):
    return package[1]


@pytest.fixture(scope="module")
def k8s(package):
    """{executor label: KubernetesExecutorConfig dict}."""
    return runner.kubernetes_executor_configs(package[2])


@pytest.fixture(scope="module")
def dsl_pipeline():
    """The pipeline object create_pipeline returns for Kubeflow (the source of truth for nodes and edges)."""
    config = runner.kubeflow_config(make_config(), image=IMAGE, pipeline_root=PIPELINE_ROOT, data_root=DATA_ROOT)
    return runner.build_pipeline(config)


def executors(spec):
    return json_format.MessageToDict(spec.deployment_spec)["executors"]


def container(spec, task):
    return executors(spec)[runner.executor_label(spec, task)]["container"]


def test_every_node_is_a_task_with_its_dependencies(spec, dsl_pipeline):
    node_ids = {node.id for node in dsl_pipeline.components}
    assert CORE_NODES <= node_ids
    assert set(spec.root.dag.tasks) == node_ids
    for node in dsl_pipeline.components:
        task = spec.root.dag.tasks[node.id]
        assert sorted(task.dependent_tasks) == sorted(n.id for n in node.upstream_nodes), node.id
    # The spine, spelled out.
    deps = {name: set(task.dependent_tasks) for name, task in spec.root.dag.tasks.items()}
    # The change check heads the DAG; everything else runs under its decision (each guarded task depends on it).
    assert deps["ChangeCheck"] == set()
    assert deps["ImageExampleGen"] == {"ChangeCheck"}
    assert deps["StatisticsGen"] == {"ImageExampleGen", "ChangeCheck"}
    assert deps["SchemaGen"] == {"StatisticsGen", "ChangeCheck"}
    assert {"ImageExampleGen", "SchemaGen"} <= deps["Transform"]
    assert "Transform" in deps["Trainer"]
    assert "Trainer" in deps["Evaluator"]
    assert {"Trainer", "Evaluator"} <= deps["Pusher"]


def test_only_container_and_importer_executors(spec):
    kinds = runner.executor_kinds(spec)
    assert set(kinds) == {runner.executor_label(spec, task) for task in spec.root.dag.tasks}
    for label, executor_kinds in kinds.items():
        assert executor_kinds and set(executor_kinds) <= {"container", "importer"}, label
    assert "resolver" not in json.dumps(executors(spec))


def test_a_resolver_node_fails_compilation():
    """A TFX Resolver compiles to a KFP `resolver` executor, which open-source KFP cannot run."""
    from tfx import v1 as tfx

    resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
        examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples),
    ).with_id("latest_examples")
    statistics = tfx.components.StatisticsGen(examples=resolver.outputs["examples"])
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="resolver-check", pipeline_root=PIPELINE_ROOT, components=[resolver, statistics]
    )
    spec = runner.compile_spec(pipeline, IMAGE)
    with pytest.raises(runner.KubeflowCompileError, match="latest_examples_executor is resolver"):
        runner.check_executors(spec)


def test_trainer_alone_has_accelerator_and_resources(spec):
    config = make_config().kubeflow
    for task in spec.root.dag.tasks:
        resources = container(spec, task).get("resources")
        if task == sidecars.TRAINER:
            assert resources["accelerator"] == {"type": config.gpu_type, "count": str(config.gpu_count)}
            assert resources["cpuLimit"] == config.trainer_cpu
            assert resources["memoryLimit"] == pytest.approx(16 * 2**30 / 1e9)  # 16Gi in decimal GB
        else:
            assert resources is None, f"{task} must stay on CPU nodes with default resources"


def test_trainer_alone_goes_to_the_gpu_pool(spec, k8s):
    config = make_config().kubeflow
    trainer_label = runner.executor_label(spec, sidecars.TRAINER)
    for label, body in k8s.items():
        parsed = json_format.ParseDict(body, k8s_pb2.KubernetesExecutorConfig(), ignore_unknown_fields=True)
        if label == trainer_label:
            assert dict(parsed.node_selector.labels) == config.gpu_node_selector
            assert body["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
            assert all(set(t) <= TOLERATION_FIELDS for t in body["tolerations"])
        else:
            assert not parsed.HasField("node_selector") and "tolerations" not in body, label
    assert trainer_label in k8s


def test_serving_volume_is_mounted_where_models_are_read_or_written_only(spec, k8s):
    config = make_config()
    volume_users = {
        runner.executor_label(spec, t)
        for t in ("Pusher", "ServedModelBaseline", "ChangeCheck")
        if t in spec.root.dag.tasks
    }
    assert runner.executor_label(spec, "ChangeCheck") in volume_users
    assert runner.executor_label(spec, "Pusher") in volume_users
    for task in spec.root.dag.tasks:
        label = runner.executor_label(spec, task)
        parsed = json_format.ParseDict(
            k8s.get(label, {}), k8s_pb2.KubernetesExecutorConfig(), ignore_unknown_fields=True
        )
        if label in volume_users:
            assert [(m.constant, m.mount_path) for m in parsed.pvc_mount] == [
                (config.kubeflow.serving_pvc, config.kubeflow.serving_mount_path)
            ]
        else:
            assert not parsed.pvc_mount, task
    # The Pusher pushes below the mount path, where TF Serving (same claim, /models) looks.
    destination = json.loads(
        spec.root.dag.tasks["Pusher"].inputs.parameters["push_destination"].runtime_value.constant.string_value
    )
    assert destination["filesystem"]["base_directory"] == "/models/image_classifier"


def test_remote_push_destination_needs_no_volume(tmp_path):
    config = make_config(serving_dir="gs://models-bucket/serving")
    spec, platform = compile_to(tmp_path / "remote.yaml", config)
    k8s = runner.kubernetes_executor_configs(platform)
    assert all("pvcMount" not in body for body in k8s.values())
    assert "nodeSelector" in k8s[runner.executor_label(spec, sidecars.TRAINER)]


def test_json_package_when_no_kubernetes_settings_are_needed(tmp_path):
    config = make_config(serving_dir="gs://models-bucket/serving")
    config.kubeflow.gpu_count = 0
    path = tmp_path / "pipeline.json"
    runner.compile_pipeline(config, str(path), image=IMAGE, pipeline_root=PIPELINE_ROOT, data_root=DATA_ROOT)
    with open(path) as f:
        spec = json_format.Parse(f.read(), pipeline_spec_pb2.PipelineSpec())
    assert "accelerator" not in container(spec, sidecars.TRAINER).get("resources", {})
    with pytest.raises(ConfigError, match="need a .yaml package"):
        runner.compile_pipeline(
            make_config(), str(tmp_path / "gpu.json"), image=IMAGE, pipeline_root=PIPELINE_ROOT, data_root=DATA_ROOT
        )


def test_data_root_is_a_run_parameter_with_a_default(spec):
    parameters = spec.root.input_definitions.parameters
    data_root = parameters["data_root"]
    assert data_root.parameter_type == pipeline_spec_pb2.ParameterType.STRING
    assert data_root.default_value.string_value == DATA_ROOT and data_root.is_optional
    wiring = spec.root.dag.tasks["ImageExampleGen"].inputs.parameters["input_base"]
    assert wiring.component_input_parameter == "data_root"
    for name, parameter in parameters.items():  # every parameter is optional, so a run needs no arguments
        assert parameter.is_optional and parameter.HasField("default_value"), name


def test_per_run_knobs_are_run_parameters(spec):
    from pipeline.pipeline import resolve_profile
    from trainer.profiles import Hardware

    # The defaults are the trainer settings of the profile the Trainer pod's GPUs resolve (one GPU here).
    config, _ = resolve_profile(make_config(), Hardware(make_config().kubeflow.gpu_count, "kubeflow.gpu_count"))
    expected_types = {str: "STRING", int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE"}
    parameters = json_format.MessageToDict(spec.root.input_definitions)["parameters"]
    used = {p.component_input_parameter for t in spec.root.dag.tasks.values() for p in t.inputs.parameters.values()}
    for name, (section, field, ptype) in runner.RUNTIME_KNOBS.items():
        default = DATA_ROOT if name == "data_root" else getattr(getattr(config, section), field)
        assert parameters[name]["parameterType"] == expected_types[ptype], name
        assert parameters[name]["defaultValue"] == (default if ptype is str else pytest.approx(default)), name
        assert name in used, f"run parameter {name} is declared but no task reads it"
    # `force` (no setting): 0 by default, read by the change check only.
    assert parameters["force"]["parameterType"] == "NUMBER_INTEGER" and parameters["force"]["defaultValue"] == 0
    readers = [
        name
        for name, task in spec.root.dag.tasks.items()
        if any(p.component_input_parameter == "force" for p in task.inputs.parameters.values())
    ]
    assert readers == ["ChangeCheck"]


def test_every_task_after_the_change_check_carries_its_condition(package):
    """The compiled YAML (what KFP's driver reads) guards every task from ImageExampleGen to the Pusher with a CEL
    condition over the change check's decision; the check itself runs unconditionally."""
    import yaml

    with open(package[0]) as f:
        pipeline_spec = next(yaml.safe_load_all(f))
    tasks = pipeline_spec["root"]["dag"]["tasks"]
    assert "triggerPolicy" not in tasks["ChangeCheck"]
    guarded = set(tasks) - {"ChangeCheck"}
    assert CORE_NODES <= guarded
    for name in guarded:
        condition = tasks[name]["triggerPolicy"]["condition"]
        found = re.fullmatch(
            r"\(inputs\.artifacts\['([^']+)'\]\.artifacts\[0\]\.metadata\['changed'\] == 1\.0\)", condition
        )
        assert found, (name, condition)
        # The input it reads is the change check's decision (the Pusher names it change_decision, the others
        # get TFX's implicit `_ChangeCheck.decision`).
        source = tasks[name]["inputs"]["artifacts"][found.group(1)]["taskOutputArtifact"]
        assert source == {"producerTask": "ChangeCheck", "outputArtifactKey": "decision"}, name


def test_image_command_and_executor_paths(spec):
    from tfx.utils import import_utils

    for task in spec.root.dag.tasks:
        c = container(spec, task)
        assert c["image"] == IMAGE
        assert c["command"] == TFX_COMMAND
        class_path = c["args"][c["args"].index("--executor_class_path") + 1]
        assert import_utils.import_class_by_path(class_path), class_path  # importable as the image installs it
    # Module functions are referenced by import path, not packaged files.
    transform = spec.root.dag.tasks["Transform"].inputs.parameters
    trainer = spec.root.dag.tasks["Trainer"].inputs.parameters
    assert (
        transform["preprocessing_fn"].runtime_value.constant.string_value
        == "components.image_transform.preprocessing_fn"
    )
    assert trainer["run_fn"].runtime_value.constant.string_value == "components.fine_tune_trainer.run_fn"


def test_beam_args_default_and_pass_through(spec, tmp_path):
    transform_args = container(spec, "Transform")["args"]
    assert transform_args[-len(KUBEFLOW_BEAM_ARGS) :] == list(KUBEFLOW_BEAM_ARGS)
    dataflow = ["--runner=DataflowRunner", "--project=p", "--region=europe-west4", "--temp_location=gs://t/tmp"]
    other, _ = compile_to(tmp_path / "dataflow.yaml", beam_args=dataflow)
    for task in ("Transform", "StatisticsGen", "Evaluator"):
        args = container(other, task)["args"]
        assert args[-len(dataflow) :] == dataflow, task
        assert "--direct_running_mode=multi_processing" not in args


def test_caching_off_for_components_reading_outside_folders(spec):
    sources = {"ChangeCheck", "ImageExampleGen", "ServedModelBaseline"}
    for name, task in spec.root.dag.tasks.items():
        assert task.caching_options.enable_cache == (name not in sources), name
    assert spec.default_pipeline_root == PIPELINE_ROOT


def test_kfp_loads_the_package(package):
    """kfp 2.5's loader accepts the whole package (pipeline spec + platform spec) as a pipeline component."""
    from kfp import components

    loaded = components.load_component_from_file(str(package[0]))
    assert loaded.name == "ftune"
    assert loaded.component_spec.inputs["data_root"].default == DATA_ROOT
    assert set(loaded.pipeline_spec.root.dag.tasks) == set(package[1].root.dag.tasks)
    assert "kubernetes" in loaded.component_spec.platform_spec.platforms


def test_container_command_runs_a_project_executor(spec, tmp_path):
    """The served-model baseline's container, exactly as compiled, with the executor input KFP's launcher would
    pass for `{{$}}`: python -m pipeline.kfp_executor (TFX's kubeflow_v2_run_executor inside) imports the project's
    executor by path and runs it."""
    task = "ServedModelBaseline"
    if task not in spec.root.dag.tasks:
        pytest.skip("no ServedModelBaseline node in this pipeline")
    c = container(spec, task)
    schema = json_format.MessageToDict(spec.components[spec.root.dag.tasks[task].component_ref.name])
    artifact_type = schema["outputDefinitions"]["artifacts"]["baseline_model"]["artifactType"]
    executor_input = {
        "inputs": {
            "parameterValues": {"serving_model_dir": str(tmp_path / "served" / "image_classifier"), "serving_state": ""}
        },
        "outputs": {
            "artifacts": {
                "baseline_model": {
                    "artifacts": [{"name": "baseline", "type": artifact_type, "uri": str(tmp_path / "baseline")}]
                }
            },
            "outputFile": str(tmp_path / "kfp_outputs" / "output_metadata.json"),
        },
    }
    argv = [sys.executable if arg == "python" else arg for arg in c["command"]]
    argv += [json.dumps(executor_input) if arg == "{{$}}" else arg for arg in c["args"]]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "kfp_outputs" / "output_metadata.json") as f:
        output = json.load(f)
    artifact = output["artifacts"]["baseline_model"]["artifacts"][0]
    assert artifact["metadata"]["served_version"] == -1  # nothing served yet


def test_configuration_errors_name_the_setting(tmp_path):
    def compile_with(config, **kwargs):
        args = dict(image=IMAGE, pipeline_root=PIPELINE_ROOT, data_root=DATA_ROOT)
        args.update(kwargs)
        runner.kubeflow_config(config, **args)

    with pytest.raises(ConfigError, match="pipeline_root"):
        compile_with(make_config(), pipeline_root="outputs")
    with pytest.raises(ConfigError, match="pipeline_root"):
        compile_with(make_config(), pipeline_root="minio://mlpipeline/v2/artifacts")
    with pytest.raises(ConfigError, match="data.data_root"):
        compile_with(make_config(), data_root="")
    with pytest.raises(ConfigError, match="serving_mount_path"):
        compile_with(make_config(serving_dir="/srv/models"))
    auto = make_config()
    auto.data.split_mode = "auto"
    with pytest.raises(ConfigError, match="data.split_mode"):
        runner.resolve_split_mode(
            runner.kubeflow_config(auto, pipeline_root=PIPELINE_ROOT, data_root=str(tmp_path / "not-here"))
        )
    with pytest.raises(ConfigError, match="trainer_memory"):
        runner.memory_gb("lots")
    assert runner.memory_gb("512M") == pytest.approx(0.512)
    assert runner.memory_gb("2Gi") == pytest.approx(2 * 2**30 / 1e9)


def test_the_compiled_gate_is_the_local_gate(spec):
    """The Evaluator task carries the same EvalConfig create_pipeline builds locally (overall + per-class
    thresholds), min_class_examples, and the recording Pusher gets ImageExampleGen's examples for the record."""
    import tensorflow_model_analysis as tfma

    from components import evaluator_gate

    config = make_config()
    params = spec.root.dag.tasks["Evaluator"].inputs.parameters
    compiled = json_format.Parse(params["eval_config"].runtime_value.constant.string_value, tfma.EvalConfig())
    local = evaluator_gate.make_eval_config(
        config.eval.accuracy_floor,
        config.eval.max_accuracy_drop,
        class_recall_floor=config.eval.class_recall_floor,
        max_class_recall_drop=config.eval.max_class_recall_drop,
    )
    assert compiled == local
    assert evaluator_gate.thresholds_of(compiled)["class_recall_floor"] == config.eval.class_recall_floor
    assert params["min_class_examples"].runtime_value.constant.number_value == config.eval.min_class_examples
    assert "examples" in spec.root.dag.tasks["Pusher"].inputs.artifacts


def test_s3_settings_reach_every_pod(tmp_path):
    """kubeflow.s3_endpoint -> AWS_ENDPOINT_URL in every container; kubeflow.s3_credentials_secret -> the S3 keys
    from that Secret (KFP's MinIO layout) in every pod; Beam's workers import tensorflow_io; no PVC when the
    versions go to the bucket."""
    config = make_config(serving_dir="s3://models/ftune")
    config.kubeflow.serving_pvc = ""
    config.kubeflow.s3_endpoint = "http://minio-service.kubeflow:9000"
    config.kubeflow.s3_credentials_secret = "mlpipeline-minio-artifact"
    runner.compile_pipeline(
        config, str(tmp_path / "p.yaml"), image=IMAGE, pipeline_root="s3://mlpipeline/ftune", data_root="s3://img/x"
    )
    spec, platform = runner.read_package(str(tmp_path / "p.yaml"))
    k8s = runner.kubernetes_executor_configs(platform)
    for task in spec.root.dag.tasks:
        c = container(spec, task)
        assert {"name": "AWS_ENDPOINT_URL", "value": "http://minio-service.kubeflow:9000"} in c["env"]
        if any(arg.startswith("--runner") for arg in c["args"]):
            assert "--beam_plugins=tensorflow_io" in c["args"]
        config_of_task = k8s[runner.executor_label(spec, task)]
        assert "pvcMount" not in config_of_task
        (secret,) = config_of_task["secretAsEnv"]
        assert secret["secretName"] == "mlpipeline-minio-artifact"
        assert {m["envVar"]: m["secretKey"] for m in secret["keyToEnv"]} == {
            "AWS_ACCESS_KEY_ID": "accesskey",
            "AWS_SECRET_ACCESS_KEY": "secretkey",
        }

"""`beam_args` reach every Beam-based component of the pipeline the local runner runs (compiled to TFX's IR, as
LocalDagRunner does before it runs anything); tests/test_kubeflow_compile.py checks the same for the Kubeflow spec."""

from tfx.dsl.compiler import compiler
from tfx.proto.orchestration import executable_spec_pb2, pipeline_pb2

from pipeline.configs import LOCAL_BEAM_ARGS, load_config
from pipeline.local_runner import local_pipeline

BEAM_COMPONENTS = {"ImageExampleGen", "StatisticsGen", "Transform", "Evaluator"}
FLINK = ["--runner=FlinkRunner", "--flink_master=flink-jobmanager:8081", "--environment_type=LOOPBACK"]


def _beam_args_per_component(tmp_path, overrides):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    (tmp_path / "data" / "dogs").mkdir()
    config = load_config(None, [f"pipeline_root={tmp_path / 'root'}", *overrides]).absolute_paths()
    ir = compiler.Compiler().compile(local_pipeline(config, str(tmp_path / "data"), "hash"))
    deployment = pipeline_pb2.IntermediateDeploymentConfig()
    ir.deployment_config.Unpack(deployment)
    found = {}
    for node, spec in deployment.executor_specs.items():
        if spec.Is(executable_spec_pb2.BeamExecutableSpec.DESCRIPTOR):
            beam = executable_spec_pb2.BeamExecutableSpec()
            spec.Unpack(beam)
            found[node] = list(beam.beam_pipeline_args)
    return found


def test_local_runner_passes_beam_args_to_every_beam_component(tmp_path):
    default = _beam_args_per_component(tmp_path / "default", [])
    assert set(default) == BEAM_COMPONENTS
    assert all(args == list(LOCAL_BEAM_ARGS) for args in default.values()), default

    flink = _beam_args_per_component(tmp_path / "flink", ['beam_args=["' + '","'.join(FLINK) + '"]'])
    assert flink == {name: FLINK for name in BEAM_COMPONENTS}


def test_a_run_and_a_pod_start_without_tfx_v1(tmp_path):
    """`tfx.v1` imports TFX's Google Cloud extensions (aiplatform and more): ~2.5 s of start-up that neither `ftune
    run` nor a Kubeflow pod uses. Building the local pipeline, the runner and the pod entry point import TFX's own
    modules instead; checked in a fresh interpreter (this one may have imported tfx.v1 for other tests)."""
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "data" / "cats").mkdir(parents=True)
    (tmp_path / "data" / "dogs").mkdir()
    script = (
        "import sys\n"
        "from pipeline.configs import load_config\n"
        "from pipeline.local_runner import local_pipeline\n"
        "from tfx.orchestration.local.local_dag_runner import LocalDagRunner\n"
        "import pipeline.kfp_executor, pipeline.kubeflow_v2_runner\n"
        "from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor\n"  # what a pod runs
        "from tfx.components.transform import executor\n"
        f"config = load_config(None, ['pipeline_root={tmp_path / 'root'}']).absolute_paths()\n"
        f"local_pipeline(config, '{tmp_path / 'data'}', 'hash')\n"
        "print('tfx.v1 imported:', 'tfx.v1' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tfx.v1 imported: False" in result.stdout

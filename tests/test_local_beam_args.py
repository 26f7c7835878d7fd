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

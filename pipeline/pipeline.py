"""The one pipeline definition, shared by every runner (local LocalDagRunner and Kubeflow Pipelines v2).

Modelled on TFX's templates: `create_pipeline` takes plain values, builds the components in order and returns a
`tfx.dsl.Pipeline`. Runners decide where it runs (metadata store, Beam args, container image), never what runs.
"""

from __future__ import annotations

from typing import List, Optional

from tfx import v1 as tfx

from components.image_example_gen import ImageExampleGen
from pipeline.configs import PipelineConfig

# Stages a caller can stop after (tests and `ftune ingest` use "ingest").
STAGES = ("ingest", "validate", "push")


def create_pipeline(
    config: PipelineConfig,
    data_root: str,
    split_mode: str,
    *,
    stop_after: str = "push",
    enable_cache: bool = True,
    metadata_connection_config: Optional[object] = None,
    beam_pipeline_args: Optional[List[str]] = None,
) -> tfx.dsl.Pipeline:
    """Builds the pipeline.

    Args:
      config: the typed configuration (knobs for every component).
      data_root: the image folder (already resolved: sample data generated, split mode decided).
      split_mode: "hash" or "presplit" (see components/image_example_gen.py).
      stop_after: one of STAGES; later components are left out.
      enable_cache: reuse outputs of unchanged component runs (a re-run after a failure resumes).
      metadata_connection_config: MLMD connection (local runner); None for Kubeflow, which brings its own.
      beam_pipeline_args: args for Beam-based components (DirectRunner settings or a distributed runner).
    """
    if stop_after not in STAGES:
        raise ValueError(f"stop_after must be one of {STAGES}, got {stop_after!r}")
    data = config.data
    components = []

    example_gen = ImageExampleGen(
        input_base=data_root,
        split_mode=split_mode,
        train_dir=data.train_dir,
        eval_dir=data.eval_dir,
        eval_fraction=data.eval_fraction,
        max_quarantine_fraction=data.max_quarantine_fraction,
        max_image_pixels=data.max_image_pixels,
    )
    components.append(example_gen)

    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    components.append(statistics_gen)
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    components.append(schema_gen)

    if stop_after != "ingest":
        example_validator = tfx.components.ExampleValidator(
            statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
        )
        components.append(example_validator)

    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )

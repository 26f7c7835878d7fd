# syntax=docker/dockerfile:1
#
# ftune image: Python 3.10 + TFX 1.16 + this project (console script `ftune`), used for
#   - every step of the compiled Kubeflow pipeline: each container's *command* is `python -m pipeline.kfp_executor
#     ...` (TFX's kubeflow_v2_run_executor with s3:// registered, pipeline/kfp_executor.py), so the image only has
#     to provide `python` on PATH with tfx and this project importable -- no ENTRYPOINT is set on purpose;
#   - the retraining CronJob (kubernetes/base/retrain-cronjob.yaml), whose command is `ftune submit ...`.
#
# NOTE: this image is NOT built in CI (there is no Docker engine there). CI only checks it statically
# (tests/test_kubernetes_manifests.py parses it with BuildKit's parser and checks the pins and the user).
#
#   docker build -t ftune:dev .

# Pinned base (patch release + Debian release). Both stages must use the same image: the virtualenv built in
# the first stage links to its interpreter.
ARG PYTHON_IMAGE=python:3.10.18-slim-bookworm

# ---- build: compile what has no wheel (e.g. pyfarmhash needs a C++ compiler) into a virtualenv -------------
FROM ${PYTHON_IMAGE} AS build

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

WORKDIR /src
# The whole (filtered, see .dockerignore) source tree, only to build the wheel: the runtime stage has no sources.
COPY . .
# The project as a built wheel (the artifact tests/test_kfp_spec_execution.py installs alone and runs the
# compiled spec from), then every dependency at the version pinned in constraints.txt -- the set the tests run
# against -- plus the CUDA/cuDNN wheels (the gpu extra) so the Trainer uses the GPU on GPU nodes, and TensorFlow's
# S3 filesystem (the s3 extra: tensorflow-io, boto3) for pipeline roots, data and models in MinIO or S3.
RUN pip wheel --no-deps -w /wheels . \
    && pip install -c constraints.txt "$(ls /wheels/ftune-*.whl)[gpu,s3]"

# ---- runtime -----------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="ftune" \
      org.opencontainers.image.description="TFX transfer-learning pipeline (image classifier) and its CLI"

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/ftune

COPY --from=build /opt/venv /opt/venv

# Non-root user with a fixed numeric uid/gid: Kubernetes' runAsNonRoot can only verify a numeric USER, and
# the manifests (runAsUser: 10001) and the serving pods reading the models the Pusher writes rely on it.
# /gcs, /minio and /s3 are where the KFP v2 launcher stages artifacts on older KFP backends (newer ones mount
# emptyDirs there); created writable so a non-root step does not fail on mkdir in /. Group 0 and g=u permissions
# also let platforms that run with an arbitrary uid in group 0 (OpenShift) use them.
RUN groupadd --gid 10001 ftune \
    && useradd --uid 10001 --gid 10001 --home-dir /home/ftune --create-home --shell /usr/sbin/nologin ftune \
    && mkdir -p /gcs /minio /s3 \
    && chown -R 10001:0 /gcs /minio /s3 /home/ftune \
    && chmod -R g=u /gcs /minio /s3 /home/ftune

WORKDIR /home/ftune
USER 10001:10001

# `docker run IMAGE` prints the CLI help; Kubernetes/KFP always give an explicit command.
CMD ["ftune", "--help"]

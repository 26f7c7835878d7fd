"""The command every Kubeflow pod runs: `python -m pipeline.kfp_executor --executor_class_path ... ` (the compiled
spec's `command`, pipeline/kubeflow_v2_runner.py), TFX's own container entrypoint
(`tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor`) with two things around it:

* before: when the task's invocation names an s3:// URI (its pipeline root, data root or serving folder), the
  object-store environment is made consistent and TensorFlow's s3:// filesystem registered
  (pipeline/object_stores.py); TFX's entrypoint would otherwise fail with "File system scheme 's3' not implemented";
* during: the task's s3:// buckets are watched; an endpoint silent for object_store_timeout_s (its default) ends
  the task with exit 6, where TensorFlow's S3 client would retry for ever and the pod hang;
* after: the exit code TFX's entrypoint ended with is the pod's, also where tensorflow-io's S3 client would abort
  the interpreter's exit (134), which KFP would record as a failed task after a successful one.
"""

from __future__ import annotations

import sys
import traceback
from typing import List, Optional

from pipeline import object_stores
from pipeline.configs import PipelineConfig
from pipeline.scratch import run_scratch


def main(argv: Optional[List[str]] = None) -> int:
    from absl import app
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor as tfx_entrypoint

    argv = list(sys.argv if argv is None else argv)
    object_stores.configure_environment()
    if any(object_stores.S3 in arg for arg in argv[1:]):
        object_stores.register_filesystems([object_stores.S3])
    watch = object_stores.BucketWatch(object_stores.buckets_named(argv[1:]), PipelineConfig().object_store_timeout_s)
    try:
        with watch, run_scratch():  # TFX's temporary files go into a folder removed at the end (pipeline/scratch.py)
            # TFX's own flags parser (the executor class, the invocation JSON, Beam's args after them).
            app.run(tfx_entrypoint.main, argv=argv, flags_parser=tfx_entrypoint._parse_flags)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:  # the task failed: its traceback in the pod's log, a non-zero exit for KFP
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    if object_stores.s3_loaded():
        object_stores.exit_now(code)
    sys.exit(code)

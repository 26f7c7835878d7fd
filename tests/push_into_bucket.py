"""`python tests/push_into_bucket.py MODEL_DIR SERVING_MODEL_DIR`: one push of serving/model_versions.py, in its own
process, printing the version it got. The object-store tests run pushes this way: a process that loaded
tensorflow-io's S3 client must end through object_stores.exit_now (the test process itself never loads it), and a
test can kill a push halfway or start two at once."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import object_stores  # noqa: E402


def main() -> int:
    model_dir, serving_model_dir = sys.argv[1:3]
    object_stores.register_filesystems([model_dir, serving_model_dir])
    from serving import model_versions

    version = model_versions.push(model_dir, serving_model_dir, {"origin": "test push", "pid": os.getpid()})
    print(version, flush=True)
    return 0


if __name__ == "__main__":
    object_stores.exit_now(main())

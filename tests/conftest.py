"""Shared test fixtures. Tests run the real components on small generated data; nothing touches the network."""

import hashlib
import json
import os
import sys
from typing import Iterable, List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_WEIGHTS = os.path.join(REPO, "..", "shared", "weights", "mobilenet_v2_1.0_224_no_top.h5")
# In-process Beam keeps small test pipelines fast (no worker start-up); one test covers multi-processing.
IN_MEMORY_BEAM = ["--runner=FnApiRunner", "--direct_running_mode=in_memory"]
# The runs of the span chains (scheduled retraining, label issues, the loop in a bucket): small images, a few
# epochs (warm ones fewer), in-process Beam, a floor well above chance.
SPAN_RUN_SETTINGS = [
    "trainer.image_size=96",
    "trainer.batch_size=16",
    "trainer.phase1_epochs=5",
    "trainer.phase2_epochs=1",
    "trainer.warm_phase1_epochs=1",
    "trainer.warm_phase2_epochs=1",
    "trainer.cache_variants=2",
    "trainer.warmup_requests=1",
    "beam_args=" + json.dumps(IN_MEMORY_BEAM),
    "eval.accuracy_floor=0.5",
]


def pretrained_weights_path() -> str:
    """The MobileNetV2 ImageNet weights file the tests need (FTUNE_WEIGHTS, else ../shared/weights/...).

    A frozen base with random weights gives chance-level features, so tests that check learning need real
    weights; a missing file is a failure with instructions, never a skip.
    """
    path = os.environ.get("FTUNE_WEIGHTS") or SHARED_WEIGHTS
    if not os.path.isfile(path):
        pytest.fail(
            f"MobileNetV2 weights file not found at {path}: set FTUNE_WEIGHTS to a local copy of "
            "mobilenet_v2_1.0_224_no_top.h5"
        )
    return os.path.abspath(path)


def ftune_run_command(root, settings: Iterable[str] = (), *extra: str) -> List[str]:
    """`python -m pipeline.cli run` on pipeline root `root` with the shared weights and `--set` for each setting."""
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--pipeline-root", str(root), "--weights"]
    cmd.append(pretrained_weights_path())
    for item in settings:
        cmd += ["--set", item]
    return cmd + list(extra)


def tree_digest(path, skip=()) -> str:
    """Hash of every file's relative path and bytes below path: equal digests mean a byte-identical tree. Files
    named in `skip` are left out (e.g. the refused-attempt record a refusal adds beside the served versions)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(path)):
        dirnames.sort()
        for name in sorted(filenames):
            if name in skip:
                continue
            full = os.path.join(dirpath, name)
            digest.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


# --- two workers (pytest-xdist, `make test`) -------------------------------------------------------------------
# A pipeline run keeps about one of the machine's two cores busy (Beam in-process, TF start-up, small batches), so
# `make test` runs two pytest workers. Each module stays whole on one worker, so its module-scoped pipeline runs are
# made once; the modules reading the session's small run (below) go to one worker together, so that run is made
# once too. Modules are handed out longest first (times measured as tests/README.md says), so the long ones do not
# end up together at the tail. Without xdist (`pytest` alone) the order is all that changes.
SMALL_RUN_MODULES = ("test_report", "test_use_and_see", "test_predict", "test_tflite")
LONGEST_FIRST = (
    "test_scheduled_retraining",
    "test_label_issues",
    "test_kfp_spec_execution",
    "test_governance_e2e",
    "test_kfp_spec_on_s3",
    "test_fault_battery",
    "small_run",
    "test_fine_tune",
    "test_object_store_versions",
    "test_getting_started",
    "test_cats_vs_dogs_small",
    "test_cli",
    "test_image_example_gen",
    "test_cli_battery",
)


def worker_unit(module_name: str) -> str:
    """What goes to one worker whole: the small-run modules together, any other module by itself."""
    return "small_run" if module_name in SMALL_RUN_MODULES else module_name


def pytest_collection_modifyitems(config, items):
    def rank(item):
        unit = worker_unit(item.module.__name__)
        return LONGEST_FIRST.index(unit) if unit in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each module keeps its own order


def pytest_xdist_make_scheduler(config, log):
    """xdist's scope scheduling with worker_unit as the scope. (Its `loadgroup` mode would do this from
    xdist_group marks, but pytest-xdist 3.8 renames node ids in a way pytest 9 ignores: every test became its own
    group and each module's runs were made on both workers.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = os.path.splitext(os.path.basename(nodeid.split("::")[0]))[0]
            return worker_unit(module)

    config.option.loadscopereorder = False  # keep LONGEST_FIRST (xdist would order units by their test count)
    return ModuleUnits(config, log)


# --- one small pipeline run, shared ---------------------------------------------------------------------------

# The run behind test_report.py and test_use_and_see.py: a whole pipeline through `ftune run --json` costs minutes,
# so both modules read the same one. Generated sample data (2 classes x 40) plus one file that is not an image (its
# path has characters HTML must escape), 96 px, int8 TFLite on, Beam in multi-processing mode with 2 workers (so
# that worker start-up noise on the console would show).
SMALL_RUN_PER_CLASS = 40
SMALL_RUN_BAD_FILE = 'not <an> image & "quoted".jpg'
SMALL_RUN_PHASE1, SMALL_RUN_PHASE2 = 3, 2
SMALL_RUN_SETTINGS = [
    "data.sample_classes=2",
    f"data.sample_per_class={SMALL_RUN_PER_CLASS}",
    "data.split_mode=hash",  # sample data with class folders at the top: the bad file goes into one of them
    "data.max_quarantine_fraction=0.05",  # 1 bad file of 81
    "trainer.image_size=96",
    "trainer.batch_size=16",
    f"trainer.phase1_epochs={SMALL_RUN_PHASE1}",
    f"trainer.phase2_epochs={SMALL_RUN_PHASE2}",
    "eval.accuracy_floor=0",
    "push.tflite=int8",
    # A handful of eval images: one image is several points of accuracy, so the int8 gate gets room here.
    "eval.max_tflite_accuracy_drop=0.25",
]


@pytest.fixture(scope="session")
def small_run_tmpdir(tmp_path_factory):
    """The system temporary folder (TMPDIR) of the shared small run's process, to see what the run leaves there."""
    return tmp_path_factory.mktemp("small_run_tmpdir")


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, small_run_tmpdir):
    """(config, completed `ftune run --json` process, its JSON summary) of the shared small run."""
    import json
    import subprocess

    from pipeline.configs import load_config
    from pipeline.local_runner import ensure_sample_data

    root = tmp_path_factory.mktemp("small_run") / "root"
    config = load_config(None, SMALL_RUN_SETTINGS + [f"pipeline_root={root}"]).absolute_paths()
    # The same folder `ftune run` uses for sample data (it reuses a folder made with the same parameters).
    data_root = ensure_sample_data(config, progress=lambda m: None)
    first_class = sorted(d for d in os.listdir(data_root) if not d.startswith("."))[0]
    with open(os.path.join(data_root, first_class, SMALL_RUN_BAD_FILE), "wb") as f:
        f.write(b"plain text, not an image")
    cmd = ftune_run_command(root, SMALL_RUN_SETTINGS, "--json")
    env = {**os.environ, "TMPDIR": str(small_run_tmpdir)}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return config, result, json.loads(result.stdout)


# --- helpers of the modules that read the shared small run -----------------------------------------------------


def ftune_cli(*args, timeout=300):
    """`python -m pipeline.cli ARGS` from the repository root, output captured."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def eval_split_images(config):
    """[(file name, encoded bytes, label)] of the eval split, from ImageExampleGen's output."""
    import tensorflow as tf

    from pipeline.reporting.run_records import latest_artifact_uri

    uri = latest_artifact_uri(config, "ImageExampleGen", "examples")
    files = tf.io.gfile.glob(os.path.join(uri, "Split-eval", "*"))
    out = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature
        out.append(
            (
                feature["file_name"].bytes_list.value[0].decode(),
                feature["image"].bytes_list.value[0],
                int(feature["label"].int64_list.value[0]),
            )
        )
    return out


def served_version_1(config):
    """(folder, loaded SavedModel) of version 1 in the serving folder: what the small run pushed."""
    import tensorflow as tf

    version_dir = os.path.join(config.serving_model_dir, "1")
    return version_dir, tf.saved_model.load(version_dir)

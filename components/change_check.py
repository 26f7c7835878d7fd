"""ChangeCheck: the head of the pipeline decides whether anything needs training, in the pipeline itself.

Everything from ImageExampleGen to the Pusher runs under `tfx.dsl.Cond` on this component's decision artifact, so
`ftune run` (LocalDagRunner) and a compiled Kubeflow run (KFP's driver evaluates the `triggerPolicy.condition` TFX
writes) take the same decision with the same code. The decision's custom properties are always set:

    changed          int 1 (train) or 0 (nothing to do; every later task is skipped)
    reason           str: "no new data; version 3 stays served", "new data: span-4", "forced", ...
    served_version   int: the version TF Serving serves now, -1 for none
    refused          int 1 when nothing is to do because the gate refused these very data and settings before
    fingerprint      str: serving/model_record.files_fingerprint of the selected spans' input files
    settings         str: JSON of the training settings compared (training_settings), for the refusal record

"Unchanged" means: (a) the served version's record (`model_record.json`) holds the same input fingerprint and the
same training settings, or (b) the last refused attempt (`refused_attempt.json` beside the versions; the Pusher
writes it when the gate refuses, and it stays on file) holds the same fingerprint and settings and was compared
with the version served now (a push or a rollback since gives the batch another try). `force` (`ftune run
--force`, the KFP run parameter `force`) always trains.

Which settings decide training (training_settings): every `data.`, `trainer.`, `eval.` and `push.` value except
those that only say where things live or how much is kept (NOT_TRAINING_KEYS); the run's parameters on Kubeflow
(the Trainer's epochs and learning rate, eval.accuracy_floor) are applied first, as the Trainer and the Evaluator
apply them. The pipeline's name, root, Beam arguments and Kubeflow section say where and how it runs, not what is
trained, so a local and a compiled run over the same data agree.

The weights: `trainer.weights` naming a local file is compared by the file's content (trainer/weights_digest.py:
`sha256:<hex>`, cached by real path, size and mtime), so the same bytes under another path (a symlinked folder)
do not retrain and other bytes at the same path do; "imagenet", "none" and URIs compare as the strings they are.
The Pusher records the digest the check saw (`weights_digest` in model_record.json); a record written before
that key existed holds only the path, and its file is hashed as it is now (when it still exists; else the path
is compared): the old comparison by path assumed that file unchanged too, and an upgrade does not retrain.

The code version: TRAINING_CODE_VERSION, a number a release bumps when it changes what training produces (the
Trainer, the Transform's decoding, ImageExampleGen's image checks, the gate, the SavedModel export). A hash of the
sources would also retrain after a refactor, a comment or a CLI-only change inside those folders (every scheduled
pipeline then retrains and may push an equal model as a new version); a git commit would retrain on every release.
A record written before this constant existed counts as version 1.

The decision logic is plain functions (decide, training_settings), tested without TFX (tests/test_change_check.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.types.experimental.simple_artifacts import File

from components.image_listing import input_fingerprint, make_input_config, resolve_split_mode, select_spans
from serving import sidecars
from serving.model_record import utc_now
from serving.model_versions import NO_SERVED_VERSION, latest_served, refusal_applies
from trainer.settings import run_parameter_types
from trainer.weights_digest import DIGEST_PREFIX, is_digest, weights_identity

# Bump when a release changes what training produces (see the module docstring); the Pusher records it.
TRAINING_CODE_VERSION = 1
# The value for records written before TRAINING_CODE_VERSION existed.
FIRST_TRAINING_CODE_VERSION = 1
# Settings added after records were first written, with the value every earlier version was trained with: a record
# without the key is compared as if it named that value, so an upgrade alone does not retrain (issue 33: before
# trainer.profile every Trainer ran the fast recipe with the basic augmentation).
SETTINGS_BEFORE_THEY_EXISTED = {
    "trainer.profile": "fast",
    "trainer.augmentation": "basic",
    "trainer.warm_fine_tune_lr_factor": 0.1,
}
CODE_VERSION_KEY = "training_code_version"
# The settings key compared by content, and the record key the Pusher writes its digest under.
WEIGHTS_KEY = "trainer.weights"
# Named first when it changed: a new training profile (trainer/profiles.py) changes several settings at once.
PROFILE_KEY = "trainer.profile"
WEIGHTS_DIGEST_KEY = "weights_digest"

# Settings that say where things live or how much is kept, not what is trained or pushed. The input files
# themselves are compared through the fingerprint (paths relative to the data root), so moving the data root
# alone does not retrain.
NOT_TRAINING_KEYS = (
    "pipeline_name",
    "pipeline_root",
    "state_dir",
    "object_store_timeout_s",
    "beam_args",
    "kubeflow",
    "data.data_root",
    # Where the label fixes are; their content is in the input fingerprint (components/label_fixes.py).
    "data.label_fixes",
    "push.serving_dir",
    "push.model_name",
    "push.keep_versions",
    "trainer.cache_max_mb",  # the same training, its caches spilled to disk
    # The check of the training data (components/data_findings.py): what the Trainer reports, not what it trains.
    "trainer.label_issues",
    "trainer.label_issue_folds",
    "trainer.drift_threshold",
)

# Execution properties.
DATA_ROOT_KEY = "data_root"
SPLIT_MODE_KEY = "split_mode"
TRAIN_DIR_KEY = "train_dir"
EVAL_DIR_KEY = "eval_dir"
SPANS_KEY = "spans"
SETTINGS_KEY = "settings"
SERVING_MODEL_DIR_KEY = "serving_model_dir"
FORCE_KEY = "force"
CACHE_KEY_KEY = "cache_key"
# Kubeflow run parameters that change a setting: {execution property: (settings section, its type)}. The same
# names the Trainer (fine_tune_trainer.RUNTIME_OVERRIDES) and the Evaluator (accuracy_floor) take.
OVERRIDES: Dict[str, Tuple[str, type]] = {
    **{name: ("trainer", kind) for name, kind in run_parameter_types().items()},
    "accuracy_floor": ("eval", float),
}

# The output and its custom properties.
DECISION_KEY = "decision"
CHANGED_PROPERTY = "changed"
REASON_PROPERTY = "reason"
SERVED_VERSION_PROPERTY = "served_version"
REFUSED_PROPERTY = "refused"
FINGERPRINT_PROPERTY = "fingerprint"
SETTINGS_PROPERTY = "settings"

_SHOWN_KEYS = 5


@dataclasses.dataclass
class Decision:
    changed: bool
    reason: str
    served_version: int
    fingerprint: str
    settings: Dict[str, Any]  # training_settings form: {dotted key: value}
    refused: bool = False  # unchanged because the gate refused these data and settings before


# --- the settings compared ------------------------------------------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(value, Mapping):
        flat: Dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def _is_training_key(key: str) -> bool:
    return not any(key == skip or key.startswith(skip + ".") for skip in NOT_TRAINING_KEYS)


def training_settings(settings: Mapping[str, Any], code_version: int = TRAINING_CODE_VERSION) -> Dict[str, Any]:
    """{dotted key: value} of the settings that decide training (PipelineConfig.to_dict() or a record's
    "settings"), JSON-normalised, plus the training code version."""
    flat = _flatten(json.loads(json.dumps(settings)))
    result = {key: value for key, value in flat.items() if _is_training_key(key)}
    result[CODE_VERSION_KEY] = code_version
    return result


def apply_overrides(settings: Mapping[str, Any], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """A copy of `settings` (PipelineConfig.to_dict()) with this run's parameter values (None: not given)."""
    result = json.loads(json.dumps(settings))
    for name, value in overrides.items():
        if value is not None:
            section, _ = OVERRIDES[name]
            result.setdefault(section, {})[name] = value
    return result


def with_weights_content(settings: Mapping[str, Any], digest: Optional[str] = None) -> Dict[str, Any]:
    """`settings` (training_settings form) with trainer.weights as the file's content: `digest` when it is one
    (a record's), else weights_identity of the value (a path hashed as the file is now; a keyword, a URI or a
    digest unchanged)."""
    result = dict(settings)
    if WEIGHTS_KEY in result:
        result[WEIGHTS_KEY] = digest if is_digest(digest) else weights_identity(result[WEIGHTS_KEY])
    return result


def current_settings(settings: Mapping[str, Any], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """The training settings of this run, compared with the records: PipelineConfig.to_dict() with the run's
    parameters applied, flattened, the weights file as its content."""
    return with_weights_content(training_settings(apply_overrides(settings, overrides)))


def recorded_settings(record: Mapping[str, Any]) -> Dict[str, Any]:
    """training_settings of a served version's record (the settings in effect when it was trained), the weights
    file as the content the change check saw then (a record without it: the file at its path now), and the
    values of settings added since that the record's training had without naming them (SETTINGS_BEFORE_THEY_EXISTED)."""
    settings = training_settings(
        record.get("settings") or {}, record.get(CODE_VERSION_KEY) or FIRST_TRAINING_CODE_VERSION
    )
    for key, value in SETTINGS_BEFORE_THEY_EXISTED.items():
        settings.setdefault(key, value)
    return with_weights_content(settings, record.get(WEIGHTS_DIGEST_KEY))


def changed_keys(now: Mapping[str, Any], then: Mapping[str, Any]) -> List[str]:
    """The keys whose values differ, trainer.profile first, then by name."""
    return sorted(
        (key for key in set(now) | set(then) if now.get(key) != then.get(key)), key=lambda k: (k != PROFILE_KEY, k)
    )


def _shown(value: Any) -> str:
    """A value in the reason: a content digest shortened to 12 hex digits."""
    return repr(value[: len(DIGEST_PREFIX) + 12] if is_digest(value) else value)


def _describe_settings(now: Mapping[str, Any], then: Mapping[str, Any], keys: Sequence[str]) -> str:
    parts = []
    for key in keys[:_SHOWN_KEYS]:
        if key == CODE_VERSION_KEY:
            parts.append(f"training code version {then.get(key)} -> {now.get(key)}")
        else:
            parts.append(f"{key} ({_shown(then.get(key))} -> {_shown(now.get(key))})")
    more = f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else ""
    return "settings changed: " + ", ".join(parts) + more


# --- the decision ---------------------------------------------------------------------------------------------------


def _stays_served(served_version: int) -> str:
    return f"version {served_version} stays served" if served_version != NO_SERVED_VERSION else "nothing is served"


def _describe_data(spans: Sequence[str], record: Mapping[str, Any], served_version: int) -> str:
    then = list((record.get("data") or {}).get("spans") or [])
    added = [span for span in spans if span not in then]
    if added:
        return "new data: " + ", ".join(added)
    removed = [span for span in then if span not in spans]
    if removed:
        return f"data changed: {', '.join(removed)} no longer selected"
    return f"new data: the input files differ from version {served_version}'s"


def _refusal_matches(
    refused: Optional[Mapping[str, Any]], fingerprint: str, settings: Mapping[str, Any], served_version: int
) -> bool:
    """The same data and settings were refused by the gate against the version served now (a refusal written
    before the weights were compared by content holds the path: its file is hashed as it is now)."""
    return (
        refusal_applies(refused, served_version)
        and refused.get("fingerprint") == fingerprint
        and not changed_keys(settings, with_weights_content(refused.get("settings") or {}))
    )


def _refusal_reason(refused: Mapping[str, Any], served_version: int) -> str:
    checks = [str(c) for c in refused.get("failed_checks") or []] or ["the gate refused the model"]
    more = f" (and {len(checks) - 1} more)" if len(checks) > 1 else ""
    return (
        f"no new data since the refused run of {refused.get('time') or 'an earlier run'}: {checks[0]}{more}; "
        f"{_stays_served(served_version)}"
    )


def decide(
    *,
    fingerprint: str,
    spans: Sequence[str],
    settings: Mapping[str, Any],
    served_version: int,
    served_record: Optional[Mapping[str, Any]],
    refused: Optional[Mapping[str, Any]],
    force: bool,
) -> Decision:
    """Whether to train, and why. `settings` in training_settings form (current_settings: the weights file as its
    content); `served_record` the served version's model_record.json (None when nothing is served or it has
    none); `refused` the refused_attempt.json."""

    def result(changed: bool, reason: str) -> Decision:
        return Decision(changed, reason, served_version, fingerprint, dict(settings))

    if force:
        return result(True, "forced")
    record = served_record or {}
    recorded_fingerprint = (record.get("data") or {}).get("fingerprint")
    has_record = served_version != NO_SERVED_VERSION and bool(recorded_fingerprint) and bool(record.get("settings"))
    then = recorded_settings(record) if has_record else {}
    keys = changed_keys(settings, then) if has_record else []
    if has_record and recorded_fingerprint == fingerprint and not keys:
        return result(False, f"no new data; {_stays_served(served_version)}")
    if _refusal_matches(refused, fingerprint, settings, served_version):
        return dataclasses.replace(result(False, _refusal_reason(refused or {}, served_version)), refused=True)
    if served_version == NO_SERVED_VERSION:
        return result(True, "nothing served yet")
    if not has_record:
        return result(True, f"served version {served_version} has no data record (pushed by hand or an older ftune)")
    reasons = []
    if recorded_fingerprint != fingerprint:
        reasons.append(_describe_data(spans, record, served_version))
    if keys:
        reasons.append(_describe_settings(settings, then, keys))
    return result(True, "; ".join(reasons))


def refused_attempt(decision: Decision, failed_checks: Sequence[str], pipeline_run: Optional[str]) -> Dict[str, Any]:
    """The refused_attempt.json the Pusher writes (serving/sidecars.write_refused_attempt) when the gate refuses."""
    return {
        "fingerprint": decision.fingerprint,
        "settings": decision.settings,
        "served_version": decision.served_version,
        "failed_checks": [str(c) for c in failed_checks],
        "pipeline_run": pipeline_run,
        "time": utc_now(),
    }


# --- the artifact ---------------------------------------------------------------------------------------------------


def write_decision(artifact: types.Artifact, decision: Decision) -> None:
    artifact.set_int_custom_property(CHANGED_PROPERTY, int(decision.changed))
    artifact.set_string_custom_property(REASON_PROPERTY, decision.reason)
    artifact.set_int_custom_property(SERVED_VERSION_PROPERTY, decision.served_version)
    artifact.set_int_custom_property(REFUSED_PROPERTY, int(decision.refused))
    artifact.set_string_custom_property(FINGERPRINT_PROPERTY, decision.fingerprint)
    artifact.set_string_custom_property(SETTINGS_PROPERTY, json.dumps(decision.settings, sort_keys=True))


def read_decision(artifact: types.Artifact) -> Decision:
    """The decision an artifact carries (the Pusher's input, the CLI's MLMD lookup)."""
    return Decision(
        changed=bool(artifact.get_int_custom_property(CHANGED_PROPERTY)),
        reason=artifact.get_string_custom_property(REASON_PROPERTY),
        served_version=artifact.get_int_custom_property(SERVED_VERSION_PROPERTY),
        fingerprint=artifact.get_string_custom_property(FINGERPRINT_PROPERTY),
        settings=json.loads(artifact.get_string_custom_property(SETTINGS_PROPERTY) or "{}"),
        refused=bool(artifact.get_int_custom_property(REFUSED_PROPERTY)),
    )


# --- the component --------------------------------------------------------------------------------------------------


def check(exec_properties: Mapping[str, Any]) -> Decision:
    """Reads the data folder and the serving folder and decides (the executor's work, without the artifact)."""
    data_root = exec_properties[DATA_ROOT_KEY]
    train_dir, eval_dir = exec_properties[TRAIN_DIR_KEY], exec_properties[EVAL_DIR_KEY]
    spans = select_spans(data_root, exec_properties[SPANS_KEY])
    split_mode = resolve_split_mode(data_root, exec_properties[SPLIT_MODE_KEY], train_dir, eval_dir, spans)
    configured = json.loads(exec_properties[SETTINGS_KEY])
    # The label fixes file's content is part of the input (components/label_fixes.py): new fixes are new data.
    label_fixes = (configured.get("data") or {}).get("label_fixes") or ""
    fingerprint = input_fingerprint(data_root, make_input_config(split_mode, train_dir, eval_dir), spans, label_fixes)
    overrides = {name: exec_properties.get(name) for name in OVERRIDES}
    settings = current_settings(configured, overrides)
    serving_model_dir = exec_properties[SERVING_MODEL_DIR_KEY]
    served_version, served_path = latest_served(serving_model_dir)
    return decide(
        fingerprint=fingerprint,
        spans=spans,
        settings=settings,
        served_version=served_version,
        served_record=sidecars.read_model_record(served_path) if served_path else None,
        refused=sidecars.read_refused_attempt(serving_model_dir),
        force=bool(exec_properties.get(FORCE_KEY)),
    )


class Executor(base_executor.BaseExecutor):
    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        artifact = artifact_utils.get_single_instance(output_dict[DECISION_KEY])
        decision = check(exec_properties)
        write_decision(artifact, decision)
        # An empty folder: the decision lives in the custom properties (KFP's launcher uploads the output's folder).
        fileio.makedirs(artifact.uri)
        logging.info("ChangeCheck: %s -> %s", decision.reason, "train" if decision.changed else "nothing to do")


class ChangeCheckSpec(ComponentSpec):
    PARAMETERS = {
        DATA_ROOT_KEY: ExecutionParameter(type=str),
        SPLIT_MODE_KEY: ExecutionParameter(type=str),
        TRAIN_DIR_KEY: ExecutionParameter(type=str),
        EVAL_DIR_KEY: ExecutionParameter(type=str),
        SPANS_KEY: ExecutionParameter(type=str),
        SETTINGS_KEY: ExecutionParameter(type=str),
        SERVING_MODEL_DIR_KEY: ExecutionParameter(type=str),
        FORCE_KEY: ExecutionParameter(type=int),
        # Local runs: what the decision depends on, seen at build time (served versions, input fingerprint,
        # refused attempt), so that MLMD's cache reuses the decision (and everything after it) only while those
        # are unchanged. On Kubeflow the task has no input artifact, so its cache is off (kubeflow_v2_runner).
        CACHE_KEY_KEY: ExecutionParameter(type=str, optional=True),
        **{name: ExecutionParameter(type=kind, optional=True) for name, (_, kind) in OVERRIDES.items()},
    }
    INPUTS: Dict[str, ChannelParameter] = {}
    # File: KFP v2 needs an artifact type TFX's compiler knows; a custom type's schema title must be
    # `<module>.<Class>` (one dot), which `components.change_check.<Class>` is not. The decision is in the properties.
    OUTPUTS = {DECISION_KEY: ChannelParameter(type=File)}


class ChangeCheck(base_component.BaseComponent):
    SPEC_CLASS = ChangeCheckSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(
        self,
        *,
        data_root,
        split_mode: str,
        train_dir: str,
        eval_dir: str,
        spans: str,
        settings: Mapping[str, Any],
        serving_model_dir: str,
        force,
        cache_key: str = "",
        **overrides,
    ):
        """`data_root` and `force` may be Kubeflow RuntimeParameters, as may the `overrides` (names in OVERRIDES);
        `settings` is PipelineConfig.to_dict()."""
        unknown = set(overrides) - set(OVERRIDES)
        if unknown:
            raise TypeError(f"unknown run-parameter overrides {sorted(unknown)} (known: {sorted(OVERRIDES)})")
        super().__init__(
            spec=ChangeCheckSpec(
                data_root=data_root,
                split_mode=split_mode,
                train_dir=train_dir,
                eval_dir=eval_dir,
                spans=spans,
                settings=json.dumps(settings, sort_keys=True),
                serving_model_dir=serving_model_dir,
                force=force,
                cache_key=cache_key,
                decision=types.Channel(type=File),
                **overrides,
            )
        )

"""Training profiles: the recipe the Trainer runs, chosen by the hardware it runs on (`trainer.profile`).

- `fast`: the CPU recipe (the defaults of trainer/settings.py): phase 1 on cached pooled features, phase 2 on the
  cached activations below the unfrozen block, augmentation as a few cached versions of each image.
- `best`: the recipe practitioners run on GPUs: 224 px (the weights' native size), phase 2 end to end on freshly
  augmented images every epoch (random zoom-in crops, flips, rotations, brightness and contrast), the base unfrozen
  from about a third of its depth (BatchNormalization stays frozen, as in every profile), a longer cosine schedule,
  float16 compute on the GPU. On this project's 2-core CPU it took 3-6x the time of `fast` (docs/benchmarks.md).
- `auto` (the default): the profile for the Trainer's hardware, `AUTO_WITHOUT_GPU` / `AUTO_WITH_GPU`.

`auto` with a GPU is `fast` for now: measured on TrashNet (seed 42, one invocation, docs/benchmarks.md, "Training
profiles"), `best` reached 0.863 accuracy against `fast`'s 0.896 (0.913 since fast's phase-2 rate went to 0.3), and
neither the basic augmentation (0.878; 0.909 through the whole schedule, level with fast at 7x its time), a 10x
lower fine-tuning rate (0.867) nor the default unfreeze depth (0.873) beat it. A GPU would compute the same
numbers faster, so sending GPU Trainers to `best` would train no better models, later, on the hardware users pay
for. `best` stays available by name; when a
GPU recipe measures better, AUTO_WITH_GPU is the one line to change.

Where the Trainer runs decides: the local runner counts this machine's GPUs, the Kubeflow compiler reads
`kubeflow.gpu_count` (the Trainer's pod). The choice is made once, when the pipeline is built, because Transform
resizes the images to the profile's size before the Trainer starts. The resolved profile is what the settings
hold from then on (so the change check compares `fast` with `fast`, whatever was written), and the choice with
its reason travels to the Trainer, which logs it and writes it into the training history and the version's record.

A profile sets only the trainer settings the user did not set: a value written in the config file or with --set
(say `trainer.image_size=192`, or `trainer.augmentation=basic` although basic is the default, with
`trainer.profile=best`) is kept.
"""

from __future__ import annotations

import dataclasses
from typing import AbstractSet, Any, Dict, Optional, Tuple

from trainer.settings import PROFILE_SETTINGS, TrainerConfig

AUTO, FAST, BEST = PROFILE_SETTINGS

# What `best` changes from the defaults (`fast` changes nothing: the defaults are the CPU recipe).
BEST_RECIPE: Dict[str, Any] = {
    "image_size": 224,
    "phase2_mode": "end_to_end",
    "phase2_epochs": 20,
    "fine_tune_lr_factor": 0.1,  # end to end over 100 layers: the guides' rate (fast's 0.3 is for its top only)
    "fine_tune_at": 0.35,  # MobileNetV2: layer 54 of 154 (block 6 on), against the default 100
    "augmentation": "strong",
    "early_stopping_patience": 5,
    "mixed_precision": True,
}
RECIPES: Dict[str, Dict[str, Any]] = {FAST: {}, BEST: BEST_RECIPE}
# What `auto` resolves to (see the module docstring for why a GPU gets `fast` too, for now).
AUTO_WITHOUT_GPU = FAST
AUTO_WITH_GPU = FAST


@dataclasses.dataclass(frozen=True)
class Hardware:
    """The Trainer's accelerators as the runner sees them: `gpus` and where that number comes from."""

    gpus: int
    source: str


@dataclasses.dataclass(frozen=True)
class ProfileChoice:
    """`setting` as written (auto, fast or best), the profile it resolved to, and why (one line)."""

    setting: str
    resolved: str
    why: str

    def as_dict(self) -> Dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, value: Optional[Dict[str, Any]]) -> Optional[ProfileChoice]:
        if not value:
            return None
        return cls(str(value["setting"]), str(value["resolved"]), str(value["why"]))

    def line(self) -> str:
        """ "profile best (trainer.profile=auto: kubeflow.gpu_count=1)"."""
        return f"profile {self.resolved} (trainer.profile={self.setting}: {self.why})"


def choose(setting: str, hardware: Hardware) -> ProfileChoice:
    """The profile `setting` resolves to on `hardware`."""
    gpus = f"{hardware.gpus} GPU{'s' if hardware.gpus != 1 else ''}"
    if setting == AUTO:
        resolved = AUTO_WITH_GPU if hardware.gpus > 0 else AUTO_WITHOUT_GPU
        why = f"{hardware.source}: {gpus}"
        if hardware.gpus > 0 and resolved == FAST:
            why += "; the GPU recipe (best) measured below fast, see docs/benchmarks.md"
        return ProfileChoice(setting, resolved, why)
    return ProfileChoice(setting, setting, f"as set ({hardware.source}: {gpus})")


def apply(cfg: TrainerConfig, choice: ProfileChoice, written: AbstractSet[str] = frozenset()) -> TrainerConfig:
    """A copy of `cfg` with profile = the resolved one and the profile's recipe in every field the user did not
    set: a field named in `written` (the trainer settings the config file and --set wrote, even to the default
    value) or holding another value than its default keeps its value."""
    defaults = TrainerConfig()
    changes = {
        name: value
        for name, value in RECIPES[choice.resolved].items()
        if name not in written and getattr(cfg, name) == getattr(defaults, name)
    }
    return dataclasses.replace(cfg, profile=choice.resolved, **changes)


def resolve(
    cfg: TrainerConfig, hardware: Hardware, written: AbstractSet[str] = frozenset()
) -> Tuple[TrainerConfig, ProfileChoice]:
    """(the TrainerConfig the pipeline runs, the ProfileChoice): `apply(cfg, choose(cfg.profile, hardware),
    written)`."""
    choice = choose(cfg.profile, hardware)
    resolved = apply(cfg, choice, written)
    kept = [
        f"{name}={getattr(resolved, name)!r}"
        for name, value in RECIPES[choice.resolved].items()
        if getattr(resolved, name) != value
    ]
    if kept:  # said in the Trainer's log and the record, e.g. a config file copied whole from `ftune config`
        choice = dataclasses.replace(choice, why=f"{choice.why}; set by the user over the profile: {', '.join(kept)}")
    return resolved, choice


def local_hardware() -> Hardware:
    """This machine's GPUs as TensorFlow sees them (the local runner's Trainer runs here)."""
    import tensorflow as tf

    return Hardware(len(tf.config.list_physical_devices("GPU")), "this machine")


def hardware_mismatch(choice: ProfileChoice, gpus_here: int) -> Optional[str]:
    """A warning when the Trainer finds other hardware than its profile was chosen for (None when it matches): the
    recipe still runs, only at another speed or with another result than `auto` would have chosen here."""
    if choice.resolved == BEST and gpus_here == 0:
        return (
            f"{choice.line()}, but this Trainer sees no GPU: the GPU recipe runs on the CPU, several times slower "
            "than the fast profile (check the node's GPU and its drivers, or set trainer.profile=fast)"
        )
    here = choose(AUTO, Hardware(gpus_here, "this Trainer")).resolved
    if choice.setting == AUTO and here != choice.resolved:
        return (
            f"{choice.line()}, but this Trainer sees {gpus_here} GPU(s), for which auto is {here}: the pipeline was "
            "built for other hardware (set kubeflow.gpu_count to the Trainer's GPUs, or trainer.profile by name)"
        )
    return None

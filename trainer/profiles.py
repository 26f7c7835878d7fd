"""Training profiles: the recipe the Trainer runs, chosen by the hardware it runs on (`trainer.profile`).

- `fast`: the CPU recipe (the defaults of trainer/settings.py): phase 1 on cached pooled features, phase 2 on the
  cached activations below the unfrozen block, augmentation as a few cached versions of each image.
- `best`: the recipe practitioners run on GPUs: 224 px (the weights' native size), phase 2 end to end on freshly
  augmented images every epoch (random zoom-in crops, flips, rotations, brightness and contrast), the base unfrozen
  from about a third of its depth (BatchNormalization stays frozen, as in every profile), a longer cosine schedule,
  float16 compute on the GPU. On a CPU the same math runs, ~10x slower than `fast` (docs/benchmarks.md).
- `auto` (the default): `best` when the Trainer has a GPU, else `fast`.

Where the Trainer runs decides: the local runner counts this machine's GPUs, the Kubeflow compiler reads
`kubeflow.gpu_count` (the Trainer's pod). The choice is made once, when the pipeline is built, because Transform
resizes the images to the profile's size before the Trainer starts. The resolved profile is what the settings
hold from then on (so the change check compares `fast` with `fast`, whatever was written), and the choice with
its reason travels to the Trainer, which logs it and writes it into the training history and the version's record.

A profile sets only the trainer settings still at their defaults: a value the user set (say
`trainer.image_size=192` with `trainer.profile=best`) is kept.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

from trainer.settings import PROFILE_SETTINGS, TrainerConfig

AUTO, FAST, BEST = PROFILE_SETTINGS

# What `best` changes from the defaults (`fast` changes nothing: the defaults are the CPU recipe).
BEST_RECIPE: Dict[str, Any] = {
    "image_size": 224,
    "phase2_mode": "end_to_end",
    "phase2_epochs": 20,
    "fine_tune_at": 0.35,  # MobileNetV2: layer 54 of 154 (block 6 on), against the default 100
    "augmentation": "strong",
    "early_stopping_patience": 5,
    "mixed_precision": True,
}
RECIPES: Dict[str, Dict[str, Any]] = {FAST: {}, BEST: BEST_RECIPE}


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
        resolved = BEST if hardware.gpus > 0 else FAST
        return ProfileChoice(setting, resolved, f"{hardware.source}: {gpus}")
    return ProfileChoice(setting, setting, f"as set ({hardware.source}: {gpus})")


def apply(cfg: TrainerConfig, choice: ProfileChoice) -> TrainerConfig:
    """A copy of `cfg` with profile = the resolved one and the profile's recipe in every field still at its
    default (fields the user set keep their values)."""
    defaults = TrainerConfig()
    changes = {
        name: value for name, value in RECIPES[choice.resolved].items() if getattr(cfg, name) == getattr(defaults, name)
    }
    return dataclasses.replace(cfg, profile=choice.resolved, **changes)


def resolve(cfg: TrainerConfig, hardware: Hardware) -> Tuple[TrainerConfig, ProfileChoice]:
    """(the TrainerConfig the pipeline runs, the ProfileChoice): `apply(cfg, choose(cfg.profile, hardware))`."""
    choice = choose(cfg.profile, hardware)
    return apply(cfg, choice), choice


def local_hardware() -> Hardware:
    """This machine's GPUs as TensorFlow sees them (the local runner's Trainer runs here)."""
    import tensorflow as tf

    return Hardware(len(tf.config.list_physical_devices("GPU")), "this machine")


def hardware_mismatch(choice: ProfileChoice, gpus_here: int) -> Optional[str]:
    """A warning when the Trainer finds other hardware than its profile was chosen for (None when it matches): the
    recipe still runs, only at another speed."""
    if choice.resolved == BEST and gpus_here == 0:
        return (
            f"{choice.line()}, but this Trainer sees no GPU: the GPU recipe runs on the CPU, about 10x slower than "
            "the fast profile (check the node's GPU and its drivers, or set trainer.profile=fast)"
        )
    if choice.resolved == FAST and gpus_here > 0 and choice.setting == AUTO:
        return (
            f"{choice.line()}, but this Trainer sees {gpus_here} GPU(s): it trains the CPU recipe (the pipeline was "
            "built for a Trainer without one; set kubeflow.gpu_count, or trainer.profile=best)"
        )
    return None

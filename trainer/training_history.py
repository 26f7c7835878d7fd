"""The record of one two-phase training run (trainer/fine_tune.py `train_two_phase` returns `as_dict()`).

The Trainer component writes it next to the model; its keys are what the reports and benchmarks read.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from trainer.feature_cache import FeatureCaches
from trainer.sub_models import PrefixCut


class TrainingHistory:
    """Collects, phase by phase, what `train_two_phase` returns."""

    def __init__(self, lr1: float, lr2: float):
        self.metrics: Dict[str, List[float]] = {}
        self.phase: List[int] = []
        self.learning_rates = {"phase1": lr1, "phase2": lr2}
        self.optimizer_learning_rates: Dict[str, float] = {}
        self.modes: Dict[str, str] = {}
        self.seconds: Dict[str, float] = {}
        self.final_eval_accuracy: Dict[str, Optional[float]] = {}
        self.phase2_start_epoch: Optional[int] = None
        self.trainable_base_layers = 0
        self.cache: Dict[str, Any] = {}
        self.class_weighting: Dict[str, Any] = {}
        self.total_seconds = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.phase)

    def cache_info(self, caches: FeatureCaches, cut: Optional[PrefixCut], seconds: float) -> None:
        self.cache = {"bytes": caches.nbytes(), "on_disk_bytes": caches.on_disk_bytes(), "seconds": seconds}
        if cut is not None:
            self.cache.update(cut_layer_index=cut.index, cut_layer_name=cut.layer_name)

    def phase_lr(self, phase: int, value: float) -> None:
        self.optimizer_learning_rates[f"phase{phase}"] = value

    def add_epochs(self, phase: int, fit_history: Dict[str, List[float]]) -> None:
        if phase == 2:
            self.phase2_start_epoch = self.epochs_run
        done = self.epochs_run
        count = len(next(iter(fit_history.values()), []))
        for key, values in fit_history.items():
            self.metrics.setdefault(key, [None] * done).extend(float(v) for v in values)
        for values in self.metrics.values():  # a key missing in this phase
            values.extend([None] * (done + count - len(values)))
        self.phase.extend([phase] * count)

    def final_accuracy(self, phase: int, value: Optional[float]) -> None:
        self.final_eval_accuracy[f"phase{phase}"] = value

    def phase_done(self, phase: int, mode: str, seconds: float) -> None:
        self.modes[f"phase{phase}"] = mode
        self.seconds[f"phase{phase}"] = seconds

    def as_dict(self) -> Dict[str, Any]:
        """Per-epoch lists (metrics, `epoch`, `phase`), then the per-run facts; plain JSON types only."""
        return {
            **self.metrics,
            "epoch": list(range(self.epochs_run)),
            "phase": list(self.phase),
            "phase2_start_epoch": self.phase2_start_epoch,
            "learning_rates": dict(self.learning_rates),
            "optimizer_learning_rates": dict(self.optimizer_learning_rates),
            "modes": dict(self.modes),
            "trainable_base_layers": int(self.trainable_base_layers),
            "final_accuracy": dict(self.final_eval_accuracy),  # on the eval split, after each phase
            "wall_seconds": {
                "feature_cache": float(self.cache.get("seconds", 0.0)),
                **{k: float(v) for k, v in self.seconds.items()},
                "total": float(self.total_seconds),
            },
            "cache": {k: v for k, v in self.cache.items() if k != "seconds"},
            # JSON keys are strings: the class index as text.
            "class_weighting": {
                **self.class_weighting,
                "weights": {str(k): v for k, v in self.class_weighting.get("weights", {}).items()},
            },
        }

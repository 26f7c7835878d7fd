"""The Trainer logs its settings readably (trainer/settings.py settings_lines): only the fields that differ from
TrainerConfig's defaults, one `name=value` per line, instead of the whole repr on one line. No TensorFlow."""

import dataclasses

from trainer.settings import TrainerConfig, non_default_settings, settings_lines


def test_the_defaults_are_one_short_line():
    assert non_default_settings(TrainerConfig()) == {}
    assert settings_lines(TrainerConfig()) == ["trainer settings: all defaults"]


def test_only_what_differs_from_the_defaults_one_per_line_in_declaration_order():
    cfg = TrainerConfig(phase1_epochs=2, weights="/w/base.h5", learning_rate=0.01, augment=False, seed=42)
    assert settings_lines(cfg) == [
        "trainer settings other than the defaults:",
        "  weights='/w/base.h5'",
        "  phase1_epochs=2",
        "  learning_rate=0.01",
        "  augment=False",
    ]


def _another(value):
    """A value of the same type that differs from `value`."""
    if isinstance(value, bool):
        return not value
    return value + 1 if isinstance(value, (int, float)) else f"{value}x"


def test_no_line_is_the_whole_repr():
    """Every field changed: one line per field, each far shorter than the 900-character repr it replaces."""
    changed = TrainerConfig(**{f.name: _another(f.default) for f in dataclasses.fields(TrainerConfig)})
    lines = settings_lines(changed)
    assert len(lines) == 1 + len(dataclasses.fields(TrainerConfig))
    assert max(len(line) for line in lines) < 60
    assert not any("TrainerConfig(" in line for line in lines)

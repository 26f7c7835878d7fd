"""Where the pretrained weights of the base network come from.

The setting is `trainer.weights`:

- a local file path: the Keras weights file of the base (it must exist);
- "imagenet": let `keras.applications` download the official ImageNet weights (needs network access);
- "none": random initialisation (only useful for tests: a frozen random base gives a chance-level model);
- "" (the default): the `FTUNE_WEIGHTS` environment variable if it is set, else "imagenet".

A failed ImageNet download is an error, never a silent fallback to random weights: phase 1 trains only the
head on top of the frozen base, so a random base would produce a chance-level model that still "trains".
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import keras

# resolve_weights lives with the settings (no TensorFlow), so the CLI checks a weights path before Keras loads.
from trainer.settings import IMAGENET, NO_WEIGHTS, WEIGHTS_ENV_VAR, ConfigError, resolve_weights  # noqa: F401


class WeightsUnavailableError(RuntimeError):
    """The ImageNet weights could not be downloaded (typically: no network access)."""


class WeightsFileError(ConfigError):
    """A local weights file cannot be loaded into the chosen base: truncated, corrupt, or for another network."""


def build_base(
    constructor: Callable[..., keras.Model],
    input_shape: Tuple[int, int, int],
    weights: Optional[str],
    name: str = "base",
) -> keras.Model:
    """Builds a headless `keras.applications` base with `weights` as returned by `resolve_weights`.

    Raises WeightsUnavailableError when `weights` is "imagenet" and the download fails.
    """
    try:
        return constructor(input_shape=input_shape, include_top=False, weights=weights, name=name)
    except Exception as exc:  # keras.utils.get_file raises a bare Exception on URL fetch failures.
        if weights not in (IMAGENET, None) and _builds_without(constructor, input_shape, name):
            raise WeightsFileError(
                f"weights file {weights} cannot be loaded into the {constructor.__name__} base "
                f"(input {input_shape}): it is truncated or corrupt, or holds the weights of another network "
                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}). "
                "Set trainer.base_model to the network the file is for, or pass the right file with --weights "
                f"(trainer.weights) or {WEIGHTS_ENV_VAR}"
            ) from exc
        if weights != IMAGENET or not _is_download_failure(exc):
            raise
        raise WeightsUnavailableError(
            "could not download the ImageNet weights for the base model "
            f"({type(exc).__name__}: {exc}). Without network access, pass a local weights file with "
            f"`--weights PATH` (config trainer.weights) or set the environment variable {WEIGHTS_ENV_VAR}=PATH. "
            "Training on a randomly initialised frozen base would only give a chance-level model, "
            "so there is no fallback."
        ) from exc


def _builds_without(constructor: Callable[..., keras.Model], input_shape, name: str) -> bool:
    """Whether the base builds with random weights, i.e. the weights file (not the shape) was the problem."""
    try:
        constructor(input_shape=input_shape, include_top=False, weights=None, name=name)
    except Exception:
        return False
    return True


def _is_download_failure(exc: Exception) -> bool:
    # ValueError/TypeError usually mean bad arguments (e.g. an input shape the base does not support), which
    # must surface as they are; the exception is a corrupted (partial) download, reported as a ValueError.
    if isinstance(exc, (ValueError, TypeError)):
        return "corrupted" in str(exc).lower()
    return True

"""The one error path of the `ftune` commands: an exception -> an exit code of pipeline/outcome.py and one line.

An error the user can fix (a wrong setting, flag, path or file, unusable data, no weights, nothing to do, a refusal
or silence of the KFP API or TF Serving) is printed as one line `ftune: error: <what is wrong and what to do>`;
anything else is a bug: its traceback, then a line saying so, exit 1.

The errors are recognised anywhere in the exception chain (TFX wraps a component's error in its own). Commands
that only read records or talk to KFP run without TensorFlow, so the classes of modules that load it are looked up
only when their module was imported (`_raised`), never imported here.
"""

from __future__ import annotations

import sys
import traceback
from typing import Optional, Tuple

from pipeline import outcome
from pipeline.configs import ConfigError
from pipeline.outcome import CommandError


def report_error(exc: BaseException) -> int:
    """Prints `ftune: error: ...` (one line) for an error the user can fix and returns its exit code; for anything
    else prints the traceback and a line saying it is a bug, and returns 1."""
    known = classify_error(exc)
    if known is not None:
        code, message = known
        print(f"ftune: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
        return code
    traceback.print_exception(type(exc), exc, exc.__traceback__)
    print(
        f"ftune: error: unexpected {type(exc).__name__} (traceback above). This is a bug in ftune, or a crashed "
        "component, not a mistake in what you asked: please report it with the traceback",
        file=sys.stderr,
        flush=True,
    )
    return outcome.EXIT_ERROR


# Errors of modules that load TensorFlow: (module, class, exit code, message prefix).
_HEAVY_ERRORS = (
    ("components.image_listing", "DataUnusableError", outcome.EXIT_UNUSABLE_INPUT, "unusable data: "),
    ("components.label_fixes", "LabelFixesError", outcome.EXIT_UNUSABLE_INPUT, "unusable input: "),
    ("pipeline.local_runner", "PipelineBusyError", outcome.EXIT_BUSY, ""),
    ("trainer.weights", "WeightsUnavailableError", outcome.EXIT_UNUSABLE_INPUT, ""),
)


def classify_error(exc: BaseException) -> Optional[Tuple[int, str]]:
    """(exit code, message) for errors that are the user's to fix (bad setting, flag or path, unusable data, no
    weights, nothing to do, a refusal of the KFP API), found anywhere in the exception chain (TFX wraps component
    errors); None for bugs."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        known = _known_error(exc)
        if known is not None:
            return known
        exc = exc.__cause__ or exc.__context__
    return None


def _known_error(exc: BaseException) -> Optional[Tuple[int, str]]:
    if isinstance(exc, CommandError):
        return exc.exit_code, str(exc)
    if isinstance(exc, ConfigError):
        return outcome.EXIT_INVALID_SETTINGS, str(exc)
    for module, name, code, prefix in _HEAVY_ERRORS:
        if _raised(exc, module, name):
            return code, f"{prefix}{exc}"
    if _raised(exc, "serving.predict", "PredictError"):
        return _predict_error(exc)
    if isinstance(exc, OSError) and (isinstance(exc, FileNotFoundError) or exc.filename):
        # A path that does not exist or cannot be read or written: "Permission denied: /x/y".
        message = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)
        return outcome.EXIT_UNUSABLE_INPUT, message
    return None


def _raised(exc: BaseException, module: str, name: str) -> bool:
    """isinstance(exc, module.name), without importing the module: an exception of a module that was never imported
    cannot have been raised, and importing it would load TensorFlow into commands that need none."""
    cls = getattr(sys.modules.get(module), name, None)
    return cls is not None and isinstance(exc, cls)


def _predict_error(exc: BaseException) -> Tuple[int, str]:
    """`predict --server`: no answer or a server error (5xx) from TF Serving is "try again later" (exit 6); a
    missing model or version, or a refused request, is the user's input (exit 3)."""
    import urllib.error

    cause = exc.__cause__
    if isinstance(cause, urllib.error.HTTPError):
        unavailable = cause.code >= 500
    else:
        unavailable = isinstance(cause, OSError)  # URLError, a timeout, a refused connection
    if unavailable:
        return outcome.EXIT_UNAVAILABLE, f"{exc}. Check --server and that TF Serving is up; try again later"
    return outcome.EXIT_UNUSABLE_INPUT, str(exc)

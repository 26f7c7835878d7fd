"""What a run ended with, and the exit code `ftune` returns for it: the one place these numbers live.

A CronJob, a CI job or a script tells outcomes apart by the exit code alone:

    0  EXIT_OK               a model was pushed, or the blessed model is already the served one, or nothing
                             changed since the served version (no new data: no training)
    1  EXIT_ERROR            anything unexpected (a bug, a crashed component): a traceback is printed
    2  EXIT_INVALID_SETTINGS a setting, flag or config file is wrong, e.g. a weights file that is not there
    3  EXIT_UNUSABLE_INPUT   the input cannot be used: data folder missing or unusable, no weights obtainable
    4  EXIT_GATE_REFUSED     the pipeline ran, the gate refused the model, nothing was pushed
    5  EXIT_BUSY             another `ftune run` holds the pipeline root's lock (named in the message): try later

The run summary data (`report_data(...)["outcome"]`, `--json` output) carries the same outcome by name.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INVALID_SETTINGS = 2
EXIT_UNUSABLE_INPUT = 3
EXIT_GATE_REFUSED = 4
EXIT_BUSY = 5

# Outcome names of a finished `ftune run` (the run summary's "outcome.status").
PUSHED = "pushed"
ALREADY_SERVED = "already_served"
NO_NEW_DATA = "no_new_data"  # the served version's record names the same input files and settings: not trained
GATE_REFUSED = "gate_refused"
NOT_FINISHED = "not_finished"  # the Pusher did not run (the run stopped or failed before it)

EXIT_CODES: Dict[str, int] = {
    PUSHED: EXIT_OK,
    ALREADY_SERVED: EXIT_OK,
    NO_NEW_DATA: EXIT_OK,
    GATE_REFUSED: EXIT_GATE_REFUSED,
    NOT_FINISHED: EXIT_ERROR,
}


def outcome(status: str, version: Optional[int] = None) -> Dict[str, Any]:
    """The run summary's "outcome": {status, exit_code, version}."""
    return {"status": status, "exit_code": EXIT_CODES[status], "version": version}

"""What a run ended with, and the exit code `ftune` returns for it: the one place these numbers live.

A CronJob, a CI job or a script tells outcomes apart by the exit code alone:

    0  EXIT_OK               a model was pushed, or the blessed model is already the served one, or nothing
                             changed since the served version (no new data: no training), or since the run the
                             gate refused (the same data and settings are not retrained; `--force` does)
    1  EXIT_ERROR            anything unexpected (a bug, a crashed component): a traceback is printed
    2  EXIT_INVALID_SETTINGS a setting, flag or config file is wrong, e.g. a weights file that is not there, a
                             version that does not exist, a malformed package; the KFP API or an S3 endpoint
                             refused the credentials (HTTP 401/403), the KFP API is not at --host (404)
    3  EXIT_UNUSABLE_INPUT   the input cannot be used: data folder missing or unusable, a bad label fixes file
                             (components/label_fixes.py), no weights obtainable, a path or bucket that does not
                             exist or cannot be written, a malformed version record, nothing to work on (no run to
                             report on, no serving folder, no image that could be scored)
    4  EXIT_GATE_REFUSED     the pipeline ran, the gate refused the model, nothing was pushed
    5  EXIT_BUSY             another `ftune run` holds the pipeline root's lock (named in the message): try later
    6  EXIT_UNAVAILABLE      a service ftune talks to (the KFP API; TF Serving for `predict --server`; the S3
                             endpoint of a bucket, before or during a run) did not answer, timed out or failed
                             (HTTP 5xx): nothing was changed; try again later

Every command ends on one of these; a user's mistake is one line `ftune: error: ...` saying what is wrong and
what to do (pipeline/cli.py turns the errors into it), a traceback only for a bug (exit 1).

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
# Its own code so that a CronJob or script can tell "the KFP API is down, retry later" from a refusal to fix.
EXIT_UNAVAILABLE = 6


class CommandError(Exception):
    """An error the user can fix (or wait out), with the exit code the command ends with; the message is the one
    line printed: what is wrong and what to do."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# Outcome names of a finished `ftune run` (the run summary's "outcome.status").
PUSHED = "pushed"
ALREADY_SERVED = "already_served"
NO_NEW_DATA = "no_new_data"  # the served version's record names the same input files and settings: not trained
# The gate refused these very input files and settings against the version served now: not trained again. Exit 0
# like NO_NEW_DATA (this run attempted and failed nothing; the refusing run exited 4), its own name for scripts.
STILL_REFUSED = "still_refused"
GATE_REFUSED = "gate_refused"
NOT_FINISHED = "not_finished"  # the Pusher did not run (the run stopped or failed before it)

EXIT_CODES: Dict[str, int] = {
    PUSHED: EXIT_OK,
    ALREADY_SERVED: EXIT_OK,
    NO_NEW_DATA: EXIT_OK,
    STILL_REFUSED: EXIT_OK,
    GATE_REFUSED: EXIT_GATE_REFUSED,
    NOT_FINISHED: EXIT_ERROR,
}


def outcome(status: str, version: Optional[int] = None) -> Dict[str, Any]:
    """The run summary's "outcome": {status, exit_code, version}."""
    return {"status": status, "exit_code": EXIT_CODES[status], "version": version}

"""User-facing errors and the CLI's documented exit codes."""
from __future__ import annotations

# Exit codes (documented in the README and in `edgevp --help`).
EXIT_OK = 0
EXIT_FAILURE = 1  # unexpected internal error (traceback with -v)
EXIT_USAGE = 2  # bad recipe key, wrong type, unknown backbone/method, invalid value, an output that cannot be written
EXIT_VERIFY = 3  # an artifact failed verification (parity / accuracy outside tolerance)
EXIT_MISSING = 4  # missing optional dependency, hardware or offline asset (weights, GPU, TensorRT)
EXIT_DATA = 5  # missing or empty dataset, unreadable image
EXIT_INCOMPATIBLE = 6  # run directory, checkpoint or artifact: missing, corrupt, or from another model/version
EXIT_DIVERGED = 7  # training produced a NaN/inf loss
EXIT_BUSY = 8  # another edgevp process is writing the same run or output directory
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM; the run can be resumed

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILURE: "unexpected error (rerun with -v for the traceback)",
    EXIT_USAGE: "usage or configuration error, or an output that cannot be written (permissions, full disk)",
    EXIT_VERIFY: "verification failed",
    EXIT_MISSING: "missing dependency, hardware or offline asset",
    EXIT_DATA: "dataset missing, empty or unreadable",
    EXIT_INCOMPATIBLE: "missing, corrupt or incompatible run directory, checkpoint or artifact",
    EXIT_DIVERGED: "training diverged (NaN/inf loss)",
    EXIT_BUSY: "the run or output directory is in use by another edgevp process",
    EXIT_INTERRUPTED: "interrupted; resume with --resume",
}


class EdgevpError(Exception):
    """An error caused by the user's input or environment; printed as one line, no traceback."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message + (f" ({hint})" if hint else ""))
        self.message, self.hint = message, hint

    def line(self) -> str:
        return str(self)


class ConfigError(EdgevpError):
    exit_code = EXIT_USAGE


class DiskFullError(ConfigError, OSError):
    """A write that failed for lack of space: one line and exit 2 like any unwritable output, and still an OSError
    for callers that tolerate a failed write (a cache)."""


class MissingError(EdgevpError):
    exit_code = EXIT_MISSING


class DataError(EdgevpError):
    exit_code = EXIT_DATA


class IncompatibleError(EdgevpError):
    exit_code = EXIT_INCOMPATIBLE


class DivergedError(EdgevpError):
    exit_code = EXIT_DIVERGED


class VerificationError(EdgevpError):
    exit_code = EXIT_VERIFY


class BusyError(EdgevpError):
    exit_code = EXIT_BUSY


class InterruptedRun(EdgevpError):
    """Ctrl-C / SIGTERM: the run keeps its last checkpoint and resumes with --resume."""

    exit_code = EXIT_INTERRUPTED


class ChildProcessesFailed(EdgevpError):
    """Processes this one started (torchrun ranks) ended with `exit_code`; they printed their own error line, so this
    one is silent (`echoed_by_main`)."""

    echoed_by_main = True

    def __init__(self, exit_code: int, message: str = "a data-parallel process failed"):
        super().__init__(message)
        self.exit_code = exit_code

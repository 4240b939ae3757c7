"""One error hierarchy. Each class carries the exit code the CLI turns it into.

The library raises these and never calls ``sys.exit``; ``cli.py`` prints one clean line on
stderr (a traceback only with ``-v``) and exits with ``exit_code``.
"""

from __future__ import annotations

# Exit codes, as PRODUCT.md lists them.
EXIT_OK = 0
EXIT_INCOMPLETE = 1  # finished, but some rows failed or are unconfirmed
EXIT_USAGE = 2  # bad input or usage: nothing was sent
EXIT_CONFIG = 3  # configuration, authentication or API unreachable: nothing was changed
EXIT_INTERRUPTED = 130


class OmiBatchError(Exception):
    """Base of every error omi-batch raises on purpose."""

    exit_code = EXIT_INCOMPLETE


class UsageError(OmiBatchError):
    """Bad input or usage; nothing was sent."""

    exit_code = EXIT_USAGE


class InputError(UsageError):
    """The input file has problems. ``problems`` lists them (each has a row and a code) — the
    first ones when there are many; ``total`` counts them all."""

    def __init__(self, message: str, problems: list | None = None, total: int | None = None):
        super().__init__(message)
        self.problems = list(problems or [])
        self.total = len(self.problems) if total is None else total
        self.errors_csv: str | None = None  # a file listing every problem, when one was written


class NotFound(UsageError):
    """A batch, row or file the user named does not exist."""


class BatchCancelled(UsageError):
    """The batch was cancelled (``omi-batch cancel``): nothing of it is approved or sent."""


class ConfigError(OmiBatchError):
    """Missing or bad configuration; nothing was changed."""

    exit_code = EXIT_CONFIG


class LedgerError(OmiBatchError):
    """The ledger could not be read or written, or a state change was illegal."""

    exit_code = EXIT_CONFIG


class LedgerDamaged(LedgerError):
    """The ledger file is damaged or was edited outside omi-batch (exit 1, as a failed verify)."""

    exit_code = EXIT_INCOMPLETE


class LedgerGone(LedgerError):
    """The ledger's files were removed under a running process: its writes would be lost."""


class StorageError(OmiBatchError):
    """A file could not be written (disk full, read-only, a folder missing): exit 1. What was
    done is in the ledger; the message says what to free and how to resume."""

    exit_code = EXIT_INCOMPLETE


class IllegalTransition(LedgerError):
    """A row state change the state machine does not allow. Nothing was written."""


class LockedError(OmiBatchError):
    """Another process holds the lock (a job tick, for example)."""

    exit_code = EXIT_OK

"""One kind of lock: an exclusive lock on a file (through ``filelock``), which the OS releases if
the holder dies.

A job tick holds one per job, so two ticks never overlap; ``execute`` and ``reconcile`` hold one
per batch, so two processes never resubmit each other's rows (``status`` asks whether it is held,
to tell an interrupted batch from one that runs). The file keeps the holder's pid for the
message; it is never unlinked (unlinking a lock file races with the next taker).
"""

from __future__ import annotations

import os
from pathlib import Path

from filelock import lock_descriptor


class ProcessLock:
    """``with ProcessLock(path):`` — raises :meth:`busy`'s error when another process holds it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def busy(self, holder: str) -> Exception:
        """The error to raise when process ``holder`` (a pid, or "unknown") holds the lock."""
        return BlockingIOError(f"{self.path} is held by process {holder}")

    def __enter__(self) -> ProcessLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not lock_descriptor(fd, blocking=False):
            try:
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise self.busy(holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also releases the flock
            self._fd = None


def batch_lock_path(ledger_path: str | os.PathLike, batch_id: str) -> str:
    """The lock file of one batch of a ledger, named after the ledger's real file (symlinks
    resolved, as SQLite names its -wal), so two spellings of one ledger take one lock."""
    return f"{os.path.realpath(ledger_path)}.{batch_id}.lock"


def is_held(path: str | os.PathLike) -> bool | None:
    """Whether a process holds the lock at ``path`` now; None when that cannot be known (the
    file cannot be opened). A probe: it takes the lock and drops it at once, creating nothing
    (a lock file that does not exist was never taken). A ``ProcessLock`` taken in the same
    microseconds is refused as busy, before it did anything."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        return not lock_descriptor(fd, blocking=False)
    except OSError:
        return None
    finally:
        os.close(fd)  # also drops the lock the probe took

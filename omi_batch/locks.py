"""One kind of lock: an exclusive lock on a file (through ``filelock``), which the OS releases if
the holder dies.

A job tick holds one per job, so two ticks never overlap; ``execute`` and ``reconcile`` hold one
per batch, so two processes never resubmit each other's rows. The file keeps the holder's pid for
the message; it is never unlinked (unlinking a lock file races with the next taker).
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

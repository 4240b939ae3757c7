"""What the pipeline hands back and raises: progress hooks, the ``Summary`` outcome, the batch
lock and the errors that stop a command before or while it works."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omi_batch import reports
from omi_batch.errors import ConfigError, OmiBatchError, UsageError
from omi_batch.locks import ProcessLock, batch_lock_path


class Progress:
    """What the pipeline tells about long work; the CLI draws bars, a job logs, tests ignore.
    ``rate`` is set by the pipeline: the limiter's current requests per second, to show."""

    rate: Callable[[], float] | None = None

    def start(self, phase: str, total: int | None) -> None: ...  # None: not known ahead

    def advance(self, phase: str, n: int = 1) -> None: ...

    def done(self, phase: str) -> None: ...


@dataclass
class Summary:
    """What a command did, for the CLI to print and to choose the exit code."""

    batch_id: str
    counts: dict[str, int] = field(default_factory=dict)
    reports: dict[str, Path] = field(default_factory=dict)
    due: int = 0  # execute: the rows that were to be submitted
    declined: bool = False  # execute: the person said no; nothing was sent
    sent: int = 0  # execute: rows submitted by this run
    stopped: OmiBatchError | None = None  # execute: stopped part-way after sending (exit 1)


class Unreachable(ConfigError):
    """OMI kept failing before anything was done (exit 3)."""


class EndpointMissing(ConfigError):
    """Every preview tried answered 404, and not about an agent: OMI_BASE_URL is wrong."""


class NothingApproved(UsageError):
    """Execute found no row ever approved (exit 2; nothing was sent)."""

    def __init__(self, batch_id: str, reports_dir: str | Path | None = None):
        report = reports.report_path(reports_dir, batch_id, "preview") if reports_dir else None
        how = f"--report {report}" if report is not None and report.exists() else "--all"
        super().__init__(f"batch {batch_id} has no approved row, so nothing was sent: approve "
                         f"first: omi-batch approve {batch_id} {how}")  # fmt: skip


class BatchBusy(UsageError):
    """Another process is executing or reconciling this batch (exit 2; nothing was sent)."""


class BatchLock(ProcessLock):
    """Held while a batch is executed or reconciled (``<ledger>.<batch>.lock``): two runs would
    each resubmit the other's in-flight ``submitted`` rows."""

    def __init__(self, ledger_path: str | os.PathLike, batch_id: str):
        super().__init__(batch_lock_path(ledger_path, batch_id))  # one name per real file
        self.batch_id = batch_id

    def busy(self, holder: str) -> Exception:
        return BatchBusy(
            f"batch {self.batch_id} is being executed by another process (pid {holder}): "
            "nothing was sent; run this again once it has finished"
        )

"""The receiver's one ledger writer thread: group commits in arrival order, the spool drained
between turns, refusal counts written each minute."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any, Protocol

from omi_batch.bodies import BodyError, parse_body
from omi_batch.callbacks import CallbackTarget
from omi_batch.errors import LedgerGone
from omi_batch.refusals import RefusalTally
from omi_batch.spool import Spool

MAX_GROUP = 100  # callbacks stored in one transaction at most
POLL = 0.5  # seconds between looks at the spool when nothing else wakes the writer


class ReceiverLedger(Protocol):
    """What the receiver needs of a ledger: ``omi_batch.ledger.Ledger`` and its wrappers
    (``SerialLedger``, ``NotifyingLedger``) have it all. A wrapper that adds work around the
    callbacks' writes (a lock, a wake-up) wraps both ``receive_callback`` and
    ``receive_callbacks``: the writer stores a group through the second."""

    def receive_callback(self, **callback: Any) -> str: ...

    def receive_callbacks(self, received: list[dict]) -> list[str | Exception]: ...

    def record_refusals(self, counts: list[Mapping[str, Any]]) -> None: ...

    def head(self) -> str | None: ...


class Writer:
    """The one thread that writes the ledger, in arrival order: each turn it takes every
    callback waiting (up to :data:`MAX_GROUP`) and stores them in one transaction through
    ``receive_callbacks`` (one savepoint each, so one failing loses no other). Each caller's
    Future gets its own verdict or error, and only after the commit, so a callback is still
    stored before it is answered. A Future still queued can be
    cancelled; one taken into a group can no longer be.

    Between turns it applies what waits in the spool, oldest first (every turn while a callback
    went there or one is held there, else at most every :data:`POLL` seconds), and writes
    the refusal counts of each finished minute. It starts with
    the spool, so a receiver restarted applies what the last one left before anything new."""

    def __init__(
        self,
        ledger: ReceiverLedger,
        *,
        spool: Spool | None,
        refusals: RefusalTally,
        logger: logging.Logger,
        hold_retry: float,
        hold_for: float,
        metrics: Any = None,
    ):
        self._ledger = ledger
        self._spool = spool
        self._refusals = refusals  # the receiver's tally: counted there, written here
        self._logger = logger
        self._hold_retry = hold_retry
        self._hold_for = hold_for
        self._metrics = metrics
        self._queue: queue.SimpleQueue[tuple[dict, Future] | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._due = self._spool is not None and self._spool.exists()  # the spool may hold some
        self._held_rows: set[tuple[str, int, str]] = set()
        self._looked = 0.0  # time.monotonic() of the last look at the spool
        self.gone: str | None = None  # why the ledger can no longer be written, once it is
        self._thread = threading.Thread(
            target=self._run, name="omi-batch-webhook-ledger", daemon=True
        )
        self._thread.start()

    def submit(self, callback: dict) -> Future:
        """Queue ``callback`` (receive_callback's keyword arguments); its Future gets the verdict."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the webhook's ledger writer is closed")
            self._queue.put((callback, future))
        return future

    def must_queue(self, target: CallbackTarget) -> bool:
        """Whether a new callback must go behind the spool's (to keep their order)."""
        with self._lock:
            return self._due or (target.batch_id, target.row, target.phase) in self._held_rows

    def spooled(self, callback: dict, *, held: bool) -> None:
        """A callback went to the spool: apply it when due (wake the writer unless held)."""
        key = (callback["batch_id"], callback["row"], callback["phase"])
        with self._lock:
            if held:
                self._held_rows.add(key)
            else:
                self._due = True
                self._queue.put(("wake", None))  # type: ignore[arg-type]

    def close(self) -> None:
        """Cancel what is still queued, let the group being stored finish, end the thread."""
        with self._lock:
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        self._after_turn()  # what an earlier receiver left in the spool goes first
        while True:
            try:
                item = self._queue.get(timeout=POLL)
            except queue.Empty:
                item = ("wake", None)  # type: ignore[assignment]
            group = []
            stop = False
            while True:
                if item is None:
                    stop = True
                elif item[1] is None:  # a wake-up: nothing to answer
                    pass
                elif self._closed:
                    item[1].cancel()
                elif item[1].set_running_or_notify_cancel():  # False: cancelled (too slow)
                    group.append(item)
                if stop or len(group) >= MAX_GROUP:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if group:
                self._store(group)
            self._after_turn(final=stop)
            if stop:
                while True:  # anything queued after the close: cancelled
                    try:
                        late = self._queue.get_nowait()
                    except queue.Empty:
                        return
                    if late is not None and late[1] is not None:
                        late[1].cancel()

    def _after_turn(self, *, final: bool = False) -> None:
        """Drain the spool and write the refusal counts; never raises (retried next turn).
        The spool is looked at when a callback went to it, else at most every :data:`POLL`
        seconds (for what another process left): not once per group commit."""
        now = time.monotonic()
        if final or self._due or self._held_rows or now - self._looked >= POLL:
            self._looked = now
            try:
                self._drain()
            except Exception as error:
                self._logger.warning("spool: not applied yet (%s)", type(error).__name__)
        counts = self._refusals.take(everything=final)
        if counts:
            try:
                self._ledger.record_refusals(counts)
            except Exception as error:
                self._refusals.give_back(counts)
                self._logger.warning("refusal counts not written yet (%s)", type(error).__name__)

    def _drain(self) -> None:
        """Apply the spool's due entries, oldest first, in groups; stop at the first group the
        ledger refuses (kept for the next turn)."""
        spool = self._spool
        if spool is None or not spool.exists():
            return
        for _ in range(1000):  # bounded: at most 100,000 entries a turn
            entries = spool.pending(MAX_GROUP)
            if not entries:
                with self._lock:  # a callback spooled meanwhile is seen here, or sets _due
                    if spool.pending(1):
                        continue
                    self._due = False
                    held = {(e.callback["batch_id"], e.callback["row"], e.callback["phase"])
                            for e in spool.pending(10_000, due=False)}  # fmt: skip
                    self._held_rows = held
                return
            received = [self._entry_callback(entry) for entry in entries]
            results = self._apply(received)
            done, later = [], []
            for entry, outcome in zip(entries, results, strict=True):
                if isinstance(outcome, LedgerGone):
                    self.gone = str(outcome)
                if outcome == "held" or (
                    isinstance(outcome, Exception) and is_ledger_error(outcome)
                ):
                    later.append(entry.id)
                else:
                    done.append(entry.id)
                    self._logger.info(
                        "spooled callback batch=%s row=%s phase=%s verdict=%s",
                        entry.callback["batch_id"], entry.callback["row"],
                        entry.callback["phase"],
                        outcome if isinstance(outcome, str) else f"error={type(outcome).__name__}",
                    )  # fmt: skip
            spool.remove(done)
            spool.later(later, self._hold_retry)
            if later:
                return

    def _entry_callback(self, entry: Any) -> dict:
        """A spool entry as receive_callback's arguments: its body read again; held only
        while it is younger than ``hold_for``."""
        callback = dict(entry.callback)
        callback["body"] = None
        if callback.get("refused") is None:
            try:
                callback["body"] = parse_body(callback["raw_body"])
            except BodyError as error:
                callback["refused"] = error.reason
        callback["may_hold"] = _age(entry.received_at) < self._hold_for
        return callback

    def _apply(self, received: list[dict]) -> list[Any]:
        began = time.monotonic()
        try:
            if len(received) > 1:
                return list(self._ledger.receive_callbacks(received))
            return [self._one(callback) for callback in received]
        except BaseException as error:  # the transaction itself failed: none is stored
            return [error] * len(received)
        finally:
            if self._metrics is not None:
                self._metrics.observe_ledger_write(time.monotonic() - began)

    def _store(self, group: list[tuple[dict, Future]]) -> None:
        results = self._apply([callback for callback, _ in group])
        for (_, future), outcome in zip(group, results, strict=True):
            if isinstance(outcome, LedgerGone):
                self.gone = str(outcome)
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _one(self, callback: dict) -> Any:
        try:
            return self._ledger.receive_callback(**callback)
        except Exception as error:
            return error


def is_ledger_error(error: BaseException) -> bool:
    """Whether the ledger itself refused the write (locked, read-only, full): worth a retry."""
    from omi_batch.errors import LedgerError

    return isinstance(error, LedgerError | TimeoutError | OSError)


def _age(received_at: str) -> float:
    """Seconds since an ISO 8601 UTC time."""
    from datetime import UTC, datetime

    try:
        then = datetime.fromisoformat(received_at.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (datetime.now(UTC) - then).total_seconds()

"""The one single-writer path of a process: its ledger writes taken one at a time, and the
pipeline's row steps and the in-process receiver's callbacks committed in groups (one fsync for
what several threads write at the same moment), each caller returning only after its own
commit."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from omi_batch.ledger import Ledger

# Seconds the committer thread lets steps nobody waits on gather before it commits them: at most
# this much later than a commit of their own would have been, in far fewer fsyncs.
GATHER = 0.01
# Seconds an idle committer thread waits for more steps before it ends: a thread (and its
# SQLite connection) per burst of steps cost an open per burst, and kept each connection open.
LINGER = 1.0


class Queued:
    """A step given to :meth:`SerialLedger.record_step_soon`."""

    def __init__(self, serial: SerialLedger, item: dict):
        self._serial = serial
        self._item = item

    def result(self) -> None:
        """Wait until the step is committed (now, if nobody has committed it yet); raise its
        refusal (IllegalTransition, NotFound, LedgerError) if it was refused."""
        self._serial._committed(self._item)


class SerialLedger:
    """The ledger with this process's writes taken one at a time on a Python lock, and the
    pipeline's row steps and the in-process receiver's callbacks committed in groups.

    SQLite takes one writer at a time anyway; threads queued on a Python lock wake the moment
    it is free, where threads contending for SQLite's lock sleep in its busy handler (1, 2, 5,
    10 … ms). And a commit costs an fsync: steps and callbacks that several threads write at
    the same moment go into one transaction (``Ledger.record_steps``, ``receive_callbacks`` or
    both in ``record_group``), each still committed before its call returns, so "the intent is
    saved before the request" and "a callback is stored before it is answered" hold.

    A step nothing waits on (a preview's result, a request's 202 and its attempt) may be given
    with :meth:`record_step_soon`: queued, it goes into the next group commit (a committer
    thread starts when nobody else commits) and its caller does not wait for the fsync.
    :meth:`flush` commits what waits and hands over the refusals of such steps. Every other
    write first commits what is queued, so this process's writes keep their order. Reads pass
    through. The in-process receiver writes through it too (see :class:`NotifyingLedger`).
    """

    WRITES = frozenset({"create_batch", "update_row", "record_attempt", "approve",
                        "log", "receive_callback", "record_steps", "record_group",
                        "cancel_batch"})  # fmt: skip

    def __init__(self, ledger: Ledger, *, gather: float = GATHER, linger: float = LINGER):
        self._ledger = ledger
        self.gather = gather  # seconds steps nobody waits on gather before their commit
        self.linger = linger  # seconds an idle committer waits for more before it ends
        self._hurry = threading.Event()  # set by flush(): the committer need not wait longer
        self._more = threading.Event()  # set by record_step_soon: an idle committer goes on
        self.write_lock = threading.Lock()  # one write at a time in this process
        self._queue: list[dict] = []
        self._queue_lock = threading.Lock()
        self._committer: threading.Thread | None = None  # commits the steps nobody waits for
        self._refused: list[BaseException] = []  # refusals of those steps, until flush()

    def record_step(self, batch_id: str, row: int, **step: object) -> None:
        """Ledger.record_step, committed with whatever other steps and callbacks are waiting
        (group commit)."""
        error = self._commit({"step": dict(step, batch_id=batch_id, row=row)})
        if error is not None:
            raise error

    def record_step_soon(self, batch_id: str, row: int, **step: object) -> Queued:
        """Ledger.record_step in the next group commit, without waiting for it: for a step
        nothing depends on before :meth:`flush` (its refusal, if any, is returned there) or
        before its :meth:`Queued.result`."""
        item = {"work": {"step": dict(step, batch_id=batch_id, row=row)}, "done": False,
                "outcome": None, "soon": True}  # fmt: skip
        with self._queue_lock:
            self._queue.append(item)
            self._more.set()
            if self._committer is None:
                self._committer = threading.Thread(
                    target=self._commit_queued, name="omi-batch-ledger-commit", daemon=True
                )
                self._committer.start()
        return Queued(self, item)

    def _committed(self, item: dict) -> None:
        """Return once ``item`` is committed (committing the queue now if nobody has); raise
        its refusal, then no longer handed to :meth:`flush`."""
        if not item["done"]:
            with self.write_lock:
                if not item["done"]:
                    self._commit_waiting()
        outcome = item["outcome"]
        if isinstance(outcome, BaseException):
            with self.write_lock:
                self._refused = [e for e in self._refused if e is not outcome]
            raise outcome

    def flush(self) -> list[BaseException]:
        """Commit every step and callback still queued; return (and forget) the refusals of
        the steps recorded with :meth:`record_step_soon` since the last flush."""
        with self.write_lock:
            self._commit_waiting()
            refused, self._refused = self._refused, []
        self._hurry.set()  # a committer still gathering finds nothing left and ends
        return refused

    def receive_callbacks(self, received: list[dict]) -> list[str | Exception]:
        """Ledger.receive_callbacks, committed with whatever else is waiting (group commit);
        an error of the whole transaction is raised (none of them is stored)."""
        outcome = self._commit({"callbacks": list(received)})
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _commit(self, work: dict) -> object:
        """Queue ``work``; whoever gets the write lock first commits every waiting item in one
        transaction. Returns ``work``'s outcome once it is committed (or refused)."""
        item = {"work": work, "done": False, "outcome": None}
        with self._queue_lock:
            self._queue.append(item)
        with self.write_lock:
            if not item["done"]:  # nobody committed it meanwhile: commit every waiting item
                self._commit_waiting()
        return item["outcome"]

    def _commit_waiting(self) -> bool:
        """Under the write lock: commit every queued item in one transaction; False when
        there was none."""
        with self._queue_lock:
            group, self._queue = self._queue, []
        if group:
            self._commit_group(group)
        return bool(group)

    def _commit_queued(self) -> None:
        """The committer thread: commit queued groups until the queue stays empty for
        ``linger`` seconds, then close its connection and end. It lets steps gather for
        ``gather`` seconds before each commit (one fsync for them)."""
        try:
            while True:
                self._hurry.wait(self.gather)
                self._hurry.clear()
                self._more.clear()  # before the look: a step queued after it sets it again
                with self.write_lock:
                    if self._commit_waiting():
                        continue
                if self._more.wait(self.linger):
                    continue
                with self._queue_lock:  # record_step_soon starts a new one if this one ended
                    if not self._queue:
                        self._committer = None
                        return
        finally:
            self._ledger.close_thread_connection()

    def _commit_group(self, group: list[dict]) -> None:
        steps = [i for i in group if "step" in i["work"]]
        received = [i for i in group if "callbacks" in i["work"]]
        flat = [c for i in received for c in i["work"]["callbacks"]]
        try:
            if not received:
                step_results = self._ledger.record_steps([i["work"]["step"] for i in steps])
                verdicts: list = []
            else:  # a malformed callback gets its own error; the rest of the group is stored
                step_results, verdicts = self._ledger.record_group(
                    [i["work"]["step"] for i in steps], flat
                )
        except BaseException as error:
            for waiting in group:
                waiting["outcome"], waiting["done"] = error, True
            self._refused += [error for i in group if i.get("soon")][:1]
            return
        for waiting, result in zip(steps, step_results, strict=True):
            waiting["outcome"], waiting["done"] = result, True
            if result is not None and waiting.get("soon"):
                self._refused.append(result)
        at = 0
        for waiting in received:
            size = len(waiting["work"]["callbacks"])
            waiting["outcome"], waiting["done"] = verdicts[at : at + size], True
            at += size

    def __getattr__(self, name: str) -> object:
        found = getattr(self._ledger, name)
        if name not in self.WRITES:
            return found

        def write(*args: object, **kwargs: object) -> object:
            with self.write_lock:
                self._commit_waiting()  # what was queued before it goes first
                return found(*args, **kwargs)

        return write

    def __repr__(self) -> str:
        return repr(self._ledger)


class NotifyingLedger:
    """The ledger as an in-process receiver sees it: every stored callback calls
    ``notify(batch_id, row)``. Given the pipeline's :class:`SerialLedger`, its callbacks are
    written through it and join the pipeline's group commits (one fsync for the row steps and
    callbacks written at the same moment); without one they go to the ledger directly."""

    def __init__(
        self, ledger: Any, notify: Callable[[str, int], None], serial: SerialLedger | None = None
    ) -> None:
        self._ledger = ledger
        self._notify = notify
        self._serial = serial

    def receive_callback(self, **callback: Any) -> str:
        try:
            if self._serial is None:
                return self._ledger.receive_callback(**callback)
            verdict = self._serial.receive_callbacks([callback])[0]
        finally:
            self._wake([callback])
        if isinstance(verdict, BaseException):
            raise verdict
        return verdict

    def receive_callbacks(self, received: list[dict]) -> list[Any]:
        """``Ledger.receive_callbacks`` in one commit (shared with the pipeline's waiting row
        steps when it can be), then ``notify`` for each of its rows, stored or not."""
        try:
            return (self._serial or self._ledger).receive_callbacks(received)
        finally:
            self._wake(received)

    def _wake(self, received: list[dict]) -> None:
        for callback in received:
            try:
                self._notify(callback.get("batch_id"), callback.get("row"))
            except AttributeError:  # a callback before the pipeline exists: nothing waits yet
                return

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def __repr__(self) -> str:
        return repr(self._ledger)

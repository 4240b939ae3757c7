"""The simulator's worker thread: executed transfers applied and callbacks sent at their due
time (dropped, duplicated, delayed, reordered or failed as the faults say)."""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from omi_batch.simulator.fixtures import _ms
from omi_batch.simulator.model import (
    ACTIONS,
    CALLBACK_TIMEOUT,
    QUEUE_LIMIT,
    REORDER_GROUP,
    REORDER_WINDOW,
    TransferRequest,
)
from omi_batch.simulator.state import State

log = logging.getLogger("omi_batch.simulator")


class _Worker(threading.Thread):
    """Runs the jobs of a ``Delivery``, each at its due time, one at a time."""

    def __init__(self, delivery: Delivery):
        super().__init__(name="omi-simulator-callbacks", daemon=True)
        self.delivery = delivery
        self.stopping = False

    def run(self) -> None:
        import requests

        session = requests.Session()
        delivery = self.delivery
        cond = delivery.state.lock
        try:
            while True:
                with cond:
                    while not self.stopping:
                        if delivery.jobs:
                            wait = delivery.jobs[0][0] - time.monotonic()
                            if wait <= 0:
                                break
                            cond.wait(wait)
                        else:
                            cond.wait()
                    if self.stopping:
                        return
                    job = heapq.heappop(delivery.jobs)[-1]
                    delivery.in_flight += 1
                    cond.notify_all()  # room in the queue
                try:
                    if job["kind"] == "apply":
                        job["work"]()
                    else:
                        delivery.post(session, job)
                except Exception:  # a bug here must not kill the worker
                    log.exception("simulator worker failed on a %s job", job["kind"])
                finally:
                    with cond:
                        delivery.in_flight -= 1
                        cond.notify_all()
        finally:
            session.close()


class Delivery:
    """The queue of due jobs (transfers to apply, callbacks to send) and the one worker thread
    that runs them; the ``Simulator`` holds one over its ``State``."""

    def __init__(self, state: State):
        self.state = state
        self.jobs: list[tuple] = []  # a heap of (due, order, seq, job)
        self.in_flight = 0
        self._seq = itertools.count()
        self._group_due = 0.0  # when the current group of reordered callbacks goes out
        self._group_size = 0
        self._worker: _Worker | None = None

    def apply_later(self, work: Callable[[], None]) -> None:
        """Run ``work`` (an executed transfer's effect) on the worker, as soon as it can."""
        self._enqueue({"kind": "apply", "work": work}, time.monotonic())

    def schedule_callback(
        self, request: TransferRequest, request_id: str, status: str, updated: int
    ) -> None:
        """Queue the callback of ``request`` (or drop or duplicate it, as the faults say)."""
        state, faults = self.state, self.state.faults
        body = {
            "requestId": request_id,
            "requestTimeMs": request.request_time_ms,
            "action": ACTIONS[request.kind],
            "status": status,
            "responseTimeMs": _ms(),
            "payload": {"updatedRecords": updated},
        }
        job = {
            "kind": "callback",
            "url": request.callback["url"],
            "headers": request.callback["headers"],
            "request_id": request_id,
            "body": body,
            "duplicate": False,
        }
        if state.draw(faults.drop_callbacks):
            state.record(
                {
                    "kind": "callback",
                    "url": job["url"],
                    "request_id": request_id,
                    "body": body,
                    "delivery": None,
                    "duplicate": False,
                    "dropped": True,
                }
            )
            return
        copies = [job]
        if state.draw(faults.duplicate_callbacks):
            copies.append(dict(job, duplicate=True))
        due = time.monotonic() + faults.callback_delay
        for copy in copies:
            self._enqueue(copy, due)

    def wait_idle(self, timeout: float) -> bool:
        """True once no job is pending or in flight; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        cond = self.state.lock
        with cond:
            while self.jobs or self.in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                cond.wait(min(left, 0.5))
            return True

    def close(self) -> None:
        """Stop the worker; pending jobs are dropped."""
        cond = self.state.lock
        with cond:
            worker, self._worker = self._worker, None
            self.jobs.clear()
            if worker:
                worker.stopping = True
            cond.notify_all()
        if worker and worker is not threading.current_thread():
            worker.join(timeout=CALLBACK_TIMEOUT + 3)

    def _enqueue(self, job: dict, due: float) -> None:
        state, cond = self.state, self.state.lock
        with cond:
            if self._worker is None:
                if state.stopping.is_set():
                    return  # stopped: nothing more goes out
                self._worker = _Worker(self)
                self._worker.start()
            worker = threading.current_thread() is self._worker  # must never wait on itself
            while len(self.jobs) >= QUEUE_LIMIT and not worker and not state.stopping.is_set():
                cond.wait(0.5)
            order: float = 0
            if job["kind"] == "callback" and state.faults.reorder_callbacks:
                if due > self._group_due or self._group_size >= REORDER_GROUP:
                    self._group_due, self._group_size = due + REORDER_WINDOW, 0
                due, order = self._group_due, state.random()
                self._group_size += 1
            heapq.heappush(self.jobs, (due, order, next(self._seq), job))
            cond.notify_all()

    def post(self, session: Any, job: dict) -> None:
        """Send one callback and record how it went (a transport failure is an outcome)."""
        headers = {"Content-Type": "application/json", **job["headers"]}
        data = json.dumps(job["body"]).encode()
        try:
            response = session.post(
                job["url"], data=data, headers=headers, timeout=CALLBACK_TIMEOUT
            )
            response.close()
            delivery: int | str = response.status_code
        except Exception as error:  # any transport failure is the outcome, not a crash
            delivery = f"{type(error).__name__}: {error}"[:300]
        log.info("callback %s -> %s", job["request_id"], delivery)
        self.state.record(
            {
                "kind": "callback",
                "url": job["url"],
                "request_id": job["request_id"],
                "body": job["body"],
                "delivery": delivery,
                "duplicate": job["duplicate"],
                "dropped": False,
            }
        )

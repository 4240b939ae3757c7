"""The simulator's worker thread: executed transfers applied and callbacks sent at their due
time (dropped, duplicated, delayed, reordered or failed as the faults say)."""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from omi_batch.simulator.fixtures import _ms
from omi_batch.simulator.model import (
    ACTIONS,
    CALLBACK_TIMEOUT,
    QUEUE_LIMIT,
    REORDER_GROUP,
    REORDER_WINDOW,
    TransferRequest,
)

if TYPE_CHECKING:
    from omi_batch.simulator.core import Simulator

log = logging.getLogger("omi_batch.simulator")


class _Worker(threading.Thread):
    """Applies executed transfers and sends callbacks, each at its due time, one at a time."""

    def __init__(self, sim: Simulator):
        super().__init__(name="omi-simulator-callbacks", daemon=True)
        self.sim = sim
        self.stopping = False

    def run(self) -> None:
        import requests

        session = requests.Session()
        cond = self.sim._cond
        try:
            while True:
                with cond:
                    while not self.stopping:
                        if self.sim._jobs:
                            wait = self.sim._jobs[0][0] - time.monotonic()
                            if wait <= 0:
                                break
                            cond.wait(wait)
                        else:
                            cond.wait()
                    if self.stopping:
                        return
                    job = heapq.heappop(self.sim._jobs)[-1]
                    self.sim._in_flight += 1
                    cond.notify_all()  # room in the queue
                try:
                    if job["kind"] == "apply":
                        self.sim._finish_transfer(job["request"], job["request_id"])
                    else:
                        self.sim._deliver(session, job)
                except Exception:  # a bug here must not kill the worker
                    log.exception("simulator worker failed on a %s job", job["kind"])
                finally:
                    with cond:
                        self.sim._in_flight -= 1
                        cond.notify_all()
        finally:
            session.close()


class Delivery:
    """Scheduling and sending callbacks; ``Simulator`` holds the state it works on."""

    def _schedule_callback(
        self, request: TransferRequest, request_id: str, status: str, updated: int
    ) -> None:
        if request.kind == "tickets" and not self.ticket_callbacks:
            return  # the variant where OMI never calls back for tickets
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
        if self.draw(self.faults.drop_callbacks):
            self.record(
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
        if self.draw(self.faults.duplicate_callbacks):
            copies.append(dict(job, duplicate=True))
        due = time.monotonic() + self.faults.callback_delay
        for copy in copies:
            self._enqueue(copy, due)

    def _enqueue(self, job: dict, due: float) -> None:
        with self._cond:
            if self._worker is None:
                if self._stopping.is_set():
                    return  # stopped: nothing more goes out
                self._worker = _Worker(self)
                self._worker.start()
            worker = threading.current_thread() is self._worker  # must never wait on itself
            while len(self._jobs) >= QUEUE_LIMIT and not worker and not self._stopping.is_set():
                self._cond.wait(0.5)
            order: float = 0
            if job["kind"] == "callback" and self.faults.reorder_callbacks:
                if due > self._group_due or self._group_size >= REORDER_GROUP:
                    self._group_due, self._group_size = due + REORDER_WINDOW, 0
                due, order = self._group_due, self._rng.random()
                self._group_size += 1
            heapq.heappush(self._jobs, (due, order, next(self._seq), job))
            self._cond.notify_all()

    def _deliver(self, session: Any, job: dict) -> None:
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
        self.record(
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

"""How fast the whole pipeline runs against the simulator, next to a bare loop of the same calls.

Run: .venv/bin/python bench/bench_pipeline.py [--rows N] [--slow-rows N] [--profile]

(a) N rows (default 10,000), simulator with no added latency: the pipeline end to end (plan,
    batch, preview, approve, execute, callbacks into the ledger through the in-process receiver,
    reports), against a bare loop making the same HTTP calls (one preflight preview, a preview
    per row, an execute per row waiting for its callback) with the same concurrency (4), the
    same requests/waitress stack and no ledger. Goal: pipeline <= 1.5x the bare loop.
(b) 2,000 rows, simulator latency 100 ms, concurrency 16, rate 1000/s: each phase's rows/s
    against the 160 rows/s that latency allows. Goal: >= 90 %.

The simulator runs in its own process (`omi-batch simulator serve`), so it shares no GIL with
what is measured. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import cProfile
import json
import pstats
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from common import write_inputs

from omi_batch import callbacks, webhook
from omi_batch.config import Secret, Settings
from omi_batch.ledger import Ledger
from omi_batch.ledger.serial import NotifyingLedger, SerialLedger
from omi_batch.pipeline import Pipeline
from omi_batch.roster import read_plan

KEY = "bench-api-key"
SECRET = Secret("bench-webhook-secret")
TRANSFER = "/api/v3/agent/conversation/transfer"
MOVING = 2000  # rows whose source has one conversation to move (the rest move nothing)


class SimulatorProcess:
    """`omi-batch simulator serve` in a child process; ``url`` once it listens."""

    def __init__(self, fixture: Path, latency_ms: float = 0):
        command = [sys.executable, "-m", "omi_batch", "simulator", "serve", "--port", "0",
                   "--fixture", str(fixture), "--api-key", KEY, "--latency-ms", str(latency_ms)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()  # bounded: the child prints it or exits
        match = re.search(r"(http://\S+)", line)
        if not match:
            self.process.kill()
            raise SystemExit(f"the simulator did not start: {line!r}")
        self.url = match.group(1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


# --------------------------------------------------------------------------- the pipeline


def run_pipeline(url: str, plan_path: Path, folder: Path, *, concurrency: int, rate: float,
                 profile: bool = False) -> dict[str, float]:  # fmt: skip
    """Seconds per phase of the whole flow, the way `omi-batch run --yes --listen` does it."""
    ledger = Ledger(folder / f"ledger-{time.monotonic_ns()}.db")
    holder: dict = {}
    serial = SerialLedger(ledger)  # as `omi-batch run --listen` does: one write at a time
    notifying = NotifyingLedger(ledger, lambda *key: holder["pipeline"].notify(*key), serial)
    app = webhook.make_app(notifying, SECRET)
    receiver = webhook.start(app, "127.0.0.1", 0)
    settings = Settings(base_url=url, api_key=Secret(KEY), webhook_url=receiver.url,
                        webhook_secret=SECRET)  # fmt: skip
    pipeline = holder["pipeline"] = Pipeline(
        serial, settings, concurrency=concurrency, rate=rate, wait=60
    )
    profiler = cProfile.Profile() if profile else None
    times: dict[str, float] = {}
    try:
        if profiler:
            profiler.enable()
        start = time.perf_counter()
        batch_id = pipeline.create_batch(read_plan(plan_path), check_agents=False)  # same calls
        times["batch"] = time.perf_counter() - start
        mark = time.perf_counter()
        pipeline.preview(batch_id)
        pipeline.preview_summary(batch_id, folder / "reports")
        times["preview"] = time.perf_counter() - mark
        mark = time.perf_counter()
        pipeline.approve(batch_id, approve_all=True)
        times["approve"] = time.perf_counter() - mark
        mark = time.perf_counter()
        summary = pipeline.execute(batch_id)
        times["execute"] = time.perf_counter() - mark
        mark = time.perf_counter()
        pipeline.write_reports(batch_id, folder / "reports")
        times["reports"] = time.perf_counter() - mark
        times["total"] = time.perf_counter() - start
        if profiler:
            profiler.disable()
        if summary.counts != {"succeeded": summary.counts.get("succeeded", -1)}:
            raise SystemExit(f"not every row succeeded: {summary.counts}")
    finally:
        pipeline.close()
        receiver.stop()
        ledger.close()
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(35)
    return times


# --------------------------------------------------------------------------- the bare loop


def run_bare(url: str, rows: int, *, concurrency: int) -> dict[str, float]:
    """The same HTTP calls with requests and a waitress receiver, nothing recorded."""
    done: dict[int, threading.Event] = {i: threading.Event() for i in range(rows)}

    def app(environ, start_response):
        found = callbacks.parse_path(environ.get("PATH_INFO", ""))
        length = int(environ.get("CONTENT_LENGTH") or 0)
        json.loads(environ["wsgi.input"].read(length) or b"{}")
        if found:
            done[found.row].set()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"ok": true}']

    receiver = webhook.start(app, "127.0.0.1", 0)
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=concurrency, max_retries=0)
    session.mount("http://", adapter)
    headers = {"x-api-key": KEY, "Accept": "application/json"}

    def call(i: int, preview: bool) -> None:
        body = {"sourceEmail": f"src{i:05d}@bench.vn", "targetEmail": f"tgt{i:05d}@bench.vn",
                "previewChanges": preview, "replaceExistingMembers": False}  # fmt: skip
        if not preview:
            body["callbackResultConfig"] = callbacks.callback_config(
                receiver.url, SECRET, "bare", i, "execute"
            )
        answer = session.post(url + TRANSFER, json=body, headers=headers, timeout=30)
        if answer.status_code >= 400 or answer.json().get("status_code") != 9999:
            raise SystemExit(f"bare loop: {answer.status_code} {answer.text[:200]}")
        if not preview and not done[i].wait(60):
            raise SystemExit(f"bare loop: no callback for row {i}")

    times: dict[str, float] = {}
    try:
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            start = time.perf_counter()
            call(0, True)  # the preflight
            list(pool.map(lambda i: call(i, True), range(rows)))
            times["preview"] = time.perf_counter() - start
            mark = time.perf_counter()
            list(pool.map(lambda i: call(i, False), range(rows)))
            times["execute"] = time.perf_counter() - mark
            times["total"] = time.perf_counter() - start
    finally:
        session.close()
        receiver.stop()
    return times


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--slow-rows", type=int, default=2_000)
    parser.add_argument("--profile", action="store_true", help="cProfile the pipeline run (a)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        folder = Path(tmp)
        rows = args.rows
        fixture, plan = write_inputs(folder, rows, MOVING)
        sim = SimulatorProcess(fixture)
        try:
            bare = run_bare(sim.url, rows, concurrency=4)
        finally:
            sim.stop()
        sim = SimulatorProcess(fixture)  # a fresh one: nothing moved yet
        try:
            ours = run_pipeline(sim.url, plan, folder, concurrency=4, rate=100_000,
                                profile=args.profile)  # fmt: skip
        finally:
            sim.stop()
        ratio = ours["total"] / bare["total"]
        print(f"pipeline {rows} rows end to end (concurrency 4, no latency): "
              f"{ours['total']:.2f} s wall, {rows / ours['total']:.0f} rows/s "
              f"[batch {ours['batch']:.2f} + preview {ours['preview']:.2f} + approve "
              f"{ours['approve']:.2f} + execute {ours['execute']:.2f} + reports "
              f"{ours['reports']:.2f}]")  # fmt: skip
        print(f"bare loop {rows} rows (requests, same calls, concurrency 4, waitress receiver, "
              f"no ledger): {bare['total']:.2f} s wall [preview {bare['preview']:.2f} + execute "
              f"{bare['execute']:.2f}]")  # fmt: skip
        print(f"pipeline / bare loop: {ratio:.2f}x (goal <= 1.5x)")

        slow = args.slow_rows
        if slow <= 0:  # part (b) not asked for
            return
        fixture, plan = write_inputs(folder, slow, MOVING)
        sim = SimulatorProcess(fixture, latency_ms=100)
        try:
            times = run_pipeline(sim.url, plan, folder, concurrency=16, rate=1000)
        finally:
            sim.stop()
        for phase in ("preview", "execute"):
            speed = slow / times[phase]
            print(f"pipeline {slow} rows {phase}, 100 ms latency, concurrency 16: "
                  f"{times[phase]:.2f} s wall, {speed:.0f} rows/s = {speed / 160:.0%} of the "
                  f"160 rows/s that latency allows (goal >= 90%)")  # fmt: skip


if __name__ == "__main__":
    main()

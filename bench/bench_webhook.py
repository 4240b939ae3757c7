"""Benchmark: the webhook receiver under load while a runner writes to the same ledger.

Three processes on loopback, as in production: the receiver (`omi-batch webhook serve`), a
runner that keeps writing rows, attempts and state changes to the same ledger, and this
process sending callbacks from 64 concurrent asyncio senders (raw HTTP/1.1 keep-alive
sockets, so the senders' own cost stays small). Every result is sent twice, as OMI may
deliver twice. Goal: none lost, p99 under 100 ms, none over 2 s.

    .venv/bin/python bench/bench_webhook.py [--callbacks 10000] [--senders 64]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from common import (
    ROOT,
    Receiver,
    callback_request,
    new_batch,
    percentile,
    send_all,
    submitted_batch,
)

from omi_batch.ledger import Ledger

SECRET = "bench-webhook-secret-9f3a"
RUNNER_LIMIT = 600.0  # seconds: the runner stops on its own after this, whatever happens


# --------------------------------------------------------------------------- the runner process


def execute_steps(ledger: Ledger, batch: str, row: int) -> list:
    """The ledger writes `preview` + `execute` make for one row, as callables."""
    attempt = {"endpoint": "transfer", "number": 1, "started_at": "now", "http_status": 202}
    return [
        lambda: ledger.record_step(
            batch, row, state="previewed", event="preview", conversations_previewed=3
        ),
        lambda: ledger.approve(batch, approve=[row], by="runner", how="all"),
        lambda: ledger.record_attempt(batch, row, "execute", attempt),
        lambda: ledger.record_step(batch, row, state="submitted", event="execute", request_id="x"),
        lambda: ledger.record_step(batch, row, state="unconfirmed", event="wait over"),
    ]


def run_runner(ledger_path: str, rate: float) -> None:
    """Write to the ledger the way `execute` does, ``rate`` writes a second (0: flat out),
    until SIGTERM; print how many writes."""
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    ledger = Ledger(ledger_path)
    writes = 0
    deadline = time.monotonic() + RUNNER_LIMIT
    offset = 0
    print("ready", flush=True)
    started = time.monotonic()

    def pace() -> None:  # sleep until `writes` is on schedule
        if rate > 0:
            ahead = started + writes / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    while not stop and time.monotonic() < deadline:
        offset += 1000
        batch = new_batch(ledger, 20, offset)
        writes += 1
        for number in range(2, 22):
            for step in execute_steps(ledger, batch, number):
                if stop:
                    break
                pace()
                step()
                writes += 1
    print(writes, flush=True)


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callbacks", type=int, default=10_000)
    parser.add_argument("--senders", type=int, default=64)
    parser.add_argument(
        "--runner-rate",
        type=float,
        default=100.0,
        help="ledger writes a second by the runner (0: flat out). `execute` at its default "
        "--rate 5 writes about 20 a second; 100 is five times that.",
    )
    parser.add_argument("--runner", metavar="LEDGER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runner:
        run_runner(args.runner, args.runner_rate)
        return 0

    rows = args.callbacks // 2
    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as folder:
        ledger_path = os.path.join(folder, "ledger.db")
        ledger = Ledger(ledger_path)
        setup = time.perf_counter()
        batch = submitted_batch(ledger, rows)
        setup = time.perf_counter() - setup

        log_path = os.path.join(folder, "receiver.log")
        with open(log_path, "w") as log:
            receiver = Receiver(ledger_path, SECRET, stderr=log)
            runner = subprocess.Popen(
                [sys.executable, __file__, "--runner", ledger_path]
                + ["--runner-rate", str(args.runner_rate)],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            try:
                port = receiver.port
                assert runner.stdout.readline().strip() == "ready"
                requests = [callback_request(batch, row, port, SECRET, row % 50)
                            for row in range(2, rows + 2)] * 2  # fmt: skip
                random.Random(0).shuffle(requests)
                wall = time.perf_counter()
                latencies, statuses = send_all(port, requests, args.senders)
                wall = time.perf_counter() - wall
            finally:
                runner.send_signal(signal.SIGTERM)
                runner_writes = int(runner.communicate(timeout=60)[0].split()[-1])
                receiver_exit = receiver.stop()

        stored = ledger.callbacks(batch)
        verdicts: dict[str, int] = {}
        for callback in stored:
            verdicts[callback["verdict"]] = verdicts.get(callback["verdict"], 0) + 1
        succeeded = len(ledger.rows(batch, states=["succeeded"]))
        ok = sum(1 for status in statuses if 200 <= status < 300)
        lost = len(requests) - len(stored)
        p50, p99 = percentile(latencies, 0.50) * 1000, percentile(latencies, 0.99) * 1000
        slowest = max(latencies) * 1000
        over_2s = sum(1 for value in latencies if value > 2.0)
        print(
            f"webhook {len(requests)} callbacks from {args.senders} senders, runner writing: "
            f"{len(stored)} stored, {ok} answered 2xx, {lost} lost, {succeeded}/{rows} rows "
            f"succeeded, verdicts {verdicts} (goal: none lost)"
        )
        print(
            f"webhook latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {slowest:.1f} ms, "
            f"{over_2s} over 2 s (goal p99 < 100 ms, none over 2 s)"
        )
        print(
            f"webhook throughput: {len(requests) / wall:.0f} callbacks/s over {wall:.1f} s wall; "
            f"runner wrote {runner_writes} times meanwhile (--runner-rate {args.runner_rate:g}); setup {setup:.1f} s; "
            f"receiver exit {receiver_exit}; {statistics.mean(latencies) * 1000:.1f} ms mean"
        )
        ledger.close()
        good = lost == 0 and ok == len(requests) and p99 < 100 and over_2s == 0
        return 0 if good and receiver_exit == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

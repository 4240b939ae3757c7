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
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from omi_batch import callbacks  # noqa: E402
from omi_batch.config import Secret  # noqa: E402
from omi_batch.ledger import Ledger  # noqa: E402

SECRET = "bench-webhook-secret-9f3a"
REQUEST_TIMEOUT = 10.0  # seconds: a callback slower than this counts as lost
RUNNER_LIMIT = 600.0  # seconds: the runner stops on its own after this, whatever happens


def transfers(count: int, offset: int = 0) -> list[dict]:
    return [
        {
            "row": number,
            "source_email": f"leaver{number + offset}@example.com",
            "target_email": f"keeper{number + offset}@example.com",
        }
        for number in range(2, count + 2)
    ]


def new_batch(ledger: Ledger, rows: int, offset: int = 0) -> str:
    return ledger.create_batch(
        source_file="bench.csv",
        source_sha256="0" * 64,
        created_by="bench",
        base_url="http://127.0.0.1:9",
        options={},
        input_rows=rows,
        warnings=[],
        rows=transfers(rows, offset),
    )


def submitted_batch(ledger: Ledger, rows: int) -> str:
    """A batch whose rows are all submitted, waiting for their callbacks."""
    batch = new_batch(ledger, rows)
    numbers = range(2, rows + 2)
    for number in numbers:
        ledger.record_step(batch, number, state="previewed", event="bench preview")
    ledger.approve(batch, approve=numbers, by="bench", how="all")
    for number in numbers:
        ledger.record_step(
            batch, number, state="submitted", event="bench execute", request_id=f"r{number}"
        )
    return batch


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


# --------------------------------------------------------------------------- the senders


def request_bytes(batch: str, row: int, port: int) -> bytes:
    body = json.dumps(
        {
            "requestId": f"r{row}",
            "requestTimeMs": 1764062400000,
            "action": "CONVERSATION_AGENT_TRANSFER",
            "status": "SUCCESS",
            "responseTimeMs": 1764062401234,
            "payload": {"updatedRecords": row % 50},
        }
    ).encode()
    token = callbacks.token(Secret(SECRET), batch, row, "execute")
    head = (
        f"POST /callbacks/{batch}/{row}/execute HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{callbacks.HEADER}: {token}\r\n\r\n"
    )
    return head.encode() + body


async def exchange(reader, writer, request: bytes) -> int:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    await reader.readexactly(length)
    return status


async def sender(port: int, work: list[bytes], latencies: list[float], statuses: list[int]):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for request in work:
            started = time.perf_counter()
            try:
                status = await asyncio.wait_for(exchange(reader, writer, request), REQUEST_TIMEOUT)
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                status = 0
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            latencies.append(time.perf_counter() - started)
            statuses.append(status)
    finally:
        writer.close()


async def send_all(port: int, requests: list[bytes], senders: int):
    latencies: list[float] = []
    statuses: list[int] = []
    shares = [requests[i::senders] for i in range(senders)]
    await asyncio.gather(*(sender(port, share, latencies, statuses) for share in shares))
    return latencies, statuses


# --------------------------------------------------------------------------- main


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


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

        env = {**os.environ, "OMI_WEBHOOK_SECRET": SECRET}
        log_path = os.path.join(folder, "receiver.log")
        with open(log_path, "w") as log:
            receiver = subprocess.Popen(
                [sys.executable, "-m", "omi_batch", "webhook", "serve", "--port", "0"]
                + ["--ledger", ledger_path],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                cwd=ROOT,
            )
            runner = subprocess.Popen(
                [sys.executable, __file__, "--runner", ledger_path]
                + ["--runner-rate", str(args.runner_rate)],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            try:
                line = receiver.stdout.readline()
                port = int(line.rsplit(":", 1)[1])
                assert runner.stdout.readline().strip() == "ready"
                requests = [request_bytes(batch, row, port) for row in range(2, rows + 2)] * 2
                random.Random(0).shuffle(requests)
                wall = time.perf_counter()
                latencies, statuses = asyncio.run(send_all(port, requests, args.senders))
                wall = time.perf_counter() - wall
            finally:
                runner.send_signal(signal.SIGTERM)
                runner_writes = int(runner.communicate(timeout=60)[0].split()[-1])
                receiver.send_signal(signal.SIGTERM)
                receiver_exit = receiver.wait(timeout=60)

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

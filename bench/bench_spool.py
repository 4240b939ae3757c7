"""Benchmark: the receiver while another writer holds the ledger for 40 s (issue 12, §8).

The receiver (`omi-batch webhook serve`) on a ledger with submitted rows; another process
takes the ledger's write lock (`BEGIN IMMEDIATE`) and holds it for ``--lock`` seconds while
``--senders`` senders post one authenticated callback per row, spread over the lock. Each is
answered from the spool within the 2 s OMI allows and applied once the lock is gone. Goal: 0
lost callbacks, every answer under 2 s.

    .venv/bin/python bench/bench_spool.py [--lock 40] [--callbacks 400] [--senders 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
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

SECRET = "bench-spool-secret-77e0"
TIMEOUT = 10.0  # seconds: an answer slower than this counts as lost
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
print("released", flush=True)
"""


def request_bytes(batch: str, row: int, port: int) -> bytes:
    body = json.dumps({"requestId": f"r{row}", "status": "SUCCESS",
                       "action": "CONVERSATION_AGENT_TRANSFER",
                       "payload": {"updatedRecords": row % 50}}).encode()  # fmt: skip
    token = callbacks.token(Secret(SECRET), batch, row, "execute")
    return (f"POST /callbacks/{batch}/{row}/execute HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{callbacks.HEADER}: {token}\r\n\r\n").encode() + body  # fmt: skip


async def exchange(reader, writer, request: bytes) -> int:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def sender(port, work, pause, latencies, statuses) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for request in work:
            started = time.perf_counter()
            try:
                status = await asyncio.wait_for(exchange(reader, writer, request), TIMEOUT)
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                status = 0
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            latencies.append(time.perf_counter() - started)
            statuses.append(status)
            await asyncio.sleep(pause)
    finally:
        writer.close()


async def send_all(port, requests, senders, pause):
    latencies: list[float] = []
    statuses: list[int] = []
    shares = [requests[i::senders] for i in range(senders)]
    await asyncio.gather(*(sender(port, s, pause, latencies, statuses) for s in shares))
    return latencies, statuses


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=float, default=40.0, help="seconds the ledger is held")
    parser.add_argument("--callbacks", type=int, default=400)
    parser.add_argument("--senders", type=int, default=16)
    args = parser.parse_args()
    rows = args.callbacks
    with tempfile.TemporaryDirectory(prefix="bench-spool-") as folder:
        path = os.path.join(folder, "ledger.db")
        ledger = Ledger(path)
        batch = ledger.create_batch(
            source_file="bench.csv", source_sha256="0" * 64, created_by="bench",
            base_url="http://127.0.0.1:9", options={}, input_rows=rows, warnings=[],
            rows=[{"row": n, "source_email": f"a{n}@example.com",
                   "target_email": f"b{n}@example.com"} for n in range(2, rows + 2)],
        )  # fmt: skip
        numbers = range(2, rows + 2)
        for number in numbers:
            ledger.record_step(batch, number, state="previewed", event="bench preview")
        ledger.approve(batch, approve=numbers, by="bench", how="all")
        for number in numbers:
            ledger.record_step(
                batch, number, state="submitted", event="bench", request_id=f"r{number}"
            )
        env = {**os.environ, "OMI_WEBHOOK_SECRET": SECRET}
        receiver = subprocess.Popen(
            [sys.executable, "-m", "omi_batch", "webhook", "serve", "--port", "0",
             "--ledger", path],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        locker = None
        try:
            port = int(receiver.stdout.readline().rsplit(":", 1)[1])
            locker = subprocess.Popen([sys.executable, "-c", LOCKER, path, str(args.lock)],
                                      stdout=subprocess.PIPE, text=True)  # fmt: skip
            assert locker.stdout.readline().strip() == "locked"
            requests = [request_bytes(batch, n, port) for n in numbers]
            pause = max(0.0, 0.8 * args.lock * args.senders / len(requests))
            wall = time.perf_counter()
            latencies, statuses = asyncio.run(send_all(port, requests, args.senders, pause))
            wall = time.perf_counter() - wall
            assert locker.stdout.readline().strip() == "released"
            locker.wait(timeout=60)
            applied_in = time.perf_counter()
            for _ in range(1200):  # bounded: up to 60 s for the spool to drain
                if len(ledger.rows(batch, states=["succeeded"])) == rows:
                    break
                time.sleep(0.05)
            applied_in = time.perf_counter() - applied_in
        finally:
            if locker is not None and locker.poll() is None:
                locker.kill()
            receiver.send_signal(signal.SIGTERM)
            receiver_exit = receiver.wait(timeout=120)
        stored = ledger.callbacks(batch)
        succeeded = len(ledger.rows(batch, states=["succeeded"]))
        ok = sum(1 for s in statuses if s == 200)
        lost = rows - len({c["row"] for c in stored if c["verdict"] == "applied"})
        p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
        slowest = max(latencies) * 1000
        print(
            f"spool: {rows} callbacks from {args.senders} senders over {wall:.1f} s while "
            f"another writer held the ledger for {args.lock:g} s: {ok} answered 200, "
            f"{lost} lost, {succeeded}/{rows} rows succeeded "
            f"{applied_in:.1f} s after the lock was released, {len(stored)} stored"
        )
        print(
            f"spool latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {slowest:.1f} ms, "
            f"{sum(1 for v in latencies if v > 2.0)} over 2 s (goal: 0 lost, none over 2 s); "
            f"receiver exit {receiver_exit}"
        )
        ledger.close()
        good = lost == 0 and ok == rows and slowest < 2000 and receiver_exit == 0
        return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())

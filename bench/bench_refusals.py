"""Benchmark: how much 100,000 refused callbacks grow the ledger (issue 12, §7).

The receiver (`omi-batch webhook serve`) on a fresh ledger; 16 keep-alive senders post
refused requests in four kinds, round robin: an empty POST without a credential, a body with a
wrong credential, 200 padded headers, and a GET. Refusals are counted per reason and minute
and only the first few of each reason per hour are stored. Goal: under 1 MB per 100,000.

    .venv/bin/python bench/bench_refusals.py [--requests 100000] [--senders 16]
"""

from __future__ import annotations

import argparse
import asyncio
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

from omi_batch.ledger import Ledger  # noqa: E402

SECRET = "bench-refusals-secret-4c1d"
TIMEOUT = 10.0


def kinds(batch: str, port: int) -> list[bytes]:
    path = f"/callbacks/{batch}/2/execute"
    host = f"Host: 127.0.0.1:{port}\r\n"
    body = b'{"requestId": "r2", "status": "SUCCESS", "payload": {"updatedRecords": 1}}'
    padded = "".join(f"X-Pad-{i}: {'p' * 100}\r\n" for i in range(200))
    return [
        f"POST {path} HTTP/1.1\r\n{host}Content-Length: 0\r\n\r\n".encode(),
        f"POST {path} HTTP/1.1\r\n{host}X-Omi-Batch-Token: {'0' * 64}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body,
        f"POST {path} HTTP/1.1\r\n{host}{padded}Content-Length: 0\r\n\r\n".encode(),
        f"GET {path} HTTP/1.1\r\n{host}\r\n".encode(),
    ]


async def exchange(reader, writer, request: bytes) -> int:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def sender(port: int, work: list[bytes], statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for request in work:
            try:
                status = await asyncio.wait_for(exchange(reader, writer, request), TIMEOUT)
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                status = 0
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def send_all(port: int, requests: list[bytes], senders: int) -> dict[int, int]:
    statuses: dict[int, int] = {}
    await asyncio.gather(*(sender(port, requests[i::senders], statuses) for i in range(senders)))
    return statuses


def ledger_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--senders", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-refusals-") as folder:
        path = os.path.join(folder, "ledger.db")
        with Ledger(path) as ledger:
            batch = ledger.create_batch(
                source_file="bench.csv", source_sha256="0" * 64, created_by="bench",
                base_url="http://127.0.0.1:9", options={}, input_rows=1, warnings=[],
                rows=[{"row": 2, "source_email": "a@example.com",
                       "target_email": "b@example.com"}],
            )  # fmt: skip
        before = ledger_bytes(path)
        env = {**os.environ, "OMI_WEBHOOK_SECRET": SECRET}
        receiver = subprocess.Popen(
            [sys.executable, "-m", "omi_batch", "webhook", "serve", "--port", "0",
             "--ledger", path],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        try:
            port = int(receiver.stdout.readline().rsplit(":", 1)[1])
            sample = kinds(batch, port)
            requests = [sample[i % len(sample)] for i in range(args.requests)]
            wall = time.perf_counter()
            statuses = asyncio.run(send_all(port, requests, args.senders))
            wall = time.perf_counter() - wall
        finally:
            receiver.send_signal(signal.SIGTERM)
            receiver_exit = receiver.wait(timeout=60)
        with Ledger(path) as ledger:
            stored = len(ledger.callbacks(batch))
            counted = sum(r["count"] for r in ledger.refusals())
            ledger.verify()
        grown = ledger_bytes(path) - before
        per_100k = grown * 100_000 / max(1, args.requests)
        print(
            f"refusals: {args.requests} refused requests from {args.senders} senders in "
            f"{wall:.1f} s ({args.requests / wall:.0f}/s), answers {dict(sorted(statuses.items()))}; "
            f"{stored} stored as samples, {counted} counted"
        )
        print(
            f"refusals: the ledger grew {grown} bytes, {per_100k / 1e6:.3f} MB per 100,000 "
            f"refused requests (goal: under 1 MB); receiver exit {receiver_exit}"
        )
        good = per_100k < 1e6 and counted == args.requests and receiver_exit == 0
        return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())

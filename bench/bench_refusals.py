"""Benchmark: how much 100,000 refused callbacks grow the ledger (issue 12, §7).

The receiver (`omi-batch webhook serve`) on a fresh ledger; 16 keep-alive senders post
refused requests in four kinds, round robin: an empty POST without a credential, a body with a
wrong credential, 200 padded headers, and a GET. Refusals are counted per reason and minute
and only the first few of each reason per hour are stored. Goal: under 1 MB per 100,000.

    .venv/bin/python bench/bench_refusals.py [--requests 100000] [--senders 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter

from common import Receiver, new_batch, send_all

from omi_batch.ledger import Ledger

SECRET = "bench-refusals-secret-4c1d"


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
            batch = new_batch(ledger, 1)
        before = ledger_bytes(path)
        receiver = Receiver(path, SECRET)
        try:
            sample = kinds(batch, receiver.port)
            requests = [sample[i % len(sample)] for i in range(args.requests)]
            wall = time.perf_counter()
            statuses = Counter(send_all(receiver.port, requests, args.senders)[1])
            wall = time.perf_counter() - wall
        finally:
            receiver_exit = receiver.stop()
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

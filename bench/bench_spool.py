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
import os
import subprocess
import sys
import tempfile
import time

from common import Receiver, callback_request, percentile, send_all, submitted_batch

from omi_batch.ledger import Ledger

SECRET = "bench-spool-secret-77e0"
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
print("released", flush=True)
"""


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
        batch = submitted_batch(ledger, rows)
        numbers = range(2, rows + 2)
        receiver = Receiver(path, SECRET)
        locker = None
        try:
            locker = subprocess.Popen([sys.executable, "-c", LOCKER, path, str(args.lock)],
                                      stdout=subprocess.PIPE, text=True)  # fmt: skip
            assert locker.stdout.readline().strip() == "locked"
            requests = [callback_request(batch, n, receiver.port, SECRET, n % 50) for n in numbers]
            pause = max(0.0, 0.8 * args.lock * args.senders / len(requests))
            wall = time.perf_counter()
            latencies, statuses = send_all(receiver.port, requests, args.senders, pause)
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
            receiver_exit = receiver.stop()
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

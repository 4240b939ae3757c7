"""Ledger benchmark: audit events appended per second with durability on (WAL,
synchronous=FULL, one BEGIN IMMEDIATE per event), by one writer and by two processes at once, and
`ledger verify` over 100,000 events. Local files only; bounded.

Run: .venv/bin/python bench/bench_ledger.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from omi_batch.ledger import Ledger  # noqa: E402

SINGLE = 3000
PER_PROCESS = 3000
VERIFY_EVENTS = 100_000

APPEND = """
import os, sys, time
from omi_batch.ledger import Ledger
path, go, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
led = Ledger(path)
deadline = time.monotonic() + 30
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.001)
for i in range(count):
    led.log("tick", i=i, who=os.getpid())
led.close()
"""


def single_writer(folder: Path) -> None:
    with Ledger(folder / "single.db") as led:
        started = time.perf_counter()
        for i in range(SINGLE):
            led.log("tick", i=i, note="Nguyễn Văn An")
        wall = time.perf_counter() - started
    print(
        f"append, 1 writer, {SINGLE} events: {SINGLE / wall:,.0f} events/s "
        f"({wall * 1000 / SINGLE:.2f} ms each, goal > 200 events/s)"
    )


def two_processes(folder: Path) -> None:
    path, go = folder / "two.db", folder / "go"
    Ledger(path).close()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", APPEND, str(path), str(go), str(PER_PROCESS)], cwd=ROOT
        )
        for _ in range(2)
    ]
    time.sleep(1.0)  # let both import and open the ledger
    started = time.perf_counter()
    go.touch()
    for writer in writers:
        writer.wait(timeout=300)
    wall = time.perf_counter() - started
    with Ledger(path) as led:
        result = led.verify()
    total = 2 * PER_PROCESS
    ok = "chain ok" if result.ok and result.events == total else f"PROBLEM: {result}"
    print(
        f"append, 2 processes, {total} events: {total / wall:,.0f} events/s in all "
        f"({ok}, goal > 200 events/s, no lock error)"
    )


def verify_100k(folder: Path) -> None:
    path = folder / "big.db"
    with Ledger(path) as led:
        started = time.perf_counter()
        with led._write() as tx:  # bulk build: one transaction, the same event code
            for i in range(VERIFY_EVENTS):
                tx.event("tick", "20261125-093000-ab12", 2 + i % 500, {"i": i, "phase": "execute"})
        build = time.perf_counter() - started

        started = time.perf_counter()
        result = led.verify()
        wall = time.perf_counter() - started
        assert result.ok and result.events == VERIFY_EVENTS, result

        started = time.perf_counter()
        for i in range(500):
            led.log("tick", i=i)
        per_event = (time.perf_counter() - started) / 500
    print(f"build {VERIFY_EVENTS:,} events in one transaction: {build:.2f} s")
    print(f"verify {VERIFY_EVENTS:,} events (library): {wall:.2f} s wall (goal < 5 s)")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "omi_batch", "ledger", "verify", "--ledger", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    wall = time.perf_counter() - started
    print(
        f"omi-batch ledger verify over {VERIFY_EVENTS:,} events: {wall:.2f} s wall, "
        f"exit {done.returncode} (goal < 5 s)"
    )
    print(
        f"append at {VERIFY_EVENTS:,} events: {1 / per_event:,.0f} events/s "
        f"(writers do not slow down with size)"
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as folder:
        print(f"(files in {folder})")
        single_writer(Path(folder))
        two_processes(Path(folder))
        verify_100k(Path(folder))


if __name__ == "__main__":
    main()

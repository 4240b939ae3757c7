"""What the benchmarks share: the batches they set up in a ledger, the inputs they feed the
simulator, the receiver they start, and the raw keep-alive senders that post to it.

A benchmark script imports it as ``common`` (its own folder is on ``sys.path`` when it runs as
``python bench/bench_x.py``); importing it puts the checkout first on ``sys.path`` too, so the
scripts measure this tree's ``omi_batch``. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from omi_batch import callbacks  # noqa: E402
from omi_batch.config import Secret  # noqa: E402
from omi_batch.ledger import Ledger  # noqa: E402

TIMEOUT = 10.0  # seconds: an answer slower than this counts as lost


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --------------------------------------------------------------------------- ledger set-up


def new_batch(ledger: Ledger, rows: int, offset: int = 0) -> str:
    """A batch of ``rows`` planned transfers (rows 2, 3, …)."""
    transfers = [{"row": n, "source_email": f"leaver{n + offset}@example.com",
                  "target_email": f"keeper{n + offset}@example.com"} for n in range(2, rows + 2)]  # fmt: skip
    return ledger.create_batch(source_file="bench.csv", source_sha256="0" * 64,
                               created_by="bench", base_url="http://127.0.0.1:9", options={},
                               input_rows=rows, warnings=[], rows=transfers)  # fmt: skip


def submitted_batch(ledger: Ledger, rows: int) -> str:
    """A batch whose rows are all submitted (row N with request id ``rN``), waiting for their
    callbacks."""
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


# --------------------------------------------------------------------------- simulator inputs


def write_inputs(
    folder: Path, rows: int, moving: int | None = None, *, name: str = "fixture"
) -> tuple[Path, Path]:
    """A simulator fixture of 2*rows agents (``srcNNNNN@bench.vn``, ``tgtNNNNN@bench.vn``) with
    one conversation for each of the first ``moving`` sources (all of them by default), and a
    CSV of ``rows`` transfers, each source to its target."""
    moving = rows if moving is None else min(moving, rows)
    created = (datetime.now(UTC) - timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    agents = [{"email": f"src{i:05d}@bench.vn", "name": f"S {i}"} for i in range(rows)]
    agents += [{"email": f"tgt{i:05d}@bench.vn", "name": f"T {i}"} for i in range(rows)]
    conversations = [
        {"id": f"c{i:06d}", "members": [f"src{i:05d}@bench.vn"], "created_at": created}
        for i in range(moving)
    ]
    fixture = folder / f"{name}.json"
    fixture.write_text(json.dumps({"agents": agents, "conversations": conversations}))
    plan = folder / f"rows-{rows}.csv"
    with plan.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source_email", "target_email"])
        for i in range(rows):
            writer.writerow([f"src{i:05d}@bench.vn", f"tgt{i:05d}@bench.vn"])
    return fixture, plan


# --------------------------------------------------------------------------- the receiver


class Receiver:
    """``omi-batch webhook serve`` on ``ledger_path`` in a child process; ``port`` once it
    listens. ``stop()`` sends SIGTERM and returns its exit code."""

    def __init__(self, ledger_path: str, secret: str, *, stderr=subprocess.DEVNULL):
        env = {**os.environ, "OMI_WEBHOOK_SECRET": secret}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "omi_batch", "webhook", "serve", "--port", "0",
             "--ledger", ledger_path],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        line = self.process.stdout.readline()  # bounded: the child prints it or exits
        if not re.search(r":\d+\s*$", line):
            self.process.kill()
            raise SystemExit(f"the receiver did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self, timeout: float = 120) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


# --------------------------------------------------------------------------- the senders


def callback_request(batch: str, row: int, port: int, secret: str, updated: int) -> bytes:
    """The raw HTTP/1.1 bytes of an authenticated SUCCESS callback for ``row`` (request ``rN``)."""
    body = json.dumps({"requestId": f"r{row}", "requestTimeMs": 1764062400000,
                       "action": "CONVERSATION_AGENT_TRANSFER", "status": "SUCCESS",
                       "responseTimeMs": 1764062401234,
                       "payload": {"updatedRecords": updated}}).encode()  # fmt: skip
    token = callbacks.token(Secret(secret), batch, row, "execute")
    return (f"POST /callbacks/{batch}/{row}/execute HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{callbacks.HEADER}: {token}\r\n\r\n").encode() + body  # fmt: skip


async def _exchange(reader, writer, request: bytes) -> int:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def _sender(port, work, pause, latencies, statuses) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for request in work:
            started = time.perf_counter()
            try:
                status = await asyncio.wait_for(_exchange(reader, writer, request), TIMEOUT)
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                status = 0  # no answer in time: lost; a fresh connection for the next one
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            latencies.append(time.perf_counter() - started)
            statuses.append(status)
            if pause:
                await asyncio.sleep(pause)
    finally:
        writer.close()


def send_all(
    port: int, requests: list[bytes], senders: int, pause: float = 0.0
) -> tuple[list[float], list[int]]:
    """Post ``requests`` from ``senders`` keep-alive connections (request i on connection
    i % senders, ``pause`` seconds after each); each one's seconds and HTTP status (0: lost)."""
    latencies: list[float] = []
    statuses: list[int] = []
    shares = [requests[i::senders] for i in range(senders)]

    async def everyone() -> None:
        await asyncio.gather(*(_sender(port, s, pause, latencies, statuses) for s in shares))

    asyncio.run(everyone())
    return latencies, statuses

"""The ledger shared by real processes: the runner and the webhook receiver write at the same
time, and a process killed in the middle of a write leaves a sound, verifiable file."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omi_batch.ledger import Ledger

pytestmark = pytest.mark.slow

# Waits for a start file so both writers really overlap, then appends N events.
APPEND = """
import os, sys, time
from omi_batch.ledger import Ledger
path, go, count, who = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
led = Ledger(path)
deadline = time.monotonic() + 30
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.002)
for i in range(count):
    led.log("tick", who=who, i=i)
led.close()
"""

# Writes until killed (bounded all the same): events, and now and then a whole batch of
# 500 rows in one transaction, so a kill can land inside a big write too.
WRITE_UNTIL_KILLED = """
import sys
from omi_batch.ledger import Ledger
led = Ledger(sys.argv[1])
rows = [dict(row=r, source_email=f"a{r}@x.vn", target_email="b@x.vn", requested_target="b@x.vn",
             via=(), conv_ids=(), replace_existing_members=False, note="Phạm") for r in range(2, 502)]
for i in range(100_000):
    led.log("tick", i=i)
    if i % 25 == 0:
        batch = led.create_batch(source_file="f.csv", source_sha256="0" * 64, created_by="t",
                                 base_url=None, options={}, input_rows=500, warnings=[], rows=rows)
        led.approve(batch, approve=[], skip=range(2, 502), by="t", how="all")
"""


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )


def head_id(path: Path) -> int:
    try:
        return json.loads(Path(f"{path}.head").read_text())["id"]
    except (FileNotFoundError, ValueError):
        return 0


def wait_for_head(path: Path, at_least: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while head_id(path) < at_least:
        assert time.monotonic() < deadline, f"the writer never reached event {at_least}"
        time.sleep(0.01)


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def test_two_processes_append_5000_events_each_without_a_lock_error(tmp_path):
    path = tmp_path / "ledger.db"
    go = tmp_path / "go"
    writers = [spawn(APPEND, str(path), str(go), "5000", who) for who in ("runner", "receiver")]
    go.touch()
    outputs = [writer.communicate(timeout=120) for writer in writers]

    for writer, (_out, err) in zip(writers, outputs, strict=True):
        assert (writer.returncode, err.decode()) == (0, "")
    with Ledger(path) as led:
        result = led.verify()
        events = led.events()
    assert (result.ok, result.events, result.problem) == (True, 10_000, "")
    assert [e["id"] for e in events] == list(range(1, 10_001))
    for who in ("runner", "receiver"):
        assert [e["data"]["i"] for e in events if e["data"]["who"] == who] == list(range(5000))
    assert head_id(path) == 10_000
    assert integrity(path) == "ok"


@pytest.mark.parametrize("kill_after", [50, 400])
def test_a_writer_killed_mid_write_leaves_a_sound_verifiable_ledger(tmp_path, kill_after):
    path = tmp_path / "ledger.db"
    writer = spawn(WRITE_UNTIL_KILLED, str(path))
    try:
        wait_for_head(path, kill_after)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.communicate(timeout=30)
    assert writer.returncode == -signal.SIGKILL

    assert integrity(path) == "ok"
    with Ledger(path) as led:
        result = led.verify()
        assert result.ok, result.problem
        assert result.events >= kill_after
        # Every batch is whole: a kill inside create_batch or approve left nothing half-done.
        for batch in led.batches():
            assert batch["row_count"] == 500
            assert sum(batch["states"].values()) == 500
            assert set(batch["states"]) <= {"planned", "skipped"}
        # and the next writer carries on the chain.
        next_id = led.log("after_the_kill")
        assert next_id == result.events + 1
        assert led.verify().ok

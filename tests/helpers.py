"""Helpers shared by the tests (a module, not a fixture: tests import it by name)."""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import requests

from omi_batch import callbacks
from omi_batch.client import RetryPolicy
from omi_batch.config import Secret, Settings
from omi_batch.jobs import load_job
from omi_batch.ledger import Ledger
from omi_batch.roster import read_plan
from omi_batch.session import Session

# Distinctive values so a test can grep every output, log, ledger and report for them.
API_KEY = "test-api-key-5b8e1f0c9d7a"
WEBHOOK_SECRET = "test-webhook-secret-c41d77a2e9"
SECRET = Secret(WEBHOOK_SECRET)
TIMEOUT = 10  # seconds, per HTTP request: a bound, not a timing assertion
REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample_offboarding.csv"
# The sample's rows 2-6, conversations only: every row can succeed (row 7 moves tickets too,
# which tests/test_pipeline_tickets.py is about; row 8's target has no OMI account).
GOOD_CSV = "".join(SAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)[:6])


def departures_csv(tmp_path, text: str) -> Path:
    """``text`` saved as ``tmp_path/departures.csv`` (UTF-8): the file a test's commands read."""
    path = tmp_path / "departures.csv"
    path.write_text(text, encoding="utf-8")
    return path


def transfer(row: int, source: str, target: str, **more) -> dict:
    """One transfer as ``Ledger.create_batch`` takes it: straight from ``source`` to ``target``
    (no chain), every conversation, members kept, no note; ``more`` changes any of it."""
    return {"row": row, "source_email": source, "target_email": target,
            "requested_target": target, "via": (), "conv_ids": (),
            "replace_existing_members": False, "note": "", **more}  # fmt: skip


OLD_BATCH = "20250101-000000-0001"


def old_ledger(path, version: int, *, database: bool = False, **row) -> sqlite3.Connection:
    """A ledger file as an omi-batch at schema ``version`` left it, written in SQL: one batch
    (OLD_BATCH) whose row 2 moves a@x.vn to b@x.vn and is ``submitted``, unless ``row`` gives
    other cells of that schema's rows table. ``database``: migrated through a sqlite-utils
    Database over the connection (migrate takes either). The connection stays open."""
    from omi_batch.ledger import migrate

    conn = sqlite3.connect(path, isolation_level=None)
    if database:
        import sqlite_utils

        assert migrate(sqlite_utils.Database(conn, execute_plugins=False), version) == version
    else:
        assert migrate(conn, version) == version
    conn.execute("INSERT INTO batches (id, created_at, row_count, options, warnings) "
                 "VALUES (?, '2025-01-01T00:00:00.000Z', 1, '{}', '[]')", (OLD_BATCH,))  # fmt: skip
    cells = {"batch_id": OLD_BATCH, "row": 2, "seq": 0, "source_email": "a@x.vn",
             "target_email": "b@x.vn", "via": "[]", "conv_ids": "[]", "state": "submitted", **row}  # fmt: skip
    names = ", ".join(f'"{name}"' for name in cells)
    conn.execute(f'INSERT INTO "rows" ({names}) VALUES ({", ".join("?" * len(cells))})',
                 list(cells.values()))  # fmt: skip
    return conn


def make_batch(ledger, rows: int = 3, state: str = "submitted", request_ids: bool = True) -> str:
    """A batch of ``rows`` transfers (rows 2, 3, …), each brought to ``state``; submitted rows
    get the request id ``req-<row>`` unless ``request_ids`` is false (their 202 not stored)."""
    transfers = [transfer(number, f"leaver{number}@example.com", f"keeper{number}@example.com")
                 for number in range(2, rows + 2)]  # fmt: skip
    batch = ledger.create_batch(source_file="departures.csv", source_sha256="0" * 64,
                                created_by="test", base_url="http://127.0.0.1:9", options={},
                                input_rows=rows, warnings=[], rows=transfers)  # fmt: skip
    path = ["previewed", "approved", "submitted", "unconfirmed"]
    for number in range(2, rows + 2):
        for step in path[: path.index(state) + 1] if state != "planned" else []:
            fields = {}
            if step == "submitted" and request_ids:
                fields = {"request_id": f"req-{number}"}
            ledger.record_step(batch, number, state=step, event=f"test {step}", **fields)
    return batch


def result(request_id: str = "req-2", status: str = "SUCCESS", updated: object = 7) -> dict:
    """A callback body as OMI sends it."""
    return {"requestId": request_id, "requestTimeMs": 1764062400000,
            "action": "CONVERSATION_AGENT_TRANSFER", "status": status,
            "responseTimeMs": 1764062401234, "payload": {"updatedRecords": updated}}  # fmt: skip


def send(server, batch: str, row: int, body, *, phase: str = "execute", token=True, **kw):
    """POST a callback; ``token=True`` sends this transfer's own credential."""
    headers = dict(kw.pop("headers", {}))
    if token is True:
        headers[callbacks.HEADER] = callbacks.token(SECRET, batch, row, phase)
    elif token:
        headers[callbacks.HEADER] = token
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    url = f"{server.url}/callbacks/{batch}/{row}/{phase}"
    return requests.post(url, data=data, headers=headers, timeout=TIMEOUT, **kw)


def wait_until(check, *, tries: int = 400, pause: float = 0.05) -> bool:
    """Poll ``check()`` until it is true, a bounded number of times; its last value."""
    for _ in range(tries):
        if check():
            return True
        time.sleep(pause)
    return bool(check())


def interrupted(args, ready, *, sig: int = signal.SIGINT, what: str = "it got going",
                env: dict | None = None, cwd=None) -> tuple[int, str]:  # fmt: skip
    """``omi-batch ARGS`` as its own process, sent ``sig`` once ``ready()`` is true (polled for
    20 s at most): its exit code and what it said on stderr."""
    import pytest

    env = dict(env if env is not None else os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-m", "omi_batch", *map(str, args)], env=env,
                               cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        if not wait_until(ready, tries=1000, pause=0.02):
            pytest.fail(f"never happened: {what}")
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    return process.returncode, stderr.decode()


class ServiceProcess:
    """``omi-batch ARGS`` for a service (``webhook serve``, ``simulator serve``) in its own
    process, as an operator starts it: ``url`` once its first line says where it listens (that
    line is ``first``), ``stop()`` its exit code, then ``stderr``; ``lines`` has what it printed
    after the first line (None once stdout closed). In a ``with`` it is killed at the end if a
    test left it running."""

    ADDRESS = re.compile(r" listening on (http://127\.0\.0\.1:\d+)$")

    def __init__(self, *args: str, env: dict | None = None, cwd=None):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "omi_batch", *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, cwd=cwd,
        )  # fmt: skip
        self.lines: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._stderr.extend, args=(self.process.stderr,),
                                          daemon=True)]  # fmt: skip
        for reader in self._readers:
            reader.start()
        self.stderr: str | None = None
        self.first = self.lines.get(timeout=60)
        match = self.ADDRESS.search(self.first or "")
        if not match:
            self.kill()
            raise AssertionError(f"unexpected first line: {self.first!r}")
        self.url = match.group(1)

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def stop(self, how: int = signal.SIGTERM) -> int:
        """Send ``how`` and wait (bounded) for it to end; its exit code."""
        self.process.send_signal(how)
        code = self.process.wait(timeout=30)
        self._readers[1].join(timeout=10)
        self.stderr = "".join(self._stderr)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def webhook_serve(ledger_path, *args: str, env: dict | None = None) -> ServiceProcess:
    """``omi-batch webhook serve --port 0 ARGS --ledger LEDGER`` with the tests' secret."""
    served = ServiceProcess("webhook", "serve", "--port", "0", *args, "--ledger",
                            str(ledger_path), env={"OMI_WEBHOOK_SECRET": WEBHOOK_SECRET, **(env or {})})  # fmt: skip
    if not served.first.startswith("Webhook receiver listening on "):
        served.kill()
        raise AssertionError(f"unexpected first line: {served.first!r}")
    return served


# ---------------------------------------------------------------------------- runtime

TRANSFER = "/api/v3/agent/conversation/transfer"
FAST_RETRY = RetryPolicy(max_attempts=8, base=0.0, max_wait=0.0, max_total=20)


def execute_requests(sim) -> Counter:
    """How many execute requests (previewChanges false) each row received, by callback URL."""
    counts: Counter = Counter()
    for event in sim.events:
        body = event.get("body")
        request = event["kind"] == "request" and event["path"] == TRANSFER
        if request and isinstance(body, dict) and not body.get("previewChanges"):
            url = (body.get("callbackResultConfig") or {}).get("url", "")
            match = re.search(r"/callbacks/[^/]+/(\d+)/execute$", url)
            counts[int(match.group(1)) if match else None] += 1
    return counts


class Stack:
    """Library-level set-up: the runtime as every command opens it (``Session``: a ledger, an
    in-process receiver and a pipeline)."""

    def __init__(self, tmp_path, server, *, webhook_url: bool = True, **options):
        settings = Settings(
            base_url=server.url, api_key=Secret(API_KEY), webhook_secret=Secret(WEBHOOK_SECRET)
        )
        options.setdefault("rate", 1000)
        options.setdefault("wait", 5)
        options.setdefault("retry", FAST_RETRY)
        self.ledger = Ledger(tmp_path / "ledger.db")
        listen = ("127.0.0.1", 0) if webhook_url else None
        self.session = Session(settings, self.ledger, listen=listen, **options)
        self.receiver = self.session.receiver
        self.pipeline = self.session.pipeline

    def approved(self, csv_path, limit: int | None = None) -> str:
        """A batch of ``csv_path`` (its first ``limit`` rows), previewed, every row that
        previewed ok approved."""
        batch_id = self.pipeline.create_batch(read_plan(csv_path, limit=limit))
        self.pipeline.preview(batch_id)
        self.pipeline.approve(batch_id, approve_all=True)
        return batch_id

    def run(self, csv_path) -> str:
        batch_id = self.approved(csv_path)
        self.pipeline.execute(batch_id)
        return batch_id

    def close(self):
        self.session.close()
        self.ledger.close()


def approved_batch(tmp_path, server, csv_path) -> str:
    """A batch of ``csv_path`` previewed and approved in ``tmp_path/ledger.db``, nothing sent yet
    (its Stack closed again, so a command can take over)."""
    stack = Stack(tmp_path, server, webhook_url=False)
    try:
        return stack.approved(csv_path)
    finally:
        stack.close()


def use_simulator(monkeypatch, server, api_key: str = API_KEY,
                  secret: str = WEBHOOK_SECRET) -> None:  # fmt: skip
    """OMI_* of this process (the commands a test runs in it) pointing at ``server``; no
    OMI_WEBHOOK_URL (tests use --listen) and no OMI_BATCH_LEDGER."""
    monkeypatch.setenv("OMI_BASE_URL", server.url)
    monkeypatch.setenv("OMI_API_KEY", api_key)
    monkeypatch.setenv("OMI_WEBHOOK_SECRET", secret)
    monkeypatch.delenv("OMI_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("OMI_BATCH_LEDGER", raising=False)


def execute_interrupted(batch_id: str, ledger_path, reports_dir, sig: int, cwd) -> tuple[int, str]:
    """``omi-batch execute BATCH --yes`` (2 at a time, a receiver of its own) as its own process,
    sent ``sig`` once a transfer has succeeded while another is still submitted: its exit
    code and stderr. OMI_* must point at the simulator (:func:`use_simulator`)."""
    with Ledger(ledger_path) as watch:

        def got_going() -> bool:
            now = Counter(r["state"] for r in watch.rows(batch_id))
            return now["succeeded"] >= 1 and now["submitted"] >= 1

        return interrupted(["execute", batch_id, "--yes", "--rate", "1000", "--concurrency", "2",
                            "--wait", "30", "--listen", "127.0.0.1:0", "--ledger", ledger_path,
                            "--reports", reports_dir], got_going, sig=sig, cwd=cwd,
                           what="a transfer succeeded while another is submitted")  # fmt: skip


# ---------------------------------------------------------------------------- jobs

FOLDERS = ("inbox", "review", "approved", "archive", "reports")


def job_toml(*, policy: str = "manual", per_row: int = 1000, per_batch: int = 10000,
             wait: float = 10, listen: bool = True, check_agents: bool = True,
             top: tuple[str, ...] = (), run: tuple[str, ...] = ()) -> str:  # fmt: skip
    """The text of a job file whose folders and ledger sit in ``work/``; ``top`` and ``run``
    are extra lines for the top level and for [run] (one job-file builder for every test)."""
    lines = ['ledger = "work/ledger.db"', *top, "[folders]"]
    lines += [f'{folder} = "work/{folder}"' for folder in FOLDERS]
    lines += ["[approval]", f'policy = "{policy}"', f"max_conversations_per_row = {per_row}",
              f"max_conversations_per_batch = {per_batch}", "[run]", "rate = 100.0",
              f"wait = {wait}", *(['listen = "127.0.0.1:0"'] if listen else []),
              *([] if check_agents else ["check_agents = false"]), *run]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_job(path, **parts) -> Path:
    """``job_toml(**parts)`` written to ``path`` (its folder created); the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(job_toml(**parts), encoding="utf-8")
    return path


def make_job(tmp_path, **parts):
    """A job in ``tmp_path/work`` read from ``tmp_path/offboarding.toml``; with ``listen`` (the
    default) each tick runs its own receiver."""
    return load_job(write_job(tmp_path / "offboarding.toml", **parts))


# ---------------------------------------------------------------------------- the command line

# The sample's header and rows 2-6 (the README's file): every agent in them is known to the
# simulator; row 4 routes bao.pham's 2 VIP conversations, row 5 takes "all the rest".
SAMPLE_TEXT = GOOD_CSV
# What a preview OMI refused for an unknown target leaves in a row.
UNKNOWN = "OMI answered 200 user_not_found: targetEmail: no agent with email long.ly@example.vn"
# Fast, and with a receiver of its own: the options every flow test gives preview/run/execute.
FAST = ["--rate", "1000", "--listen", "127.0.0.1:0", "--wait", "10"]


def invoke(runner, *args):
    """``omi-batch ARGS`` through click's runner, exceptions not caught."""
    from omi_batch.cli import cli

    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def where(ledger_path, reports_dir) -> list[str]:
    """The ``--ledger`` and ``--reports`` options for a test's own files."""
    return ["--ledger", str(ledger_path), "--reports", str(reports_dir)]


def read_report(path: Path) -> list[dict]:
    """A report CSV's rows (UTF-8 with BOM, as omi-batch writes them)."""
    return list(csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8-sig"))))


def fail_preview(ledger_path, batch_id: str, row: int, error: str = UNKNOWN) -> None:
    """Leave ``row`` as a preview OMI refused leaves it (the ledger's own state move)."""
    with Ledger(ledger_path) as ledger:
        ledger.record_step(batch_id, row, state="preview_failed", event="preview_failed",
                           preview_error=error, conversations_previewed=None)  # fmt: skip


def transfers(sim, *, preview: bool) -> Counter:
    """Transfer requests the simulator received, previews or executes, by (source, target)."""
    sent: Counter = Counter()
    for event in sim.events:
        body = event.get("body")
        request = event["kind"] == "request" and event["path"] == TRANSFER
        if request and isinstance(body, dict) and bool(body.get("previewChanges")) == preview:
            sent[(body["sourceEmail"], body["targetEmail"])] += 1
    return sent


# A batch's rows with each scope, for the ledger's and reports' ticket tests (issue 15).
BOTH = {
    "row": 2, "source_email": "tuan.ho@example.vn", "target_email": "hanh.ngo@example.vn",
    "requested_target": "hanh.ngo@example.vn", "via": (), "conv_ids": (),
    "replace_existing_members": False, "note": "", "scope": "both",
}  # fmt: skip
TICKETS_ONLY = dict(BOTH, row=3, source_email="an.nguyen@example.vn", scope="tickets")
CONVERSATIONS = dict(BOTH, row=4, source_email="chi.le@example.vn", scope="conversations")

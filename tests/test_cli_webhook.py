"""`omi-batch webhook serve`: a real subprocess on a free port, stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest
import requests
from helpers import WEBHOOK_SECRET

from omi_batch import callbacks
from omi_batch.cli import cli
from omi_batch.config import Secret

ADDRESS = re.compile(r"^Webhook receiver listening on (http://127\.0\.0\.1:(\d+))$")


def _make_submitted_batch(ledger_path) -> str:
    from omi_batch.ledger import Ledger

    ledger = Ledger(ledger_path)
    batch = ledger.create_batch(
        source_file="departures.csv",
        source_sha256="0" * 64,
        created_by="test",
        base_url="http://127.0.0.1:9",
        options={},
        input_rows=1,
        warnings=[],
        rows=[
            {
                "row": 2,
                "source_email": "an.nguyen@example.com",
                "target_email": "binh.tran@example.com",
                "requested_target": "binh.tran@example.com",
                "via": (),
                "conv_ids": (),
                "replace_existing_members": False,
                "note": "",
            }
        ],
    )
    for state in ("previewed", "approved", "submitted"):
        fields = {"request_id": "req-2"} if state == "submitted" else {}
        ledger.record_step(batch, 2, state=state, event=f"test {state}", **fields)
    return batch


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))
    into.put(None)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_webhook_serve_takes_a_callback_and_stops_cleanly_on_a_signal(ledger_path, stop_signal):
    batch = _make_submitted_batch(ledger_path)
    env = {**os.environ, "OMI_WEBHOOK_SECRET": WEBHOOK_SECRET}
    command = [sys.executable, "-m", "omi_batch", "webhook", "serve", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--ledger", str(ledger_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    stdout: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, stdout), daemon=True).start()
    try:
        first = stdout.get(timeout=60)
        match = ADDRESS.match(first or "")
        assert match, f"unexpected first line: {first!r}"
        url = match.group(1)
        token = callbacks.token(Secret(WEBHOOK_SECRET), batch, 2, "execute")
        response = requests.post(
            f"{url}/callbacks/{batch}/2/execute",
            data=json.dumps(
                {"requestId": "req-2", "status": "SUCCESS", "payload": {"updatedRecords": 3}}
            ),
            headers={callbacks.HEADER: token},
            timeout=10,
        )
        assert (response.status_code, response.json()) == (200, {"verdict": "applied"})
        process.send_signal(stop_signal)
        exit_code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    stderr = process.stderr.read()
    assert exit_code == 0
    assert stdout.get(timeout=10) is None  # nothing after the address line
    assert f"callback batch={batch} row=2 phase=execute verdict=applied status=200" in stderr
    assert stderr.rstrip().endswith("Webhook receiver stopped.")
    assert WEBHOOK_SECRET not in stderr
    assert token not in stderr

    from omi_batch.ledger import Ledger

    row = Ledger(ledger_path).row(batch, 2)
    assert (row["state"], row["updated_records"]) == ("succeeded", 3)


def test_webhook_serve_without_the_secret_exits_3_naming_it(runner, ledger_path):
    result = runner.invoke(
        cli,
        ["webhook", "serve", "--port", "0", "--ledger", str(ledger_path)],
        env={"OMI_WEBHOOK_SECRET": None},
    )
    assert result.exit_code == 3
    assert result.output.startswith("Error: OMI_WEBHOOK_SECRET is not set")
    assert not ledger_path.exists()  # nothing was created


def test_webhook_serve_on_a_busy_port_exits_3(runner, ledger_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(
            cli,
            ["webhook", "serve", "--port", str(port), "--ledger", str(ledger_path)],
            env={"OMI_WEBHOOK_SECRET": WEBHOOK_SECRET},
        )
    assert result.exit_code == 3
    assert result.output.startswith(f"Error: cannot listen on 127.0.0.1:{port}: ")


def test_webhook_serve_help_has_an_example(runner):
    result = runner.invoke(cli, ["webhook", "serve", "--help"])
    assert result.exit_code == 0
    assert "OMI_WEBHOOK_SECRET=... omi-batch webhook serve --port 8080" in result.output

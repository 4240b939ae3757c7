"""`omi-batch webhook serve`: a real subprocess on a free port, stopped by SIGTERM."""

from __future__ import annotations

import json
import signal
import socket

import pytest
import requests
from helpers import WEBHOOK_SECRET, make_batch, webhook_serve

from omi_batch import callbacks
from omi_batch.cli import cli
from omi_batch.config import Secret
from omi_batch.ledger import Ledger


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_webhook_serve_takes_a_callback_and_stops_cleanly_on_a_signal(ledger_path, stop_signal):
    with Ledger(ledger_path) as ledger:
        batch = make_batch(ledger, rows=1)
    with webhook_serve(ledger_path) as served:
        token = callbacks.token(Secret(WEBHOOK_SECRET), batch, 2, "execute")
        response = requests.post(
            f"{served.url}/callbacks/{batch}/2/execute",
            data=json.dumps(
                {"requestId": "req-2", "status": "SUCCESS", "payload": {"updatedRecords": 3}}
            ),
            headers={callbacks.HEADER: token},
            timeout=10,
        )
        assert (response.status_code, response.json()) == (200, {"verdict": "applied"})
        exit_code = served.stop(stop_signal)
    stderr = served.stderr
    assert exit_code == 0
    assert served.lines.get(timeout=10) is None  # nothing after the address line
    assert f"callback batch={batch} row=2 phase=execute verdict=applied status=200" in stderr
    assert stderr.rstrip().endswith("Webhook receiver stopped.")
    assert WEBHOOK_SECRET not in stderr
    assert token not in stderr

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

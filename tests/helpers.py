"""Helpers shared by the tests (a module, not a fixture: tests import it by name)."""

from __future__ import annotations

import json
import time

import requests

from omi_batch import callbacks
from omi_batch.config import Secret

# Distinctive values so a test can grep every output, log, ledger and report for them.
API_KEY = "test-api-key-5b8e1f0c9d7a"
WEBHOOK_SECRET = "test-webhook-secret-c41d77a2e9"
SECRET = Secret(WEBHOOK_SECRET)
TIMEOUT = 10  # seconds, per HTTP request: a bound, not a timing assertion


def make_batch(ledger, rows: int = 3, state: str = "submitted", request_ids: bool = True) -> str:
    """A batch of ``rows`` transfers (rows 2, 3, …), each brought to ``state``; submitted rows
    get the request id ``req-<row>`` unless ``request_ids`` is false (their 202 not stored)."""
    transfers = [
        {"row": number, "source_email": f"leaver{number}@example.com",
         "target_email": f"keeper{number}@example.com",
         "requested_target": f"keeper{number}@example.com", "via": (), "conv_ids": (),
         "replace_existing_members": False, "note": ""}
        for number in range(2, rows + 2)
    ]  # fmt: skip
    batch = ledger.create_batch(source_file="departures.csv", source_sha256="0" * 64,
                                created_by="test", base_url="http://127.0.0.1:9", options={},
                                input_rows=rows, warnings=[], rows=transfers)  # fmt: skip
    path = ["previewed", "approved", "submitted", "unconfirmed"]
    for transfer in transfers:
        for step in path[: path.index(state) + 1] if state != "planned" else []:
            fields = {}
            if step == "submitted" and request_ids:
                fields = {"request_id": f"req-{transfer['row']}"}
            ledger.set_state(batch, transfer["row"], step, event=f"test {step}", **fields)
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

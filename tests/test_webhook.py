"""The webhook receiver over real loopback HTTP, writing to a real SQLite ledger."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from helpers import WEBHOOK_SECRET, make_batch, result, send

from omi_batch import callbacks
from omi_batch.config import Secret
from omi_batch.webhook import make_app, start

SECRET = Secret(WEBHOOK_SECRET)
HEADER = callbacks.HEADER
TIMEOUT = 10  # seconds, per HTTP request: a bound, not a timing assertion


# --------------------------------------------------------------------------- helpers


def url_of(server, batch: str, row: int, phase: str = "execute") -> str:
    return f"{server.url}/callbacks/{batch}/{row}/{phase}"


def token_of(batch: str, row: int, phase: str = "execute") -> str:
    return callbacks.token(SECRET, batch, row, phase)


def row_snapshot(ledger, batch: str, row: int) -> dict:
    return dict(ledger.row(batch, row))


def recorded(ledger, batch: str) -> list[dict]:
    return [dict(callback) for callback in ledger.callbacks(batch)]


# --------------------------------------------------------------------------- health


def test_healthz_says_ok_when_the_ledger_is_readable(receiver):
    response = requests.get(f"{receiver.url}/healthz", timeout=TIMEOUT)
    assert (response.status_code, response.json()) == (200, {"ok": True})
    assert response.headers["Content-Type"] == "application/json"


def test_healthz_allows_only_get_and_head(receiver):
    assert requests.head(f"{receiver.url}/healthz", timeout=TIMEOUT).status_code == 200
    response = requests.post(f"{receiver.url}/healthz", timeout=TIMEOUT)
    assert (response.status_code, response.headers["Allow"]) == (405, "GET, HEAD")


def test_start_on_port_zero_picks_a_free_port(ledger):
    with start(make_app(ledger, SECRET), "127.0.0.1", 0) as server:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}"


# --------------------------------------------------------------------------- results


def test_a_success_callback_confirms_the_row(ledger, receiver):
    batch = make_batch(ledger)
    response = send(receiver, batch, 2, result("req-2", "SUCCESS", 7))
    assert (response.status_code, response.json()) == (200, {"verdict": "applied"})
    row = ledger.row(batch, 2)
    assert (row["state"], row["updated_records"]) == ("succeeded", 7)
    assert ledger.row(batch, 3)["state"] == "submitted"
    [callback] = recorded(ledger, batch)
    assert (callback["row"], callback["phase"], callback["verdict"]) == (2, "execute", "applied")


def test_an_error_callback_fails_the_row(ledger, receiver):
    batch = make_batch(ledger)
    response = send(receiver, batch, 3, result("req-3", "ERROR", 0))
    assert (response.status_code, response.json()) == (200, {"verdict": "applied"})
    assert ledger.row(batch, 3)["state"] == "failed"


def test_a_duplicate_callback_is_answered_200_and_recorded(ledger, receiver):
    batch = make_batch(ledger)
    first = send(receiver, batch, 2, result("req-2", "SUCCESS", 7))
    after_first = row_snapshot(ledger, batch, 2)
    second = send(receiver, batch, 2, result("req-2", "SUCCESS", 7))
    assert [first.json(), second.json()] == [{"verdict": "applied"}, {"verdict": "duplicate"}]
    assert second.status_code == 200
    assert row_snapshot(ledger, batch, 2) == after_first
    assert [c["verdict"] for c in recorded(ledger, batch)] == ["applied", "duplicate"]


def test_a_different_second_result_is_kept_and_flagged_not_applied(ledger, receiver):
    batch = make_batch(ledger)
    send(receiver, batch, 2, result("req-2", "SUCCESS", 7))
    response = send(receiver, batch, 2, result("req-2", "ERROR", 0))
    assert (response.status_code, response.json()) == (200, {"verdict": "conflict"})
    row = ledger.row(batch, 2)
    assert (row["state"], row["updated_records"]) == ("succeeded", 7)
    assert [c["verdict"] for c in recorded(ledger, batch)] == ["applied", "conflict"]


def test_a_late_callback_confirms_an_unconfirmed_row(ledger, receiver):
    batch = make_batch(ledger, state="unconfirmed")
    response = send(receiver, batch, 2, result("req-2", "SUCCESS", 4))
    assert (response.status_code, response.json()) == (200, {"verdict": "late"})
    row = ledger.row(batch, 2)
    assert (row["state"], row["updated_records"]) == ("succeeded", 4)


def test_callbacks_in_any_row_order_each_land_on_their_own_row(ledger, receiver):
    batch = make_batch(ledger, rows=4)
    for number in (5, 3, 4, 2):
        response = send(receiver, batch, number, result(f"req-{number}", "SUCCESS", number))
        assert response.json() == {"verdict": "applied"}
    for number in (2, 3, 4, 5):
        row = ledger.row(batch, number)
        assert (row["state"], row["updated_records"]) == ("succeeded", number)


def test_a_callback_for_a_row_never_submitted_is_stored_not_applied(ledger, receiver):
    batch = make_batch(ledger, state="approved")
    before = row_snapshot(ledger, batch, 2)
    response = send(receiver, batch, 2, result("req-2", "SUCCESS", 7))
    assert (response.status_code, response.json()) == (200, {"verdict": "unexpected"})
    assert row_snapshot(ledger, batch, 2) == before
    assert [c["verdict"] for c in recorded(ledger, batch)] == ["unexpected"]


def test_a_preview_callback_is_stored_for_the_pipeline(ledger, receiver):
    batch = make_batch(ledger, state="planned")
    response = send(receiver, batch, 2, result("prev-2", "SUCCESS", 12), phase="preview")
    assert (response.status_code, response.json()) == (200, {"verdict": "stored"})
    [callback] = recorded(ledger, batch)
    assert (callback["phase"], callback["verdict"]) == ("preview", "stored")


def test_a_callback_behind_a_proxy_prefix_is_accepted(ledger, receiver):
    batch = make_batch(ledger)
    response = requests.post(
        f"{receiver.url}/omi/hooks/callbacks/{batch}/2/execute",
        json=result(),
        headers={HEADER: token_of(batch, 2)},
        timeout=TIMEOUT,
    )
    assert (response.status_code, response.json()) == (200, {"verdict": "applied"})


@pytest.mark.parametrize("known_batch", [True, False], ids=["unknown-row", "unknown-batch"])
def test_a_callback_for_an_unknown_transfer_is_404_and_recorded(ledger, receiver, known_batch):
    batch = make_batch(ledger) if known_batch else "20261125-000000-dead"
    row = 99 if known_batch else 2
    response = send(receiver, batch, row, result("req-x"))
    assert (response.status_code, response.json()) == (404, {"verdict": "unknown"})
    assert [(c["row"], c["verdict"]) for c in recorded(ledger, batch)] == [(row, "unknown")]


# --------------------------------------------------------------------------- refusals


def _chunks(size: int):
    """A generator body: requests sends it chunked, with no Content-Length."""
    sent = 0
    while sent < size:
        piece = min(4096, size - sent)
        sent += piece
        yield b" " * piece


REFUSALS = [
    # id, how to send (batch -> kwargs for send), status, reason
    ("no-credential", lambda b: {"body": result(), "token": None}, 401, "missing_credential"),
    ("wrong-credential", lambda b: {"body": result(), "token": "0" * 64}, 401, "bad_credential"),
    (
        "another-rows-credential",
        lambda b: {"body": result(), "token": token_of(b, 3)},
        401,
        "bad_credential",
    ),
    (
        "the-preview-credential",
        lambda b: {"body": result(), "token": token_of(b, 2, "preview")},
        401,
        "bad_credential",
    ),
    (
        "credential-of-another-secret",
        lambda b: {"body": result(), "token": callbacks.token(Secret("other"), b, 2, "execute")},
        401,
        "bad_credential",
    ),
    ("over-64-KiB", lambda b: {"body": b"{" + b" " * 65536 + b"}"}, 413, "too_large"),
    ("chunked-over-64-KiB", lambda b: {"body": _chunks(65537)}, 413, "too_large"),
    ("not-json", lambda b: {"body": b"status=SUCCESS"}, 400, "bad_json"),
    ("not-utf8", lambda b: {"body": b'{"requestId": "\xff"}'}, 400, "bad_json"),
    ("json-list", lambda b: {"body": [result()]}, 400, "bad_json"),
    ("empty-body", lambda b: {"body": b""}, 400, "bad_json"),
    ("no-requestId", lambda b: {"body": {"status": "SUCCESS"}}, 400, "no_request_id"),
    ("blank-requestId", lambda b: {"body": result(request_id=" ")}, 400, "no_request_id"),
]


@pytest.mark.parametrize(
    ("how", "status", "reason"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_a_refused_callback_changes_no_row_and_is_recorded(ledger, receiver, how, status, reason):
    batch = make_batch(ledger)
    before = [row_snapshot(ledger, batch, number) for number in (2, 3, 4)]
    kwargs = how(batch)
    body = kwargs.pop("body")
    if not isinstance(body, bytes | str | dict | list):  # a generator: sent chunked
        response = requests.post(
            url_of(receiver, batch, 2),
            data=body,
            headers={HEADER: token_of(batch, 2)},
            timeout=TIMEOUT,
        )
    else:
        response = send(receiver, batch, 2, body, **kwargs)
    assert response.status_code == status
    assert response.json() == {"verdict": f"refused:{reason}"}
    assert [row_snapshot(ledger, batch, number) for number in (2, 3, 4)] == before
    assert [(c["row"], c["verdict"]) for c in recorded(ledger, batch)] == [(2, f"refused:{reason}")]


def test_a_refused_callback_keeps_its_body_and_headers_but_no_credential(ledger, receiver):
    batch = make_batch(ledger)
    wrong = token_of(batch, 3)
    big = json.dumps({**result(), "junk": "x" * 50_000})
    assert send(receiver, batch, 2, big, token=wrong).status_code == 401
    assert send(receiver, batch, 2, b"status=SUCCESS").status_code == 400
    uncredentialed, credentialed = recorded(ledger, batch)
    assert uncredentialed["raw_body"] == big[:4096]  # anyone can send these: 4 KiB is enough
    assert credentialed["raw_body"] == "status=SUCCESS"
    assert HEADER not in uncredentialed["headers"]
    assert uncredentialed["headers"]["Content-Length"] == str(len(big))
    assert uncredentialed["remote"] == "127.0.0.1"


def test_a_good_callback_after_refusals_still_applies(ledger, receiver):
    batch = make_batch(ledger)
    assert send(receiver, batch, 2, result(), token="0" * 64).status_code == 401
    assert send(receiver, batch, 2, b"nope").status_code == 400
    response = send(receiver, batch, 2, result())
    assert (response.status_code, response.json()) == (200, {"verdict": "applied"})
    assert ledger.row(batch, 2)["state"] == "succeeded"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_a_wrong_method_on_a_callback_path_is_405_with_allow(ledger, receiver, method):
    batch = make_batch(ledger)
    before = row_snapshot(ledger, batch, 2)
    response = requests.request(
        method, url_of(receiver, batch, 2), headers={HEADER: token_of(batch, 2)}, timeout=TIMEOUT
    )
    assert (response.status_code, response.headers["Allow"]) == (405, "POST")
    assert response.json() == {"verdict": "refused:method"}
    assert row_snapshot(ledger, batch, 2) == before
    assert [c["verdict"] for c in recorded(ledger, batch)] == ["refused:method"]


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/callbacks",
        "/callbacks/{batch}/2",
        "/callbacks/{batch}/two/execute",
        "/callbacks/{batch}/2/transfer",
        "/callbacks/{batch}/2/execute/extra",
        "/callbacks/../../etc/passwd/2/execute",
    ],
)
def test_a_path_that_is_not_a_callback_path_is_404_and_not_recorded(ledger, receiver, path):
    batch = make_batch(ledger)
    response = requests.post(
        receiver.url + path.format(batch=batch),
        json=result(),
        headers={HEADER: token_of(batch, 2)},
        timeout=TIMEOUT,
    )
    assert (response.status_code, response.json()) == (404, {"error": "not found"})
    assert recorded(ledger, batch) == []
    assert ledger.row(batch, 2)["state"] == "submitted"


# --------------------------------------------------------------------------- load and failure


def test_concurrent_callbacks_for_200_rows_from_16_threads_are_all_applied(ledger, receiver):
    batch = make_batch(ledger, rows=200)
    numbers = list(range(2, 202))

    def deliver(number: int) -> tuple[int, int, str]:
        with requests.Session() as session:
            response = session.post(
                url_of(receiver, batch, number),
                json=result(f"req-{number}", "SUCCESS", number),
                headers={HEADER: token_of(batch, number)},
                timeout=30,
            )
        return number, response.status_code, response.json()["verdict"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(deliver, numbers))
    assert answers == [(number, 200, "applied") for number in numbers]
    rows = {row["row"]: row for row in ledger.rows(batch)}
    assert {n: (rows[n]["state"], rows[n]["updated_records"]) for n in numbers} == {
        n: ("succeeded", n) for n in numbers
    }
    assert len(recorded(ledger, batch)) == 200


def _raw_request(batch: str, row: int, body: bytes) -> bytes:
    return (
        f"POST /callbacks/{batch}/{row}/execute HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{HEADER}: {token_of(batch, row)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    for _ in range(1000):  # bounded: the server closes after one answer
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    return data


def test_a_slow_client_sending_byte_by_byte_does_not_block_others(ledger):
    batch = make_batch(ledger)
    # One worker thread: if the slow client held it, the other callback could not be answered.
    with (
        start(make_app(ledger, SECRET), "127.0.0.1", 0, threads=1) as server,
        socket.create_connection((server.host, server.port), timeout=TIMEOUT) as slow,
    ):
        request = _raw_request(batch, 2, json.dumps(result("req-2")).encode())
        half = len(request) - 20  # the headers and part of the body
        for byte in request[:half]:
            slow.sendall(bytes([byte]))
        other = send(server, batch, 3, result("req-3"))
        assert (other.status_code, other.json()) == (200, {"verdict": "applied"})
        assert ledger.row(batch, 2)["state"] == "submitted"  # the slow one is still arriving
        for byte in request[half:]:
            slow.sendall(bytes([byte]))
        answer = _read_response(slow)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b'{"verdict": "applied"}')
    assert ledger.row(batch, 2)["state"] == "succeeded"


def test_stop_finishes_a_request_in_flight(ledger):
    batch = make_batch(ledger)
    server = start(make_app(ledger, SECRET), "127.0.0.1", 0)
    slow = socket.create_connection((server.host, server.port), timeout=TIMEOUT)
    request = _raw_request(batch, 2, json.dumps(result("req-2")).encode())
    slow.sendall(request[:-10])
    # the server must have seen the partial request before stop() is asked for
    assert requests.get(f"{server.url}/healthz", timeout=TIMEOUT).status_code == 200
    stopping = threading.Thread(target=server.stop)
    stopping.start()
    slow.sendall(request[-10:])
    answer = _read_response(slow)
    slow.close()
    stopping.join(30)
    assert not stopping.is_alive()
    assert answer.endswith(b'{"verdict": "applied"}')
    assert ledger.row(batch, 2)["state"] == "succeeded"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/healthz", timeout=TIMEOUT)


def _refuse_all_writes(path) -> None:
    """Make the ledger file refuse every write, the way a broken or read-only ledger would:
    a trigger on each table aborts any INSERT or UPDATE (works even for root, unlike chmod)."""
    import sqlite3

    connection = sqlite3.connect(path, timeout=10)
    tables = [
        name
        for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    with connection:
        for table in tables:
            for action in ("INSERT", "UPDATE", "DELETE"):
                connection.execute(
                    f'CREATE TRIGGER "refuse_{action}_{table}" BEFORE {action} ON "{table}" '
                    "BEGIN SELECT RAISE(ABORT, 'ledger is read-only'); END"
                )
    connection.close()


def test_an_unwritable_ledger_and_spool_answer_503_so_omi_may_retry(ledger, ledger_path, caplog):
    from omi_batch.spool import Spool

    batch = make_batch(ledger)
    before = row_snapshot(ledger, batch, 2)
    _refuse_all_writes(ledger_path)
    nowhere = Spool(ledger_path.parent / "missing" / "ledger.db.spool")
    app = make_app(ledger, SECRET, spool=nowhere)
    with start(app, "127.0.0.1", 0) as server, caplog.at_level(logging.INFO, "omi_batch.webhook"):
        response = send(server, batch, 2, result())
    assert (response.status_code, response.json()) == (503, {"verdict": "error"})
    assert response.headers["Retry-After"] == "5"
    assert row_snapshot(ledger, batch, 2) == before
    assert recorded(ledger, batch) == []
    [line] = [
        r for r in caplog.records if r.name == "omi_batch.webhook" and r.levelno >= logging.ERROR
    ]
    assert f"batch={batch} row=2 phase=execute verdict=error status=503" in line.getMessage()


def test_a_ledger_locked_too_long_keeps_the_callback_in_the_spool_and_applies_it_later(
    ledger, ledger_path, caplog
):
    import sqlite3

    batch = make_batch(ledger)
    with start(make_app(ledger, SECRET, answer_within=0.3), "127.0.0.1", 0) as server:
        blocker = sqlite3.connect(ledger_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the ledger's write lock
        try:
            with caplog.at_level(logging.INFO, logger="omi_batch.webhook"):
                response = send(server, batch, 2, result())
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert (response.status_code, response.json()) == (200, {"verdict": "spooled"})
        for _ in range(400):  # bounded wait for the background write
            if ledger.row(batch, 2)["state"] == "succeeded":
                break
            time.sleep(0.05)
        assert ledger.row(batch, 2)["state"] == "succeeded"
        retry = send(server, batch, 2, result())
        # Answered at once as a duplicate, or spooled again when the ledger is slower than
        # answer_within on a loaded machine: either way it is stored once and changes nothing.
        assert retry.status_code == 200
        assert retry.json()["verdict"] in ("duplicate", "spooled")
        for _ in range(400):  # bounded wait for a spooled retry to be written
            if len(recorded(ledger, batch)) == 2:
                break
            time.sleep(0.05)
    assert [c["verdict"] for c in recorded(ledger, batch)] == ["applied", "duplicate"]
    assert ledger.row(batch, 2)["state"] == "succeeded"


# --------------------------------------------------------------------------- log and secrets


def test_one_log_line_per_callback_without_secrets(ledger, ledger_path, receiver, caplog):
    batch = make_batch(ledger)
    with caplog.at_level(logging.DEBUG, logger="omi_batch.webhook"):
        send(receiver, batch, 2, result())
        send(receiver, batch, 2, result())
        send(receiver, batch, 3, result(), token=token_of(batch, 2))
        send(receiver, batch, 4, b"{", headers={"Authorization": "Bearer " + WEBHOOK_SECRET})
    lines = [r.getMessage() for r in caplog.records if r.name == "omi_batch.webhook"]
    assert [line.rsplit(" ms=", 1)[0] for line in lines] == [
        f"callback batch={batch} row=2 phase=execute verdict=applied status=200",
        f"callback batch={batch} row=2 phase=execute verdict=duplicate status=200",
        f"callback batch={batch} row=3 phase=execute verdict=refused:bad_credential status=401",
        f"callback batch={batch} row=4 phase=execute verdict=refused:bad_json status=400",
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "omi_batch.webhook")
    secrets = [WEBHOOK_SECRET, *(token_of(batch, n) for n in (2, 3, 4))]
    for secret in secrets:
        assert secret not in caplog.text
    ledger_bytes = b"".join(
        path.read_bytes()
        for path in ledger_path.parent.iterdir()
        if path.name.startswith(ledger_path.name)
    )
    for secret in secrets:
        assert secret.encode() not in ledger_bytes
    headers = [c.get("headers") for c in recorded(ledger, batch)]
    assert headers and all(HEADER.lower() not in json.dumps(h).lower() for h in headers)


def test_the_app_and_server_reprs_show_no_secret(ledger, receiver):
    app = make_app(ledger, SECRET)
    assert WEBHOOK_SECRET not in repr(app)
    assert WEBHOOK_SECRET not in repr(receiver)


# --------------------------------------------------------------------------- group commit (issue 6)


def test_each_result_delivered_twice_at_once_is_applied_once_and_a_duplicate_once(ledger, receiver):
    batch = make_batch(ledger, rows=60)
    deliveries = [number for number in range(2, 62) for _ in range(2)]

    def deliver(number: int) -> tuple[int, int, str]:
        response = send(receiver, batch, number, result(f"req-{number}", "SUCCESS", number))
        return number, response.status_code, response.json()["verdict"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(deliver, deliveries))

    assert sorted(answers) == sorted(
        (number, 200, verdict) for number in range(2, 62) for verdict in ("applied", "duplicate")
    )
    assert {row["state"] for row in ledger.rows(batch)} == {"succeeded"}
    assert len(recorded(ledger, batch)) == 120
    assert ledger.verify().ok


class CountingLedger:
    """A wrapper that adds work around the callbacks' writes (as the in-process receiver's
    NotifyingLedger wakes the pipeline): it wraps receive_callback and receive_callbacks, the
    two the receiver stores through, and passes everything else on."""

    def __init__(self, ledger):
        self._ledger = ledger
        self.calls = 0
        self._lock = threading.Lock()

    def receive_callback(self, **callback):
        with self._lock:
            self.calls += 1
        return self._ledger.receive_callback(**callback)

    def receive_callbacks(self, received):
        with self._lock:
            self.calls += len(received)
        return self._ledger.receive_callbacks(received)

    def __getattr__(self, name):
        return getattr(self._ledger, name)


def test_a_wrapped_ledger_sees_every_callback_through_its_own_writes(ledger):
    batch = make_batch(ledger, rows=48)
    wrapped = CountingLedger(ledger)
    app = make_app(wrapped, SECRET)
    with start(app, "127.0.0.1", 0) as server, ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(
            pool.map(lambda n: send(server, batch, n, result(f"req-{n}")).status_code, range(2, 50))
        )
    assert answers == [200] * 48
    assert wrapped.calls == 48
    assert {row["state"] for row in ledger.rows(batch)} == {"succeeded"}


def test_a_large_answer_is_sent_whole(ledger):
    """The receiver's server stops polling a channel whose worker is sending its own answer;
    an answer bigger than waitress's buffers still arrives whole."""
    chunk = bytes(range(256)) * 256  # 64 KiB
    count = 384  # 24 MiB: past waitress's 16 MiB high watermark

    def big(environ, start_response):
        start_response("200 OK", [("Content-Length", str(len(chunk) * count))])
        return (chunk for _ in range(count))

    with start(big, "127.0.0.1", 0) as server:
        response = requests.get(f"{server.url}/big", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.content == chunk * count

"""The API key never shows: not in a repr, an exception, a log record, an Attempt or a result,
whatever OMI answers (even an answer that echoes the key back)."""

from __future__ import annotations

import logging
import pickle
import random
import re
import socket

import pytest
from helpers import API_KEY

from omi_batch.client import Attempt, AuthError, OmiClient, RetryPolicy
from omi_batch.config import Secret
from omi_batch.errors import OmiBatchError


class Sleeps:
    def __init__(self):
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def envelope(payload=None, status_code=9999, message=None) -> dict:
    body = {"instance_id": "sim", "payload": payload, "status_code": status_code}
    if message is not None:
        body["message"] = message
    return body


ANSWERS = [
    {"status": 200, "body": envelope({"updatedRecords": 3, "requestId": "r-1"})},
    {"status": 202, "body": envelope({"requestId": "r-2"})},
    {"status": 401, "body": envelope(None, -9999, "api_key_invalid")},
    {"status": 403, "body": f"forbidden for key {API_KEY}"},
    {"status": 200, "body": envelope({"error": f"bad key {API_KEY}"}, -9999, API_KEY)},
    {"status": 200, "body": envelope({"message": f"x-api-key: {API_KEY}"}, -9999)},
    {"status": 500, "body": f"<pre>headers: x-api-key={API_KEY}</pre>"},
    {"status": 429, "body": envelope(None, -9999, f"rate_limit_exceeded {API_KEY}")},
    {"status": 302, "body": "", "headers": {"Location": f"http://127.0.0.1/?k={API_KEY}"}},
    {"status": 200, "body": envelope({"updatedRecords": f"{API_KEY}"})},
    {"reset": True},
    {"status": 200, "body": envelope({"updatedRecords": 1}), "delay": 1.0},
]


def leaks(text: str) -> bool:
    return API_KEY in text


def test_the_key_shows_nowhere(simulator, caplog):
    sim, server = simulator
    attempts: list[Attempt] = []
    errors: list[OmiBatchError] = []
    results = []
    client = OmiClient(
        server.url,
        Secret(API_KEY),
        timeout=0.3,
        retry=RetryPolicy(max_attempts=1, rate_limit_total=0),
        on_attempt=attempts.append,
        sleep=Sleeps(),
        rng=random.Random(1),
    )
    with caplog.at_level(logging.DEBUG):
        for answer in ANSWERS:
            sim.script(answer)
            try:
                results.append(
                    client.transfer_conversations(
                        "a@example.com", "b@example.com", preview=True, context={"row": 2}
                    )
                )
            except OmiBatchError as exc:
                errors.append(exc)
        client.close()

    assert len(attempts) == len(ANSWERS)
    assert len(results) == 2 and len(errors) == len(ANSWERS) - 2
    assert not leaks(repr(client)) and not leaks(str(client))
    assert repr(client) == f"OmiClient(base_url={server.url!r})"
    for error in errors:
        assert not leaks(str(error)), str(error)
        assert not leaks(repr(error)), repr(error)
        assert not leaks(repr(vars(error)))
        assert not leaks(repr(error.args))
    for attempt in attempts:
        assert not leaks(repr(attempt)), repr(attempt)
    for result in results:
        assert not leaks(repr(result))
    records = caplog.records
    assert any(r.name == "omi_batch.client" for r in records)
    for record in records:
        assert not leaks(record.getMessage()), record.getMessage()
        assert not leaks(repr(record.args))
    # The server did see the key (the requests were authentic) but never logs it either.
    assert not any(leaks(repr(event)) for event in sim.events)


def test_the_echoed_key_is_replaced_by_stars(simulator):
    sim, server = simulator
    sim.script({"status": 500, "body": f"x-api-key={API_KEY}"})
    with (
        OmiClient(server.url, Secret(API_KEY), retry=RetryPolicy(max_attempts=1)) as client,
        pytest.raises(OmiBatchError) as caught,
    ):
        client.transfer_conversations("a@x.vn", "b@x.vn", preview=True)
    assert str(caught.value) == "OMI answered 500 not_json: answer is not JSON: x-api-key=***"


def test_an_unreachable_host_names_no_key(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    attempts: list[Attempt] = []
    with (
        caplog.at_level(logging.DEBUG),
        OmiClient(
            f"http://127.0.0.1:{port}",
            Secret(API_KEY),
            retry=RetryPolicy(max_attempts=2, base=0.01, max_wait=0.01),
            on_attempt=attempts.append,
            sleep=Sleeps(),
        ) as client,
        pytest.raises(OmiBatchError) as caught,
    ):
        client.transfer_conversations("a@x.vn", "b@x.vn", preview=False)
    assert not leaks(str(caught.value)) and not leaks(repr(caught.value))
    assert len(attempts) == 2 and not any(leaks(repr(a)) for a in attempts)
    assert not any(leaks(r.getMessage()) for r in caplog.records)


def test_a_client_cannot_be_pickled_with_its_key():
    client = OmiClient("http://127.0.0.1:9", Secret(API_KEY))
    try:
        with pytest.raises(TypeError):
            pickle.dumps(client)
    finally:
        client.close()


def test_the_key_in_the_token_request_shows_nowhere(make_simulator, caplog):
    """``GET /api/auth?apiKey=KEY`` carries the key in its URL: not in a log line (urllib3's
    own debug lines included), an exception, an attempt; nor the token."""
    sim, server = make_simulator(auth="bearer", refuse_token_after=1)
    attempts: list[Attempt] = []
    errors: list[OmiBatchError] = []
    with (
        caplog.at_level(logging.DEBUG),
        OmiClient(
            server.url, Secret(API_KEY), auth="bearer", on_attempt=attempts.append, sleep=Sleeps()
        ) as client,  # fmt: skip
    ):
        client.transfer_conversations(
            "lan.nguyen@example.vn", "minh.tran@example.vn", preview=False
        )
        token = client.transport._token.value
        sim.expire_tokens()
        try:
            client.transfer_conversations(
                "lan.nguyen@example.vn", "minh.tran@example.vn", preview=True
            )
        except OmiBatchError as exc:
            errors.append(exc)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        caplog.at_level(logging.DEBUG),
        OmiClient(
            f"http://127.0.0.1:{port}",
            Secret(API_KEY),
            auth="bearer",
            retry=RetryPolicy(max_attempts=2, base=0.01, max_wait=0.01),
            on_attempt=attempts.append,
            sleep=Sleeps(),
        ) as client,  # fmt: skip
    ):
        try:
            client.transfer_conversations(
                "lan.nguyen@example.vn", "minh.tran@example.vn", preview=True
            )
        except OmiBatchError as exc:
            errors.append(exc)
    assert len(errors) == 2 and errors[0].exit_code == 3 and errors[1].code == "connection_refused"
    assert any(a.endpoint == "/api/auth" for a in attempts)
    assert any("/api/auth" in r.getMessage() for r in caplog.records)  # urllib3 logged it
    for secret in (API_KEY, token):
        for error in errors:
            seen = [str(error), repr(error), repr(vars(error)), repr(error.args)]
            seen.append(repr(error.__cause__) + repr(error.__context__))
            assert not any(secret in text for text in seen), seen
        for attempt in attempts:
            assert secret not in repr(attempt)
        for record in caplog.records:
            assert secret not in record.getMessage() and secret not in repr(record.args)
        assert not any(secret in repr(event) for event in sim.events)


@pytest.mark.parametrize("spelling", ["quote", "quote_plus", "lower-case hex"])
def test_the_key_echoed_url_encoded_shows_nowhere(make_simulator, spelling):
    # The key travels in /api/auth's query string; OMI echoing the request quotes it encoded.
    from urllib.parse import quote, quote_plus

    key = "k3y+/=abcDEF-with-url-signs"
    encoded = {"quote": quote(key, safe=""), "quote_plus": quote_plus(key),
               "lower-case hex": re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(key, safe=""))}[
        spelling
    ]  # fmt: skip
    sim, server = make_simulator(auth="bearer", api_key=key)
    body = {"status_code": -9999, "message": "api_key_invalid",
            "payload": {"message": f"no such key in /api/auth?apiKey={encoded}"}}  # fmt: skip
    sim.script({"status": 401, "body": body})
    with (
        OmiClient(server.url, Secret(key), auth="bearer") as client,
        pytest.raises(AuthError) as caught,
    ):
        client.transfer_conversations("lan.nguyen@example.vn", "minh.tran@example.vn",
                                      preview=True)  # fmt: skip
    text = str(caught.value)
    assert "no such key in /api/auth?apiKey=***" in text, text
    assert encoded not in text and key not in text

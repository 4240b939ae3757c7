"""The OMI client over real loopback HTTP against the simulator: every endpoint, the envelope,
every error class, retries (waits recorded by an injected sleep), the attempt hook."""

from __future__ import annotations

import email.utils
import random
import socket
import threading
from datetime import UTC, datetime, timedelta

import pytest
from helpers import API_KEY

from omi_batch.client import (
    TRANSFER_PATH,
    ApiError,
    Attempt,
    AuthError,
    OmiClient,
    RateLimited,
    RetryPolicy,
    ServerError,
    TransferResult,
    TransportError,
)
from omi_batch.config import Secret
from omi_batch.errors import ConfigError, OmiBatchError

NOBODY = "nobody-here@example.com"


def envelope(payload=None, status_code=9999, message=None) -> dict:
    body = {
        "instance_id": "sim",
        "payload": payload,
        "instance_version": "sim-1",
        "key_enabled": True,
        "status_code": status_code,
    }
    if message is not None:
        body["message"] = message
    return body


def failure(message=None, payload=None) -> dict:
    return envelope(payload, -9999, message)


class Sleeps:
    """An injected sleep: records every wait, never waits."""

    def __init__(self):
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class Ceiling(random.Random):
    """Jitter that always takes the top of its range, so caps can be asserted exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def attempts() -> list[Attempt]:
    return []


@pytest.fixture
def make_client(simulator, sleeps, attempts):
    """Clients on the running simulator; closed at the end of the test."""
    _, server = simulator
    made = []

    def make(**options) -> OmiClient:
        options.setdefault("sleep", sleeps)
        options.setdefault("rng", random.Random(7))
        options.setdefault("on_attempt", attempts.append)
        client = OmiClient(options.pop("base_url", server.url), Secret(API_KEY), **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client) -> OmiClient:
    return make_client()


@pytest.fixture
def sim(simulator):
    return simulator[0]


def api_requests(sim) -> list[dict]:
    return [e for e in sim.events if e["kind"] == "request"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- success


@pytest.mark.parametrize("field", ["updatedRecords", "totalRecords", "total", "count", "number"])
def test_preview_reads_the_count_wherever_omi_puts_it(make_simulator, field):
    sim, server = make_simulator(preview_field=field)
    source, target = sim.moving_pair()
    expected = sim.count(source, target)
    with OmiClient(server.url, Secret(API_KEY), sleep=Sleeps()) as client:
        result = client.transfer_conversations(source, target, preview=True)
    assert result.count == expected
    assert result.http_status == 200
    assert result.envelope["status_code"] == 9999
    if field == "number":
        assert result.envelope["payload"] == expected
        assert result.request_id is None
    else:
        assert result.request_id == result.envelope["payload"]["requestId"]
    assert sim.count(source, target) == expected  # a preview changes nothing


def test_async_preview_returns_only_a_request_id(make_simulator):
    sim, server = make_simulator(preview_mode="async")
    source, target = sim.moving_pair()
    with OmiClient(server.url, Secret(API_KEY)) as client:
        result = client.transfer_conversations(source, target, preview=True)
    assert result.count is None
    assert result.http_status == 202
    assert result.request_id and result.request_id == result.envelope["payload"]["requestId"]


@pytest.mark.parametrize(
    ("payload", "count"),
    [
        ({"updatedRecords": 4, "requestId": "r-1"}, 4),
        ({"totalRecords": 5}, 5),
        ({"total": 0}, 0),
        ({"count": 6}, 6),
        ({"updatedRecords": None, "total": 3}, 3),
        ({"updatedRecords": 0, "totalRecords": 5}, 5),  # they differ: the largest
        ({"total": 7, "count": 2}, 7),
        ({"updatedRecords": 3, "total": "3"}, 3),  # a good one beside one that is not: the good
        (9, 9),
        ({"requestId": "r-2"}, None),
        (None, None),
    ],
)
def test_every_count_variant(client, sim, payload, count):
    sim.script({"status": 200, "body": envelope(payload)})
    result = client.transfer_conversations("a@example.com", "b@example.com", preview=True)
    assert result == TransferResult(
        request_id=payload.get("requestId") if isinstance(payload, dict) else None,
        count=count,
        http_status=200,
        envelope=envelope(payload),
    )


@pytest.mark.parametrize(
    ("payload", "shown"),
    [
        ({"updatedRecords": -1}, "-1"),
        ({"count": 2.5}, "2.5"),
        ({"total": "many"}, '"many"'),
        ({"total": "-3"}, '"-3"'),
        ({"updatedRecords": True}, "true"),
        ({"updatedRecords": "12"}, '"12"'),
        ({"updatedRecords": 7.0}, "7.0"),
        ("15", '"15"'),
        (-4, "-4"),
    ],
)
def test_a_bad_count_is_an_api_error(client, sim, attempts, payload, shown):
    sim.script({"status": 200, "body": envelope(payload)})
    with pytest.raises(ApiError) as caught:
        client.transfer_conversations("a@example.com", "b@example.com", preview=True)
    error = caught.value
    assert type(error) is ApiError
    assert (error.http_status, error.code, error.retryable) == (200, "bad_count", False)
    assert (
        str(error) == f"OMI answered 200 bad_count: the count is not a whole number >= 0: {shown}"
    )
    assert [(a.http_status, a.error, a.vendor_code) for a in attempts] == [
        (200, "api", "bad_count")
    ]


@pytest.mark.parametrize("key", ["requestId", "request_id", "RequestId", "requestID"])
def test_an_execute_answer_gives_its_request_id_under_any_spelling(client, sim, attempts, key):
    sim.script({"status": 202, "body": envelope({key: "req-5"})})
    result = client.transfer_conversations("a@example.com", "b@example.com", preview=False)
    assert result.request_id == "req-5"
    assert [a.request_id for a in attempts] == ["req-5"]


@pytest.mark.parametrize("payload", [{"count": "n/a"}, {"total": -1}, {"updatedRecords": 2.5}])
@pytest.mark.parametrize("kind", ["conversations", "tickets"])
def test_an_execute_answer_is_read_for_its_request_id_whatever_count_it_carries(
    client, sim, payload, kind
):
    """OMI accepted the transfer (202 and its requestId): a count-like field it also sent is
    no reason to call the row failed, as it is for a preview."""
    sim.script({"status": 202, "body": envelope({"requestId": "req-7", **payload})})
    send = client.transfer_tickets if kind == "tickets" else client.transfer_conversations
    result = send("a@example.com", "b@example.com", preview=False)
    assert (result.request_id, result.count, result.http_status) == ("req-7", None, 202)
    sim.script({"status": 200, "body": envelope({"requestId": "req-8", **payload})})
    with pytest.raises(ApiError) as caught:
        send("a@example.com", "b@example.com", preview=True)
    assert caught.value.code == "bad_count"


def test_execute_answers_202_and_applies_the_transfer(client, sim):
    source, target = sim.moving_pair()
    before = sim.count(source, target)
    result = client.transfer_conversations(source, target, preview=False)
    assert (result.http_status, result.count) == (202, None)
    assert result.request_id == result.envelope["payload"]["requestId"]
    # The simulator applies in the background; a preview of the same transfer then counts 0.
    for _ in range(200):
        if sim.count(source, target) == 0:
            break
        threading.Event().wait(0.02)
    assert before > 0
    assert sim.count(source, target) == 0
    again = client.transfer_conversations(source, target, preview=True)
    assert again.count == 0


def test_the_transfer_body_has_exactly_the_fields_given(client, sim):
    sim.script(
        {"status": 200, "body": envelope({"updatedRecords": 1})},
        {"status": 202, "body": envelope({"requestId": "r-9"})},
    )
    client.transfer_conversations("a@example.com", "b@example.com", preview=True)
    callback = {"url": "http://127.0.0.1:9/callbacks/b1/2/execute", "headers": {"X-T": "t"}}
    client.transfer_conversations(
        "a@example.com",
        "b@example.com",
        preview=False,
        replace_existing_members=True,
        conv_ids=["c1", "c2"],
        callback=callback,
    )
    first, second = api_requests(sim)
    assert (first["method"], first["path"]) == ("POST", TRANSFER_PATH)
    assert first["body"] == {
        "sourceEmail": "a@example.com",
        "targetEmail": "b@example.com",
        "previewChanges": True,
        "replaceExistingMembers": False,
    }
    assert second["body"] == {
        "sourceEmail": "a@example.com",
        "targetEmail": "b@example.com",
        "previewChanges": False,
        "replaceExistingMembers": True,
        "convIds": ["c1", "c2"],
        "callbackResultConfig": callback,
    }


def test_conv_ids_limit_the_preview(client, sim):
    source, target = sim.moving_pair()
    mine = [c["id"] for c in sim.conversations if source in c["members"]]
    one = mine[:1]
    result = client.transfer_conversations(source, target, preview=True, conv_ids=one)
    assert result.count == sim.count(source, target, conv_ids=one)


def test_new_room_then_message_then_list(client, sim, attempts):
    guest = {"phone": "0901234567", "full_name": "Nguyễn Văn Khách", "domain": "example.vn"}
    room = client.new_room(uuid="guest-1", guest_info=guest, context={"phase": "demo"})
    conversation = room["conversation"]
    assert (conversation["uuid"], conversation["guest_info"]) == ("guest-1", guest)
    message = client.guest_send_message(uuid="guest-1", content="Xin chào")
    assert (message["content"], message["room_id"], message["conv_uuid"]) == (
        "Xin chào",
        conversation["_id"],
        "guest-1",
    )
    listed = client.list_messages(conversation["_id"])
    assert [m["_id"] for m in listed] == [message["_id"]]
    requests_seen = api_requests(sim)
    assert [(e["path"], e["status"]) for e in requests_seen] == [
        ("/api/social/livetalk/new_room", 200),
        ("/api/social/livetalk/guest_send_message", 200),
        ("/api/social/message/list", 200),
    ]
    assert requests_seen[0]["body"] == {"uuid": "guest-1", "guest_info": guest}
    assert requests_seen[1]["body"] == {"uuid": "guest-1", "content": "Xin chào"}
    assert [(a.number, a.error, a.context) for a in attempts] == [(1, None, {"phase": "demo"})] + [
        (1, None, {})
    ] * 2


def test_an_unknown_conversation_is_resource_not_found(client):
    with pytest.raises(ApiError) as caught:
        client.list_messages("no-such-conversation")
    assert (caught.value.http_status, caught.value.code) == (200, "resource_not_found")


def test_list_messages_sends_page_and_size(client, sim):
    client.new_room(uuid="guest-2", guest_info={"full_name": "Lê Khách"})
    for text in ("một", "hai", "ba"):
        client.guest_send_message(uuid="guest-2", content=text)
    newest_two = client.list_messages("guest-2", page=1, size=2)
    oldest = client.list_messages("guest-2", page=2, size=2)
    assert [m["content"] for m in newest_two] == ["ba", "hai"]
    assert [m["content"] for m in oldest] == ["một"]
    assert api_requests(sim)[-1]["body"] == {"conv_id": "guest-2"}


# --------------------------------------------------------------------------- errors


BAD_ANSWERS = [
    # (answer, class, code, what the message says after "OMI answered <status> <code>")
    ({"status": 401, "body": failure("api_key_is_required")}, AuthError, "api_key_is_required",
     ": OMI saw no API key: the key was sent in the x-api-key header; if this OMI wants a "
     "Bearer token instead, set OMI_AUTH=bearer"),
    ({"status": 403, "body": failure("permission_denied")}, AuthError, "permission_denied",
     ": the API key may not do this (check its rights in the OMI web app)"),
    ({"status": 403, "body": "Forbidden"}, AuthError, "not_json",
     ": answer is not JSON: Forbidden"),
    ({"status": 200, "body": failure("token_expired")}, AuthError, "token_expired",
     ": the credential has expired"),
    ({"status": 200, "body": failure("auth_invalid")}, AuthError, "auth_invalid",
     ": the credential was not accepted"),
    ({"status": 200, "body": failure(payload={"error": "source_email_required"})}, ApiError,
     "source_email_required", ""),
    ({"status": 200, "body": failure(payload={"message": "Không tìm thấy"})}, ApiError,
     "Không tìm thấy", ""),
    ({"status": 200, "body": failure("user_not_found", {"error": "target agent not found: x@y.vn"})},
     ApiError, "user_not_found", ": target agent not found: x@y.vn"),
    ({"status": 200, "body": envelope({"updatedRecords": 1}, status_code=0)}, ApiError,
     "status_code_0", ""),
    ({"status": 200, "body": {"payload": {"updatedRecords": 1}}}, ApiError, "bad_envelope", ""),
    ({"status": 200, "body": "<html><body>Bad\n gateway page</body></html>"}, ApiError, "not_json",
     ": answer is not JSON: <html><body>Bad gateway page</body></html>"),
    ({"status": 200, "body": b""}, ApiError, "not_json", ": answer is not JSON: (empty body)"),
    ({"status": 200, "body": "[1, 2]"}, ApiError, "bad_envelope",
     ": not an OMI envelope: [1, 2]"),
    ({"status": 400, "body": failure("request_body_required")}, ApiError,
     "request_body_required", ""),
    ({"status": 404, "body": failure("resource_not_found")}, ApiError, "resource_not_found", ""),
    ({"status": 500, "body": failure("internal_error")}, ServerError, "internal_error", ""),
    ({"status": 503, "body": "Service Unavailable"}, ServerError, "not_json",
     ": answer is not JSON: Service Unavailable"),
    ({"status": 429, "body": failure("rate_limit_exceeded"), "headers": {"Retry-After": "7"}},
     RateLimited, "rate_limit_exceeded", ""),
    ({"status": 200, "body": failure("rate_limit_exceeded")}, RateLimited,
     "rate_limit_exceeded", ""),
]  # fmt: skip


@pytest.mark.parametrize(("answer", "cls", "code", "detail"), BAD_ANSWERS)
def test_every_failure_becomes_the_right_error(make_client, sim, answer, cls, code, detail):
    client = make_client(retry=RetryPolicy(max_attempts=1, rate_limit_total=0))
    sim.script(answer)
    with pytest.raises(OmiBatchError) as caught:
        client.transfer_conversations("a@example.com", "b@example.com", preview=True)
    error = caught.value
    assert type(error) is cls
    status = answer["status"]
    message = f"OMI answered {status} {code}{detail}"
    assert (error.http_status, error.code, str(error)) == (status, code, message)
    assert error.endpoint == TRANSFER_PATH
    assert error.retryable is (cls in (ServerError, RateLimited))
    assert error.exit_code == (3 if cls is AuthError else 1)


def test_a_wrong_key_is_refused_with_exit_3(simulator):
    _, server = simulator
    with OmiClient(server.url, Secret("not-the-key")) as client, pytest.raises(AuthError) as caught:
        client.transfer_conversations("a@example.com", "b@example.com", preview=True)
    assert (caught.value.http_status, caught.value.code) == (401, "api_key_invalid")
    assert str(caught.value) == (
        "OMI answered 401 api_key_invalid: the API key was refused "
        "(check OMI_API_KEY and OMI_BASE_URL)"
    )
    assert caught.value.exit_code == 3


def test_an_unknown_agent_is_user_not_found(client, sim, sleeps):
    source, _ = sim.moving_pair()
    with pytest.raises(ApiError) as caught:
        client.transfer_conversations(source, NOBODY, preview=True)
    error = caught.value
    assert (type(error), error.http_status, error.code) == (ApiError, 200, "user_not_found")
    assert str(error) == (
        f"OMI answered 200 user_not_found: targetEmail: no agent with email {NOBODY}"
    )
    assert sleeps.waits == []
    assert len(api_requests(sim)) == 1


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [("7", 7.0, 7.0), ("0.25", 0.25, 0.25), ("-3", 0.0, 0.0), ("soon", None, None)],
)
def test_retry_after_in_seconds(make_client, sim, header, low, high):
    client = make_client(retry=RetryPolicy(rate_limit_total=0))
    sim.script({"status": 429, "body": failure(), "headers": {"Retry-After": header}})
    with pytest.raises(RateLimited) as caught:
        client.transfer_conversations("a@example.com", "b@example.com", preview=True)
    assert caught.value.code is None
    if low is None:
        assert caught.value.retry_after is None
    else:
        assert low <= caught.value.retry_after <= high


def test_retry_after_as_an_http_date(make_client, sim):
    client = make_client(retry=RetryPolicy(rate_limit_total=0))
    when = datetime.now(UTC) + timedelta(seconds=40)
    header = email.utils.format_datetime(when, usegmt=True)
    sim.script(
        {"status": 429, "body": failure("rate_limit_exceeded"), "headers": {"Retry-After": header}}
    )
    with pytest.raises(RateLimited) as caught:
        client.transfer_conversations("a@example.com", "b@example.com", preview=True)
    assert 30 <= caught.value.retry_after <= 40


def test_a_read_timeout_is_a_transport_error(make_client, sim, attempts):
    client = make_client(timeout=0.2, retry=RetryPolicy(max_attempts=1))
    sim.script({"status": 200, "body": envelope({"updatedRecords": 1}), "delay": 1.5})
    with pytest.raises(TransportError) as caught:
        client.transfer_conversations("a@example.com", "b@example.com", preview=True)
    error = caught.value
    assert (error.http_status, error.code, error.exit_code) == (None, "timeout", 3)
    assert (
        str(error) == "OMI unreachable (timeout): no answer within 0.2 s (it may have been applied)"
    )
    assert error.outcome_unknown is True
    (attempt,) = attempts
    assert (attempt.error, attempt.vendor_code, attempt.outcome_unknown) == (
        "transport",
        "timeout",
        True,
    )


def test_a_reset_connection_is_a_transport_error(make_client, sim):
    client = make_client(retry=RetryPolicy(max_attempts=1))
    sim.script({"reset": True})
    with pytest.raises(TransportError) as caught:
        client.transfer_conversations("a@example.com", "b@example.com", preview=False)
    assert caught.value.code == "connection_reset"
    assert caught.value.outcome_unknown is True
    assert str(caught.value) == (
        "OMI unreachable (connection_reset): the connection was closed without an answer "
        "(it may have been applied)"
    )


def test_a_closed_port_is_connection_refused(sleeps, attempts):
    url = f"http://127.0.0.1:{closed_port()}"
    policy = RetryPolicy(max_attempts=3, base=1.0, max_wait=5, max_total=60)
    with (
        OmiClient(
            url, Secret(API_KEY), retry=policy, sleep=sleeps, on_attempt=attempts.append
        ) as client,
        pytest.raises(TransportError) as caught,
    ):
        client.transfer_conversations("a@example.com", "b@example.com", preview=True)
    error = caught.value
    assert (error.code, error.exit_code, error.outcome_unknown) == ("connection_refused", 3, False)
    assert str(error) == "OMI unreachable (connection_refused): connection refused"
    assert [a.number for a in attempts] == [1, 2, 3]
    assert len(sleeps.waits) == 2


@pytest.mark.parametrize(
    "base_url",
    ["", "ftp://example.com", "example.com", "   "],
    ids=["empty", "ftp", "bare", "blank"],
)
def test_a_bad_base_url_is_a_config_error(base_url):
    with pytest.raises(ConfigError) as caught:
        OmiClient(base_url, Secret(API_KEY))
    assert caught.value.exit_code == 3
    assert str(caught.value).startswith("the OMI base URL must start with http:// or https://")


@pytest.mark.parametrize("key", [Secret(""), "", None])
def test_no_key_is_a_config_error(key):
    with pytest.raises(ConfigError) as caught:
        OmiClient("http://127.0.0.1:9", key)
    assert str(caught.value) == "no OMI API key given (set OMI_API_KEY)"


def test_a_plain_string_key_is_accepted_and_wrapped(simulator):
    _, server = simulator
    with OmiClient(server.url, API_KEY) as client:
        sim = simulator[0]
        sim.script({"status": 200, "body": envelope({"updatedRecords": 2})})
        assert client.transfer_conversations("a@x.vn", "b@x.vn", preview=True).count == 2


# --------------------------------------------------------------------------- retries


def test_server_errors_are_retried_with_full_jitter(make_client, sim, sleeps, attempts):
    policy = RetryPolicy(max_attempts=5, base=0.5, max_wait=30, max_total=120)
    client = make_client(retry=policy, rng=random.Random(42))
    sim.script(
        {"status": 503, "body": "busy"},
        {"status": 500, "body": failure("oops")},
        {"status": 502, "body": "bad gateway"},
        {"status": 200, "body": envelope({"updatedRecords": 3, "requestId": "r-3"})},
    )
    result = client.transfer_conversations("a@example.com", "b@example.com", preview=True)
    assert (result.count, result.request_id) == (3, "r-3")
    expected_rng = random.Random(42)
    assert sleeps.waits == [
        pytest.approx(expected_rng.uniform(0, 0.5)),
        pytest.approx(expected_rng.uniform(0, 1.0)),
        pytest.approx(expected_rng.uniform(0, 2.0)),
    ]
    assert [a.wait_s for a in attempts] == [*[pytest.approx(w) for w in sleeps.waits], None]
    assert len(api_requests(sim)) == 4


def test_jitter_stays_within_its_bounds(make_client, sim, sleeps):
    client = make_client(retry=RetryPolicy(max_attempts=6, base=1.0, max_wait=4, max_total=1000))
    sim.script(*[{"status": 500, "body": failure("down")}] * 6)
    with pytest.raises(ServerError):
        client.transfer_conversations("a@example.com", "b@example.com", preview=True)
    ceilings = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert len(sleeps.waits) == 5
    assert all(0 <= w <= c for w, c in zip(sleeps.waits, ceilings, strict=True))


def test_each_wait_is_capped(make_client, sim, sleeps):
    client = make_client(
        retry=RetryPolicy(max_attempts=5, base=10, max_wait=2.5, max_total=1000), rng=Ceiling()
    )
    sim.script(*[{"status": 503, "body": "busy"}] * 5)
    with pytest.raises(ServerError):
        client.transfer_conversations("a@example.com", "b@example.com", preview=True)
    assert sleeps.waits == [2.5, 2.5, 2.5, 2.5]


def test_retry_after_is_the_minimum_wait(make_client, sim, sleeps, attempts):
    client = make_client(retry=RetryPolicy(base=0.5, max_wait=1, max_total=100))
    sim.script(
        {"status": 429, "body": failure("rate_limit_exceeded"), "headers": {"Retry-After": "3"}},
        {"status": 429, "body": failure("rate_limit_exceeded"), "headers": {"Retry-After": "0"}},
        {"status": 200, "body": envelope({"updatedRecords": 1})},
    )
    assert client.transfer_conversations("a@x.vn", "b@x.vn", preview=True).count == 1
    assert sleeps.waits[0] == 3.0  # above max_wait: Retry-After wins
    assert 0 <= sleeps.waits[1] <= 1.0
    assert [(a.http_status, a.error) for a in attempts] == [
        (429, "rate_limited"),
        (429, "rate_limited"),
        (200, None),
    ]


def test_retry_after_as_a_date_is_honoured(make_client, sim, sleeps):
    client = make_client(retry=RetryPolicy(base=0.1, max_wait=1, max_total=100))
    header = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    sim.script(
        {"status": 429, "body": "slow down", "headers": {"Retry-After": header}},
        {"status": 200, "body": envelope({"updatedRecords": 1})},
    )
    client.transfer_conversations("a@x.vn", "b@x.vn", preview=True)
    (wait,) = sleeps.waits
    assert 10 <= wait <= 20


def test_a_rate_limit_fails_the_call_only_after_its_own_total(make_client, sim, sleeps, attempts):
    policy = RetryPolicy(max_attempts=2, base=0.1, max_wait=1, max_total=1, rate_limit_total=10)
    client = make_client(retry=policy)
    sim.script(
        *[{"status": 429, "body": failure("rate_limit_exceeded"), "headers": {"Retry-After": "4"}}]
        * 10
    )
    with pytest.raises(RateLimited) as caught:
        client.transfer_conversations("a@x.vn", "b@x.vn", preview=True)
    assert caught.value.retry_after == 4.0
    assert sleeps.waits == [4.0, 4.0]  # a third wait would pass 10 s in all
    assert len(api_requests(sim)) == 3
    assert [a.wait_s for a in attempts] == [4.0, 4.0, None]


def test_retry_after_beyond_the_total_cap_gives_up_at_once(make_client, sim, sleeps):
    client = make_client(retry=RetryPolicy(rate_limit_total=60))
    sim.script({"status": 429, "body": "later", "headers": {"Retry-After": "600"}})
    with pytest.raises(RateLimited) as caught:
        client.transfer_conversations("a@x.vn", "b@x.vn", preview=True)
    assert caught.value.retry_after == 600.0
    assert sleeps.waits == []
    assert len(api_requests(sim)) == 1


def test_after_the_last_attempt_the_last_error_is_raised(make_client, sim, sleeps, attempts):
    client = make_client(retry=RetryPolicy(max_attempts=3, base=0.1, max_wait=1, max_total=100))
    sim.script(
        {"status": 500, "body": failure("first")},
        {"status": 503, "body": failure("second")},
        {"status": 502, "body": failure("third")},
        {"status": 200, "body": envelope({"updatedRecords": 1})},  # never reached
    )
    with pytest.raises(ServerError) as caught:
        client.transfer_conversations("a@x.vn", "b@x.vn", preview=True)
    assert (caught.value.http_status, caught.value.code) == (502, "third")
    assert [a.vendor_code for a in attempts] == ["first", "second", "third"]
    assert len(sleeps.waits) == 2


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 400, "body": failure("request_body_required")},
        {"status": 401, "body": failure("api_key_invalid")},
        {"status": 403, "body": failure("permission_denied")},
        {"status": 404, "body": "no such page"},
        {"status": 409, "body": failure("conflict")},
        {"status": 200, "body": failure("user_not_found", {"error": "source"})},
        {"status": 200, "body": "not json"},
    ],
    ids=["400", "401", "403", "404", "409", "user_not_found", "not_json"],
)
def test_client_errors_are_never_retried(make_client, sim, sleeps, attempts, answer):
    client = make_client()
    sim.script(answer, {"status": 200, "body": envelope({"updatedRecords": 1})})
    with pytest.raises(ApiError) as caught:
        client.transfer_conversations("a@x.vn", "b@x.vn", preview=True)
    assert caught.value.retryable is False
    assert sleeps.waits == []
    assert len(api_requests(sim)) == 1
    assert [(a.number, a.wait_s) for a in attempts] == [(1, None)]


def test_a_timed_out_execute_is_retried_and_every_attempt_recorded(make_client, sim, attempts):
    source, target = sim.moving_pair()
    client = make_client(timeout=0.3, retry=RetryPolicy(base=0.01, max_wait=0.01, max_total=60))
    sim.script(
        {"status": 202, "body": envelope({"requestId": "lost"}), "delay": 1.5, "apply": True}
    )
    result = client.transfer_conversations(source, target, preview=False, context={"row": 2})
    assert result.http_status == 202 and result.request_id not in (None, "lost")
    first, second = attempts
    assert (first.error, first.vendor_code, first.outcome_unknown, first.http_status) == (
        "transport",
        "timeout",
        True,
        None,
    )
    assert (second.error, second.http_status, second.request_id) == (None, 202, result.request_id)
    for _ in range(200):  # the first (timed-out) attempt was applied by the simulator
        if sim.count(source, target) == 0:
            break
        threading.Event().wait(0.02)
    assert sim.count(source, target) == 0


def test_a_reset_is_retried(make_client, sim, sleeps):
    client = make_client()
    sim.script({"reset": True}, {"status": 200, "body": envelope({"updatedRecords": 5})})
    assert client.transfer_conversations("a@x.vn", "b@x.vn", preview=True).count == 5
    assert len(sleeps.waits) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"max_attempts": 0},
        {"base": -1},
        {"max_wait": -0.5},
        {"max_total": -1},
    ],
)
def test_a_bad_retry_policy_is_refused(bad):
    with pytest.raises(ValueError):
        RetryPolicy(**bad)


# --------------------------------------------------------------------------- the attempt hook


def test_on_attempt_sees_every_attempt_with_its_fields(make_client, sim, sleeps, attempts):
    client = make_client(rng=Ceiling(), retry=RetryPolicy(base=0.25, max_wait=10, max_total=100))
    sim.script(
        {"status": 503, "body": failure("busy")},
        {"status": 200, "body": envelope({"updatedRecords": 2, "requestId": "r-77"})},
    )
    context = {"batch": "20250101-000000-abcd", "row": 2, "phase": "preview"}
    client.transfer_conversations("a@x.vn", "b@x.vn", preview=True, context=context)
    first, second = attempts
    assert (first.endpoint, first.number, first.http_status, first.vendor_code, first.error) == (
        TRANSFER_PATH,
        1,
        503,
        "busy",
        "server",
    )
    assert (first.request_id, first.wait_s, first.context) == (None, 0.25, context)
    assert first.message == "OMI answered 503 busy"
    assert (second.number, second.http_status, second.vendor_code, second.error) == (
        2,
        200,
        None,
        None,
    )
    assert (second.request_id, second.wait_s, second.context, second.message) == (
        "r-77",
        None,
        context,
        None,
    )
    for attempt in attempts:
        started = datetime.fromisoformat(attempt.started_at.replace("Z", "+00:00"))
        assert started.tzinfo is not None
        assert abs((datetime.now(UTC) - started).total_seconds()) < 600
        assert attempt.elapsed_ms >= 0
    assert attempts[0].started_at <= attempts[1].started_at
    assert sleeps.waits == [0.25]


def test_every_endpoint_reports_its_attempts(client, sim, attempts):
    sim.script(
        {"status": 200, "body": envelope({"conversation": {"_id": "c", "uuid": "u"}})},
        {"status": 200, "body": envelope({"_id": "m", "content": "hi"})},
        {"status": 200, "body": envelope([])},
    )
    client.new_room(uuid="u")
    client.guest_send_message(uuid="u", content="hi")
    assert client.list_messages("c") == []
    assert [a.endpoint for a in attempts] == [
        "/api/social/livetalk/new_room",
        "/api/social/livetalk/guest_send_message",
        "/api/social/message/list",
    ]


def test_a_failing_hook_does_not_break_the_request(make_client, sim, caplog):
    def hook(attempt: Attempt) -> None:
        raise RuntimeError("the ledger is on fire")

    client = make_client(on_attempt=hook)
    sim.script({"status": 200, "body": envelope({"updatedRecords": 8})})
    with caplog.at_level("WARNING", logger="omi_batch.client"):
        assert client.transfer_conversations("a@x.vn", "b@x.vn", preview=True).count == 8
    assert [r.getMessage() for r in caplog.records if r.name == "omi_batch.client"] == [
        f"on_attempt hook failed for {TRANSFER_PATH} attempt 1"
    ]


def test_one_client_serves_many_threads(make_client, sim, attempts):
    source, target = sim.moving_pair()
    expected = sim.count(source, target)
    client = make_client(pool_size=8)
    results: list[int | None] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                results.append(client.transfer_conversations(source, target, preview=True).count)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert results == [expected] * 48
    assert len(attempts) == 48


def test_an_unsafe_channel_name_is_refused(client):
    from omi_batch.errors import UsageError

    with pytest.raises(UsageError):
        client.new_room("../../v3/agent", uuid="x")


def test_previews_get_through_a_flaky_omi(make_simulator, sleeps):
    from omi_batch.simulator import Faults

    faults = Faults(error_rate=0.3, rate_limit_rate=0.3, retry_after=2.0)
    sim, server = make_simulator(faults=faults, seed=3)
    source, target = sim.moving_pair()
    expected = sim.count(source, target)
    seen: list[Attempt] = []
    policy = RetryPolicy(max_attempts=12, base=0.1, max_wait=1, max_total=1000)
    with OmiClient(
        server.url, Secret(API_KEY), retry=policy, sleep=sleeps, on_attempt=seen.append
    ) as client:
        counts = [
            client.transfer_conversations(source, target, preview=True).count for _ in range(20)
        ]
    assert counts == [expected] * 20
    requests_seen = api_requests(sim)
    assert len(seen) == len(requests_seen) > 20
    assert [a.http_status for a in seen] == [e["status"] for e in requests_seen]
    limited = [a for a in seen if a.error == "rate_limited"]
    assert limited and all(a.wait_s >= 2.0 for a in limited)
    assert {a.error for a in seen} == {None, "server", "rate_limited"}
    assert len(sleeps.waits) == len(seen) - 20


@pytest.mark.parametrize(
    ("call", "payload"),
    [
        (lambda c: c.new_room(uuid="u"), ["not", "an", "object"]),
        (lambda c: c.guest_send_message(uuid="u", content="hi"), "text"),
        (lambda c: c.list_messages("c"), {"no": "list"}),
    ],
    ids=["new_room", "guest_send_message", "list_messages"],
)
def test_a_payload_of_the_wrong_shape_is_an_api_error(client, sim, attempts, call, payload):
    sim.script({"status": 200, "body": envelope(payload)})
    with pytest.raises(ApiError) as caught:
        call(client)
    assert (caught.value.http_status, caught.value.code) == (200, "bad_payload")
    assert [(a.error, a.vendor_code) for a in attempts] == [("api", "bad_payload")]


# --------------------------------------------------------------------------- proxies (issue 5)

_PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                    "all_proxy", "NO_PROXY", "no_proxy")  # fmt: skip


@pytest.fixture
def clean_proxy_env(monkeypatch):
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_an_http_proxy_from_the_environment_carries_the_requests(simulator, clean_proxy_env):
    sim, server = simulator
    source, target = sim.moving_pair()
    clean_proxy_env.setenv("HTTP_PROXY", server.url)  # the simulator stands in for the proxy
    with OmiClient("http://omi.invalid", Secret(API_KEY), sleep=Sleeps()) as client:
        result = client.transfer_conversations(source, target, preview=True)
    assert result.count == sim.count(source, target)
    assert [r["path"] for r in api_requests(sim)] == [TRANSFER_PATH]


def test_no_proxy_sends_requests_straight_to_omi(simulator, clean_proxy_env):
    sim, server = simulator
    source, target = sim.moving_pair()
    clean_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    clean_proxy_env.setenv("NO_PROXY", "127.0.0.1")
    with OmiClient(server.url, Secret(API_KEY), sleep=Sleeps()) as client:
        result = client.transfer_conversations(source, target, preview=True)
    assert result.count == sim.count(source, target)


def test_the_proxy_environment_is_read_once_when_the_client_is_built(simulator, clean_proxy_env):
    sim, server = simulator
    source, target = sim.moving_pair()
    with OmiClient(server.url, Secret(API_KEY), sleep=Sleeps()) as client:
        clean_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
        result = client.transfer_conversations(source, target, preview=True)
    assert result.count == sim.count(source, target)
    assert [r["path"] for r in api_requests(sim)] == [TRANSFER_PATH]

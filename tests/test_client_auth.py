"""Token auth over real loopback: OMI_AUTH=bearer fetches one token, fetches a new one once when
OMI says it expired (mid-run), and stops with exit 3 when the new one is refused."""

from __future__ import annotations

import pytest
from helpers import API_KEY

from omi_batch.client import AUTH_PATH, TRANSFER_PATH, Attempt, AuthError, OmiClient
from omi_batch.config import Secret, Settings
from omi_batch.errors import ConfigError

SOURCE, TARGET = "lan.nguyen@example.vn", "minh.tran@example.vn"


def requests_to(sim) -> list[tuple[str, str, int | None]]:
    return [(e["method"], e["path"], e["status"]) for e in sim.events if e["kind"] == "request"]


def preview(client: OmiClient) -> int | None:
    return client.transfer_conversations(SOURCE, TARGET, preview=True).count


def test_bearer_auth_fetches_one_token_for_many_requests(make_simulator):
    sim, server = make_simulator(auth="bearer")
    with OmiClient(server.url, Secret(API_KEY), auth="bearer") as client:
        counts = [preview(client) for _ in range(5)]
    assert counts == [sim.count(SOURCE, TARGET)] * 5
    assert requests_to(sim) == [("GET", AUTH_PATH, 200)] + [("POST", TRANSFER_PATH, 200)] * 5
    assert sim.stats["tokens_issued"] == 1


def test_the_api_key_header_alone_is_refused_where_omi_wants_a_token(make_simulator):
    _, server = make_simulator(auth="bearer")
    with OmiClient(server.url, Secret(API_KEY)) as client, pytest.raises(AuthError) as caught:
        preview(client)
    assert caught.value.exit_code == 3 and caught.value.http_status == 401
    # the key was set and sent: the message says so and names the other mode
    assert "no API key was sent" not in str(caught.value)
    assert str(caught.value) == (
        "OMI answered 401 auth_invalid: the credential was not accepted (the key was sent in the "
        "x-api-key header; if this OMI wants a Bearer token instead, set OMI_AUTH=bearer)"
    )


def test_a_token_that_expires_mid_run_is_fetched_again_once(make_simulator):
    sim, server = make_simulator(auth="bearer")
    attempts: list[Attempt] = []
    with OmiClient(server.url, Secret(API_KEY), auth="bearer", on_attempt=attempts.append) as c:
        preview(c)
        assert sim.expire_tokens() == 1  # "24 hours later"
        preview(c)
        preview(c)
    assert requests_to(sim) == [
        ("GET", AUTH_PATH, 200),
        ("POST", TRANSFER_PATH, 200),
        ("POST", TRANSFER_PATH, 401),
        ("GET", AUTH_PATH, 200),
        ("POST", TRANSFER_PATH, 200),
        ("POST", TRANSFER_PATH, 200),
    ]
    assert [(a.endpoint, a.error, a.vendor_code) for a in attempts] == [
        (AUTH_PATH, None, None),
        (TRANSFER_PATH, None, None),
        (TRANSFER_PATH, "auth", "token_expired"),
        (AUTH_PATH, None, None),
        (TRANSFER_PATH, None, None),
        (TRANSFER_PATH, None, None),
    ]


def test_a_short_lived_token_is_renewed_as_often_as_needed(make_simulator):
    sim, server = make_simulator(auth="bearer", token_lifetime=0.05)
    with OmiClient(server.url, Secret(API_KEY), auth="bearer") as client:
        for _ in range(3):
            preview(client)
            sim.expire_tokens()
    assert sim.stats["tokens_issued"] == 3


def test_a_refused_refresh_stops_with_exit_3(make_simulator):
    sim, server = make_simulator(auth="bearer", refuse_token_after=1)
    with OmiClient(server.url, Secret(API_KEY), auth="bearer") as client:
        preview(client)
        sim.expire_tokens()
        with pytest.raises(AuthError) as caught:
            preview(client)
    assert caught.value.exit_code == 3
    assert str(caught.value) == (
        "OMI answered 401 api_key_invalid: OMI refused to give a Bearer token for the API key: "
        "the API key was refused (check OMI_API_KEY and OMI_BASE_URL)"
    )
    assert requests_to(sim)[-2:] == [("POST", TRANSFER_PATH, 401), ("GET", AUTH_PATH, 401)]


def test_a_wrong_key_in_bearer_mode_stops_at_the_token(make_simulator):
    sim, server = make_simulator(auth="bearer")
    with (
        OmiClient(server.url, Secret("not-the-key"), auth="bearer") as client,
        pytest.raises(AuthError) as caught,
    ):
        preview(client)
    assert caught.value.exit_code == 3 and caught.value.endpoint == AUTH_PATH
    assert requests_to(sim) == [("GET", AUTH_PATH, 401)]


def test_a_token_refused_twice_in_a_row_is_not_fetched_a_third_time(make_simulator):
    sim, server = make_simulator(auth="bearer")
    refused = {"status": 401, "body": {"status_code": -9999, "message": "token_expired"}}
    token = {"status": 200, "body": {"status_code": 9999, "payload": {"access_token": "tk-2"}}}
    with OmiClient(server.url, Secret(API_KEY), auth="bearer") as client:
        preview(client)
        before = len(requests_to(sim))
        sim.script(refused, token, refused)
        with pytest.raises(AuthError) as caught:
            preview(client)
    assert (caught.value.exit_code, caught.value.code) == (3, "token_expired")
    assert [p for _, p, _ in requests_to(sim)[before:]] == [TRANSFER_PATH, AUTH_PATH, TRANSFER_PATH]


def test_both_modes_are_read_from_the_environment():
    assert Settings.from_env({}).auth == "api-key"
    assert Settings.from_env({"OMI_AUTH": "Bearer"}).auth == "bearer"
    assert Settings.from_env({"OMI_AUTH": " api_key "}).auth == "api-key"


def test_an_unknown_auth_mode_is_a_config_error():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"OMI_AUTH": "oauth"})
    assert caught.value.exit_code == 3
    assert str(caught.value) == (
        "OMI_AUTH must be api-key or bearer, not 'oauth' (api-key: the x-api-key header; "
        "bearer: a token from GET /api/auth)"
    )
    with pytest.raises(ConfigError):
        OmiClient("http://127.0.0.1:9", Secret(API_KEY), auth="basic")


def refusal(status: int, code: str, echo: str = "") -> dict:
    body = {"status_code": -9999, "message": code, "payload": {"message": echo}}
    return {"status": status, "body": body}


def token_answer(value: str) -> dict:
    return {"status": 200, "body": {"status_code": 9999, "payload": {"access_token": value}}}


def test_a_refused_refresh_is_asked_once_not_once_per_waiting_request(make_simulator):
    # A refused key must not be tried again by every request that was waiting for the token
    # (each a refused key call OMI may count towards locking the key).
    sim, server = make_simulator(auth="bearer", refuse_token_after=1)
    with OmiClient(server.url, Secret(API_KEY), auth="bearer") as client:
        preview(client)
        sim.expire_tokens()
        for _ in range(3):  # three requests, one after another, each told the token expired
            with pytest.raises(AuthError) as caught:
                preview(client)
            assert caught.value.exit_code == 3 and caught.value.endpoint == AUTH_PATH
    assert [p for _, p, s in requests_to(sim) if p == AUTH_PATH] == [AUTH_PATH, AUTH_PATH]


@pytest.mark.parametrize("key", ["accessToken", "token"])
def test_the_token_is_read_under_its_other_spellings(make_simulator, key):
    sim, server = make_simulator(auth="bearer")
    with OmiClient(server.url, Secret(API_KEY), auth="bearer") as client:
        sim.script({"status": 200, "body": {"status_code": 9999, "payload": {key: "tk-other"}}})
        assert preview(client) == sim.count(SOURCE, TARGET)
    # the scripted token was read and sent (the simulator, not knowing it, said 401), then the
    # simulator's own; before, the answer was "bad_token: the answer has no access_token"
    assert requests_to(sim) == [("GET", AUTH_PATH, 200), ("POST", TRANSFER_PATH, 401),
                                ("GET", AUTH_PATH, 200), ("POST", TRANSFER_PATH, 200)]  # fmt: skip


def test_a_token_another_request_fetched_is_scrubbed_from_this_ones_answers(make_simulator):
    # Request A is retrying a 500 when request B refreshes the token; A's next attempt carries
    # the new token, and OMI echoes it: A's attempt must not keep it.
    sim, server = make_simulator(auth="both")
    new_token = "tk-refreshed-by-another-request-7f3a"
    attempts: list[Attempt] = []

    def on_attempt(attempt: Attempt) -> None:
        attempts.append(attempt)
        if len(attempts) == 2:  # A's first attempt failed: B runs now, refreshing the token
            preview(client)

    with OmiClient(server.url, Secret(API_KEY), auth="bearer", on_attempt=on_attempt,
                   sleep=lambda s: None) as client:  # fmt: skip
        sim.script(
            token_answer("tk-first-token-0001"),
            refusal(500, "internal_error"),  # A, attempt 1
            refusal(401, "token_expired"),  # B, attempt 1
            token_answer(new_token),  # B's refresh
            {"status": 200, "body": {"status_code": 9999, "payload": {"updatedRecords": 1}}},
            refusal(500, "internal_error", f"upstream failed for Bearer {new_token}"),  # A, 2
            {"status": 200, "body": {"status_code": 9999, "payload": {"updatedRecords": 1}}},
        )
        assert preview(client) == 1
    messages = [a.message or "" for a in attempts]
    assert any("upstream failed for Bearer ***" in m for m in messages), messages
    assert not any(new_token in m for m in messages)

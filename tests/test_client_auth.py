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

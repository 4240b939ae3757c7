"""The OMI simulator's gate and directory over real loopback HTTP (plain ``requests``): the
hidden rate limit and its three answers, ``GET /api/auth`` and Bearer tokens in each auth
mode (expiry, refused refreshes), and the agent directory with its shapes, paging, keyword
and faults. Keys and tokens never show in events, logs or reprs."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from omi_batch.errors import UsageError
from omi_batch.simulator import Faults, Simulator

API_KEY = "test-api-key-5b8e1f0c9d7a"  # the same value as tests/conftest.py
TRANSFER = "/api/v3/agent/conversation/transfer"
TICKETS = "/api/v3/agent/ticket/transfer"
AGENTS = "/api/agent/list"
LAN, HONG = "lan.nguyen@example.vn", "hong.le@example.vn"
PREVIEW = {"sourceEmail": LAN, "targetEmail": HONG, "previewChanges": True}
EXECUTE = {"sourceEmail": LAN, "targetEmail": HONG}
NEVER_REFILLS = 0.001  # tokens per second: a bucket that stays empty for the whole test


def credentials(key=None, token=None) -> dict[str, str]:
    """The headers carrying an API key and/or a bearer token (none for None)."""
    headers = {}
    if key is not None:
        headers["x-api-key"] = key
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def post(server, path, body, *, key=API_KEY, token=None):
    return requests.post(server.url + path, json=body, headers=credentials(key, token), timeout=10)


def get(server, path, params=None, *, key=None, token=None):
    return requests.get(server.url + path, params=params, headers=credentials(key, token),
                        timeout=10)  # fmt: skip


def token_of(server, key=API_KEY) -> str:
    answer = get(server, "/api/auth", {"apiKey": key})
    assert answer.status_code == 200, answer.text
    return answer.json()["payload"]["access_token"]


def failure(answer) -> tuple[int, int, str]:
    body = answer.json()
    return answer.status_code, body["status_code"], body["message"]


def faults_of(sim) -> list:
    return [e["fault"] for e in sim.events if e["kind"] == "request"]


# --------------------------------------------------------------------------- rate limit


def test_a_hidden_rate_limit_admits_its_burst_then_answers_429_with_retry_after(make_simulator):
    sim, server = make_simulator(rate_limit=f"{NEVER_REFILLS}:3")
    answers = [post(server, TRANSFER, PREVIEW) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    refused = post(server, TRANSFER, EXECUTE)
    assert failure(refused) == (429, -9999, "rate_limit_exceeded")
    assert refused.json()["payload"] == {"error": "too many requests"}
    assert 1 <= int(refused.headers["Retry-After"]) <= 1 / NEVER_REFILLS
    assert sim.wait_idle(5) and sim.count(LAN, HONG) == 19  # the refused execute moved nothing
    assert sim.stats == {"requests": 4, "admitted": 3, "refused": 1, "tokens_issued": 0}
    assert faults_of(sim) == [None, None, None, "rate_limited"]


@pytest.mark.parametrize(
    ("how", "status"), [("none", 429), ("envelope", 200)], ids=["429-no-header", "envelope"]
)
def test_a_rate_limit_can_answer_without_retry_after(make_simulator, how, status):
    sim, server = make_simulator(rate_limit=f"{NEVER_REFILLS}:1", rate_limit_retry_after=how)
    assert post(server, TRANSFER, PREVIEW).status_code == 200
    refused = post(server, TRANSFER, EXECUTE)
    assert failure(refused) == (status, -9999, "rate_limit_exceeded")
    assert "Retry-After" not in refused.headers
    assert sim.wait_idle(5) and sim.count(LAN, HONG) == 19


def test_the_rate_limit_counts_every_endpoint_together(make_simulator):
    sim, server = make_simulator(rate_limit=f"{NEVER_REFILLS}:4", directory_auth="both")
    assert get(server, "/api/auth", {"apiKey": API_KEY}).status_code == 200
    assert get(server, AGENTS, key=API_KEY).status_code == 200
    assert post(server, "/api/social/message/list", {"conv_id": "x"}).status_code == 200
    assert post(server, "/api/nothing", {}).status_code == 404
    for path in ("/api/auth", AGENTS, TRANSFER, TICKETS, "/api/nothing"):
        assert requests.request("GET", server.url + path, timeout=10).status_code == 429
    assert sim.stats["admitted"] == 4 and sim.stats["refused"] == 5


def test_a_refused_request_takes_no_token(make_simulator):
    """Refusals never push the limit further away: a full bucket's worth still gets through."""
    sim, server = make_simulator(rate_limit=f"{NEVER_REFILLS}:2")
    assert [post(server, TRANSFER, PREVIEW).status_code for _ in range(2)] == [200, 200]
    assert [post(server, TRANSFER, PREVIEW).status_code for _ in range(5)] == [429] * 5
    sim.rate_limit = f"{NEVER_REFILLS}:2"  # a fresh, full bucket
    assert [post(server, TRANSFER, PREVIEW).status_code for _ in range(3)] == [200, 200, 429]
    assert sim.stats == {"requests": 10, "admitted": 4, "refused": 6, "tokens_issued": 0}


def test_the_rate_limit_is_shared_by_concurrent_senders(make_simulator):
    sim, server = make_simulator(rate_limit=f"{NEVER_REFILLS}:10")
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: post(server, TRANSFER, PREVIEW).status_code, range(40)))
    assert sorted(codes) == [200] * 10 + [429] * 30
    assert sim.stats == {"requests": 40, "admitted": 10, "refused": 30, "tokens_issued": 0}


def test_the_bucket_refills_at_its_rate(make_simulator):
    sim, server = make_simulator(rate_limit="20:1")
    started, sent = time.monotonic(), 0
    while time.monotonic() - started < 1.0 and sent < 400:
        post(server, TRANSFER, PREVIEW)
        sent += 1
    elapsed = time.monotonic() - started
    stats = sim.stats
    assert stats["admitted"] + stats["refused"] == sent
    assert stats["admitted"] <= 1 + 20 * elapsed + 1
    assert stats["admitted"] >= min(sent, 0.5 * 20 * elapsed)


def test_the_rate_limit_can_change_or_go_while_running(make_simulator):
    sim, server = make_simulator(rate_limit=f"{NEVER_REFILLS}:1")
    assert sim.rate_limit == "0.001:1"
    assert [post(server, TRANSFER, PREVIEW).status_code for _ in range(2)] == [200, 429]
    sim.rate_limit = None
    assert [post(server, TRANSFER, PREVIEW).status_code for _ in range(3)] == [200] * 3
    assert sim.stats["refused"] == 1


def test_the_random_rate_limit_fault_still_answers_with_its_retry_after(make_simulator):
    sim, server = make_simulator(faults=Faults(rate_limit_rate=1.0, retry_after=2.5))
    answer = post(server, TRANSFER, PREVIEW)
    assert (answer.status_code, answer.headers["Retry-After"]) == (429, "2.5")
    assert faults_of(sim) == ["rate_limit"]
    assert sim.stats["admitted"] == 1  # the hidden bucket (none here) let it through


def test_scripted_answers_bypass_the_rate_limit(make_simulator):
    sim, server = make_simulator(rate_limit=f"{NEVER_REFILLS}:1")
    sim.script({"status": 503, "body": "down"}, {"status": 503, "body": "down"})
    assert [post(server, TRANSFER, PREVIEW).status_code for _ in range(4)] == [503, 503, 200, 429]
    assert sim.stats == {"requests": 4, "admitted": 1, "refused": 1, "tokens_issued": 0}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fast", "rate_limit is RPS[:BURST], e.g. 20 or 20:5, not 'fast'"),
        ("20:x", "rate_limit is RPS[:BURST]"),
        ("0", "rate_limit needs RPS > 0 and BURST >= 1, not '0'"),
        ("5:0", "rate_limit needs RPS > 0 and BURST >= 1"),
        ("-1:3", "rate_limit needs RPS > 0"),
        ("inf", "rate_limit needs RPS > 0"),
    ],
)
def test_a_bad_rate_limit_is_a_usage_error(spec, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Simulator(rate_limit=spec)


def test_a_rate_limit_without_burst_allows_one_seconds_worth():
    assert Simulator(rate_limit="20").rate_limit == "20:20"
    assert Simulator(rate_limit=2.5).rate_limit == "2.5:2"
    assert Simulator(rate_limit="0.5").rate_limit == "0.5:1"
    assert Simulator(rate_limit="").rate_limit is None


# --------------------------------------------------------------------------- auth


def test_get_auth_gives_a_bearer_token_in_the_envelope(simulator):
    sim, server = simulator
    answer = get(server, "/api/auth", {"apiKey": API_KEY})
    assert answer.status_code == 200
    body = answer.json()
    assert body["status_code"] == 9999
    payload = body["payload"]
    assert set(payload) == {"access_token", "access_type", "token_type", "expires_in"}
    assert (payload["token_type"], payload["expires_in"]) == ("Bearer", 86400)
    assert len(payload["access_token"]) >= 40
    assert token_of(server) != payload["access_token"]  # a new token each time
    assert sim.stats["tokens_issued"] == 2


def test_a_token_answer_can_leave_out_expires_in(make_simulator):
    _, server = make_simulator(token_expires_in=False, token_lifetime=60)
    payload = get(server, "/api/auth", {"apiKey": API_KEY}).json()["payload"]
    assert set(payload) == {"access_token", "access_type", "token_type"}


@pytest.mark.parametrize(
    ("params", "message"),
    [({}, "api_key_is_required"), ({"apiKey": ""}, "api_key_is_required"),
     ({"apiKey": "wrong"}, "api_key_invalid"), ({"apiKey": API_KEY[:-1]}, "api_key_invalid")],
)  # fmt: skip
def test_get_auth_with_a_wrong_or_missing_key_is_401(simulator, params, message):
    sim, server = simulator
    assert failure(get(server, "/api/auth", params)) == (401, -9999, message)
    assert sim.stats["tokens_issued"] == 0


def test_auth_takes_get_only(simulator):
    _, server = simulator
    answer = requests.post(server.url + "/api/auth?apiKey=" + API_KEY, timeout=10)
    assert failure(answer) == (405, -9999, "method_not_allowed")
    assert answer.json()["payload"] == {"error": "/api/auth takes GET"}


def test_bearer_mode_accepts_only_a_live_bearer_token(make_simulator):
    sim, server = make_simulator(auth="bearer")
    token = token_of(server)
    assert post(server, TRANSFER, PREVIEW, key=None, token=token).status_code == 200
    lower = {"authorization": f"bearer {token}"}
    answer = requests.post(server.url + TRANSFER, json=PREVIEW, headers=lower, timeout=10)
    assert answer.status_code == 200  # header name and scheme are case-insensitive
    assert failure(post(server, TRANSFER, PREVIEW)) == (401, -9999, "auth_invalid")
    unknown = post(server, TRANSFER, PREVIEW, key=None, token="not-a-token")
    assert failure(unknown) == (401, -9999, "auth_invalid")
    assert failure(post(server, TICKETS, PREVIEW, key=API_KEY)) == (401, -9999, "auth_invalid")


def test_an_expired_token_is_401_token_expired_and_a_new_one_works(make_simulator):
    sim, server = make_simulator(auth="bearer")
    old = token_of(server)
    assert post(server, TRANSFER, PREVIEW, key=None, token=old).status_code == 200
    assert sim.expire_tokens() == 1
    expired = post(server, TRANSFER, EXECUTE, key=None, token=old)
    assert failure(expired) == (401, -9999, "token_expired")
    assert sim.wait_idle(5) and sim.count(LAN, HONG) == 19  # nothing applied
    fresh = token_of(server)
    assert post(server, TRANSFER, EXECUTE, key=None, token=fresh).status_code == 202


def test_a_token_expires_after_its_lifetime(make_simulator):
    sim, server = make_simulator(auth="bearer", token_lifetime=0.3)
    token = token_of(server)
    for _ in range(100):  # bounded: at most ~10 s
        answer = post(server, TRANSFER, PREVIEW, key=None, token=token)
        if answer.status_code != 200:
            break
        time.sleep(0.1)
    assert failure(answer) == (401, -9999, "token_expired")


def test_api_key_mode_accepts_only_the_key(simulator):
    _, server = simulator
    token = token_of(server)
    assert failure(post(server, TRANSFER, PREVIEW, key=None, token=token)) == (
        401, -9999, "api_key_is_required"
    )  # fmt: skip
    assert post(server, TRANSFER, PREVIEW).status_code == 200


def test_both_mode_accepts_either_and_a_sent_token_decides(make_simulator):
    sim, server = make_simulator(auth="both")
    token = token_of(server)
    assert post(server, TRANSFER, PREVIEW).status_code == 200
    assert post(server, TRANSFER, PREVIEW, key=None, token=token).status_code == 200
    sim.expire_tokens()
    assert failure(post(server, TRANSFER, PREVIEW, token=token)) == (401, -9999, "token_expired")
    assert failure(post(server, TRANSFER, PREVIEW, key="wrong")) == (401, -9999, "api_key_invalid")


def test_a_refused_refresh_is_401_api_key_invalid(make_simulator):
    sim, server = make_simulator(auth="bearer", refuse_token_after=1)
    token = token_of(server)
    sim.expire_tokens()
    assert failure(post(server, TRANSFER, PREVIEW, key=None, token=token))[2] == "token_expired"
    refresh = get(server, "/api/auth", {"apiKey": API_KEY})
    assert failure(refresh) == (401, -9999, "api_key_invalid")
    sim.refuse_token_after = None
    assert token_of(server)
    assert sim.stats["tokens_issued"] == 2


def test_keys_and_tokens_never_show_in_events_logs_or_reprs(make_simulator, caplog):
    caplog.set_level(logging.INFO, logger="omi_batch.simulator")
    sim, server = make_simulator(auth="bearer")
    token = token_of(server)
    post(server, TRANSFER, PREVIEW, key=None, token=token)
    get(server, "/api/auth", {"apiKey": "wrong-key-77c1"})
    get(server, AGENTS, {"keyword": "lan"}, token=token)
    sim.expire_tokens()
    post(server, TRANSFER, PREVIEW, key=None, token=token)
    text = repr(sim.events) + repr(sim) + repr(sim.stats) + caplog.text
    assert "GET /api/auth -> 200" in caplog.text and "POST " + TRANSFER + " -> 401" in caplog.text
    for secret in (API_KEY, token, "wrong-key-77c1"):
        assert secret not in text


# --------------------------------------------------------------------------- directory


def test_the_directory_lists_every_agent_with_its_state_by_bearer(simulator):
    sim, server = simulator
    answer = get(server, AGENTS, token=token_of(server))
    assert answer.status_code == 200 and answer.json()["status_code"] == 9999
    payload = answer.json()["payload"]
    assert (payload["page"], payload["size"], payload["total_items"]) == (1, 50, 15)
    items = payload["items"]
    assert [i["identify_info"] for i in items] == list(sim.agents)
    first = items[0]
    assert set(first) == {"_id", "identify_info", "full_name", "name", "email", "is_active",
                          "is_deleted", "role"}  # fmt: skip
    assert (first["full_name"], first["is_active"], first["is_deleted"]) == (
        "Nguyễn Thị Lan", True, False
    )  # fmt: skip
    former = {i["identify_info"]: (i["is_active"], i["is_deleted"]) for i in items[12:]}
    assert former == {
        "quang.trinh@example.vn": (False, False),
        "phuong.mac@example.vn": (False, False),
        "yen.ly@example.vn": (False, True),
    }
    assert "long.ly@example.vn" not in [i["identify_info"] for i in items]
    assert get(server, AGENTS, {"page": 2}, token=token_of(server)).json()["payload"]["items"] == []


def test_paging_through_the_directory_ends_with_an_empty_page(simulator):
    sim, server = simulator
    token, pages = token_of(server), []
    for page in range(1, 20):  # bounded
        items = get(server, AGENTS, {"page": page, "size": 4}, token=token).json()["payload"]
        pages.append(len(items["items"]))
        if not items["items"]:
            break
    assert pages == [4, 4, 4, 3, 0]


@pytest.mark.parametrize(
    ("keyword", "expected"),
    [
        ("nguyen", ["lan.nguyen@example.vn"]),
        ("QUANG", ["quang.trinh@example.vn"]),
        ("lý", ["yen.ly@example.vn"]),
        ("Văn", ["minh.tran@example.vn", "hung.bui@example.vn", "tuan.ho@example.vn",
                 "quang.trinh@example.vn"]),
        ("nobody", []),
    ],
)  # fmt: skip
def test_a_keyword_filters_by_part_of_email_or_name(simulator, keyword, expected):
    _, server = simulator
    payload = get(server, AGENTS, {"keyword": keyword}, token=token_of(server)).json()["payload"]
    assert [i["identify_info"] for i in payload["items"]] == expected
    assert payload["total_items"] == len(expected)


def test_the_directory_can_answer_in_the_data_shape(make_simulator):
    _, server = make_simulator(directory_shape="data")
    payload = get(server, AGENTS, {"size": 10}, token=token_of(server)).json()["payload"]
    assert set(payload) == {"data", "total", "page_number", "page_size"}
    assert (payload["total"], len(payload["data"])) == (15, 10)
    assert set(payload["data"][0]) == {"id", "identify_info", "fullname", "is_active", "is_deleted"}


def test_the_directory_can_answer_a_bare_list(make_simulator):
    _, server = make_simulator(directory_shape="list")
    payload = get(server, AGENTS, {"keyword": "yen.ly"}, token=token_of(server)).json()["payload"]
    assert [(i["identify_info"], i["is_deleted"]) for i in payload] == [("yen.ly@example.vn", True)]


def test_the_directory_wants_a_bearer_token_unless_told_otherwise(make_simulator):
    _, server = make_simulator()
    assert failure(get(server, AGENTS, key=API_KEY)) == (401, -9999, "auth_invalid")
    _, both = make_simulator(directory_auth="both")
    assert get(both, AGENTS, key=API_KEY).status_code == 200
    _, keyed = make_simulator(directory_auth="api-key")
    assert get(keyed, AGENTS, key=API_KEY).status_code == 200
    assert failure(get(keyed, AGENTS, token=token_of(keyed)))[2] == "api_key_is_required"


def test_a_bad_page_is_refused_in_the_envelope(simulator):
    _, server = simulator
    answer = get(server, AGENTS, {"page": 0}, token=token_of(server))
    assert failure(answer) == (200, -9999, "request_body_required")
    assert answer.json()["payload"] == {"error": "page must be a whole number from 1"}


@pytest.mark.parametrize(("fault", "status"), [("permission_denied", 200), ("forbidden", 403)])
def test_a_key_without_the_directory_permission_is_permission_denied(make_simulator, fault, status):
    sim, server = make_simulator(faults=Faults(directory_fault=fault))
    token = token_of(server)
    assert failure(get(server, AGENTS, token=token)) == (status, -9999, "permission_denied")
    assert failure(get(server, AGENTS, token="bad")) == (401, -9999, "auth_invalid")
    assert post(server, TRANSFER, PREVIEW).status_code == 200  # the key still works there


@pytest.mark.parametrize(
    ("fault", "status", "kind"),
    [("not_found", 404, "text/html"), ("unavailable", 503, "text/html"),
     ("error", 500, "application/json")],
)  # fmt: skip
def test_an_unreachable_directory_answers_before_any_credential_check(
    make_simulator, fault, status, kind
):
    sim, server = make_simulator(faults=Faults(directory_fault=fault))
    answer = get(server, AGENTS)
    assert answer.status_code == status and answer.headers["Content-Type"].startswith(kind)
    sim.faults.directory_fault = None
    assert get(server, AGENTS, token=token_of(server)).status_code == 200


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        ({"directory_fault": "down"}, "fault directory_fault must be one of permission_denied"),
        ({"ticket_fault": "not_found"}, "fault ticket_fault must be one of permission_denied"),
    ],
)
def test_bad_fault_names_are_usage_errors(faults, message):
    with pytest.raises(UsageError, match=message):
        Faults(**faults)

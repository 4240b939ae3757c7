"""The OMI simulator over real loopback HTTP (plain ``requests``, not our client): every
endpoint, the API key, bad bodies, transfer semantics, callbacks, every fault knob, scripted
answers, the events log, the sample data, and ``omi-batch simulator serve`` as a process."""

from __future__ import annotations

import csv
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from helpers import ServiceProcess
from waitress import trigger, wasyncore
from waitress.server import create_server

from omi_batch.errors import NotFound, UsageError
from omi_batch.simulator import FIXTURE_PATH, Faults, Simulator
from omi_batch.simulator.make_fixture import build, dumps

API_KEY = "test-api-key-5b8e1f0c9d7a"  # the same value as tests/conftest.py
TRANSFER = "/api/v3/agent/conversation/transfer"
ROOT = Path(__file__).resolve().parent.parent
LAN, MINH, HONG = "lan.nguyen@example.vn", "minh.tran@example.vn", "hong.le@example.vn"
BAO, MAI, ANH = "bao.pham@example.vn", "mai.hoang@example.vn", "anh.vu@example.vn"
HUNG, NGOC = "hung.bui@example.vn", "ngoc.do@example.vn"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class Receiver:
    """A tiny webhook receiver on a free loopback port: keeps every callback it gets."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self._cond = threading.Condition()
        self._server = create_server(self._app, host="127.0.0.1", port=0, threads=4)
        self.url = f"http://127.0.0.1:{self._server.effective_port}"
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()

    def _app(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length))
        with self._cond:
            self.received.append(
                {"path": environ["PATH_INFO"], "token": environ.get("HTTP_X_TOKEN"), "body": body}
            )
            self._cond.notify_all()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def wait_for(self, count: int, timeout: float = 10) -> list[dict]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.received) >= count, timeout=timeout)
            return list(self.received)

    def stop(self) -> None:
        socket_map = self._server._map
        pull = next(d for d in socket_map.values() if isinstance(d, trigger.trigger))
        try:
            pull.pull_trigger(lambda: wasyncore.close_all(socket_map, ignore_all=True))
        except OSError:  # the loop already closed its trigger: the receiver is stopped
            pass
        self._thread.join(timeout=5)
        self._server.task_dispatcher.shutdown(timeout=5)


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.stop()


def post(server, path, body=None, *, key=API_KEY, raw=None, timeout=10):
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["x-api-key"] = key
    data = raw if raw is not None else json.dumps(body).encode()
    return requests.post(server.url + path, data=data, headers=headers, timeout=timeout)


def transfer(server, source, target, *, preview, receiver=None, path="/callbacks/b/2/x", **more):
    body = {"sourceEmail": source, "targetEmail": target, "previewChanges": preview, **more}
    if receiver is not None:
        body["callbackResultConfig"] = {"url": receiver.url + path, "headers": {"X-Token": "t-1"}}
    return post(server, TRANSFER, body)


def requests_of(sim):
    return [e for e in sim.events if e["kind"] == "request"]


def callbacks_of(sim):
    return [e for e in sim.events if e["kind"] == "callback"]


# --------------------------------------------------------------------------- transfer


def test_a_preview_counts_and_changes_nothing(simulator):
    sim, server = simulator
    before = sim.conversations
    expected = sim.count(LAN, HONG)
    answer = transfer(server, LAN, HONG, preview=True)
    assert answer.status_code == 200
    envelope = answer.json()
    assert envelope["status_code"] == 9999
    assert (envelope["instance_id"], envelope["instance_version"]) == ("sim", "sim-1")
    assert envelope["payload"]["updatedRecords"] == expected == 19
    assert len(envelope["payload"]["requestId"]) == 36
    assert sim.conversations == before


@pytest.mark.parametrize("field", ["updatedRecords", "totalRecords", "total", "count", "number"])
def test_a_sync_preview_puts_the_count_where_asked(make_simulator, field):
    sim, server = make_simulator(preview_field=field)
    payload = transfer(server, LAN, HONG, preview=True).json()["payload"]
    if field == "number":
        assert payload == 19
    else:
        assert payload[field] == 19 and set(payload) == {field, "requestId"}


def test_an_async_preview_answers_202_and_calls_back_with_the_count(make_simulator, receiver):
    sim, server = make_simulator(preview_mode="async")
    before = sim.conversations
    answer = transfer(server, MINH, HONG, preview=True, receiver=receiver)
    assert answer.status_code == 202
    request_id = answer.json()["payload"]["requestId"]
    assert answer.json()["payload"] == {"requestId": request_id}
    assert sim.wait_idle(10)
    [callback] = receiver.wait_for(1)
    assert callback["body"]["requestId"] == request_id
    assert callback["body"]["status"] == "SUCCESS"
    assert callback["body"]["payload"] == {"updatedRecords": 17}
    assert sim.conversations == before


def test_an_execute_answers_202_then_moves_and_calls_back(simulator, receiver):
    sim, server = simulator
    expected = sim.count(LAN, HONG)
    answer = transfer(server, LAN, HONG, preview=False, receiver=receiver, path="/cb/b1/2/execute")
    assert answer.status_code == 202 and answer.json()["status_code"] == 9999
    request_id = answer.json()["payload"]["requestId"]
    assert sim.wait_idle(10)
    [callback] = receiver.wait_for(1)
    assert (callback["path"], callback["token"]) == ("/cb/b1/2/execute", "t-1")
    body = callback["body"]
    assert body["requestId"] == request_id
    assert (body["action"], body["status"], body["payload"]) == (
        "CONVERSATION_AGENT_TRANSFER",
        "SUCCESS",
        {"updatedRecords": expected},
    )
    assert body["requestTimeMs"] <= body["responseTimeMs"]
    assert sim.count(LAN, HONG) == 0
    assert transfer(server, LAN, HONG, preview=True).json()["payload"]["updatedRecords"] == 0
    moved = [c for c in sim.conversations if LAN in c["members"] and HONG in c["members"]]
    assert len(moved) >= expected
    [event] = callbacks_of(sim)
    assert (event["delivery"], event["duplicate"], event["dropped"]) == (200, False, False)


def test_the_same_execute_twice_updates_nothing_the_second_time(simulator, receiver):
    sim, server = simulator
    expected = sim.count(HUNG, NGOC)
    for _ in range(2):
        assert transfer(server, HUNG, NGOC, preview=False, receiver=receiver).status_code == 202
        assert sim.wait_idle(10)
    first, second = receiver.wait_for(2)
    assert first["body"]["payload"]["updatedRecords"] == expected == 17
    assert second["body"]["payload"]["updatedRecords"] == 0


def test_an_execute_without_callback_config_is_applied_silently(simulator):
    sim, server = simulator
    assert transfer(server, MINH, HONG, preview=False).status_code == 202
    assert sim.wait_idle(10)
    assert sim.count(MINH, HONG) == 0
    assert callbacks_of(sim) == []


def test_replace_makes_the_target_the_only_member(simulator):
    sim, server = simulator
    assert sim.count(HUNG, NGOC, replace=True) == 20
    transfer(server, HUNG, NGOC, preview=False, replaceExistingMembers=True)
    assert sim.wait_idle(10)
    assert sim.count(HUNG, NGOC, replace=True) == 0
    assert sim.count(HUNG, NGOC) == 0
    assert sum(c["members"] == [NGOC] for c in sim.conversations) >= 20


def test_adding_keeps_the_source_and_replace_then_still_counts(simulator):
    sim, server = simulator
    transfer(server, BAO, ANH, preview=False)
    assert sim.wait_idle(10)
    assert sim.count(BAO, ANH) == 0
    assert sim.count(BAO, ANH, replace=True) == 17  # members are [bao, anh], not [anh]


def window_fixture(ages_days: list[float]) -> dict:
    return {
        "agents": [{"email": "a@x.vn", "name": "A"}, {"email": "b@x.vn", "name": "B"}],
        "conversations": [
            {
                "id": f"c{n}",
                "members": ["a@x.vn"],
                "created_at": (NOW - timedelta(days=d)).isoformat(),
            }
            for n, d in enumerate(ages_days)
        ],
    }


@pytest.mark.parametrize(
    ("window_days", "expected"),
    [(183, ["c0", "c1"]), (30, ["c0"]), (400, ["c0", "c1", "c2", "c3"])],
)
def test_only_conversations_of_the_window_count(make_simulator, receiver, window_days, expected):
    sim, server = make_simulator(
        fixture=window_fixture([10, 182, 184, 300]), now=NOW, window_days=window_days
    )
    assert sim.count("a@x.vn", "b@x.vn") == len(expected)
    transfer(server, "a@x.vn", "b@x.vn", preview=False, receiver=receiver)
    assert sim.wait_idle(10)
    assert receiver.wait_for(1)[0]["body"]["payload"]["updatedRecords"] == len(expected)
    moved = [c["id"] for c in sim.conversations if "b@x.vn" in c["members"]]
    assert moved == expected


def test_conv_ids_limit_the_transfer_and_other_ids_are_ignored(simulator):
    sim, server = simulator
    mine = [c["id"] for c in sim.conversations if BAO in c["members"] and MAI not in c["members"]]
    others = [c["id"] for c in sim.conversations if BAO not in c["members"]]
    named = ["6a92a56ca95c2c0b07465834", "6ac43424980ae047cc1ebe17"]
    assert set(named) <= set(mine)
    conv_ids = [*named, others[0], "no-such-conversation", mine[0]]  # mine[0] is out of window
    answer = transfer(server, BAO, MAI, preview=True, convIds=conv_ids)
    assert answer.json()["payload"]["updatedRecords"] == 2 == sim.count(BAO, MAI, conv_ids)
    transfer(server, BAO, MAI, preview=False, convIds=conv_ids, replaceExistingMembers=True)
    assert sim.wait_idle(10)
    assert [
        c["id"] for c in sim.conversations if c["id"] in mine and c["members"] == [MAI]
    ] == named
    assert sim.count(BAO, MAI) == 14  # the rest is untouched


def test_a_fixture_with_as_of_keeps_its_ages_whatever_the_day(make_simulator):
    counts = set()
    for now in ("2027-03-01T00:00:00Z", "2026-11-25T00:00:00Z", "2030-01-01T08:00:00+07:00"):
        sim, _ = make_simulator(now=now)
        counts.add((sim.count(LAN, HONG), sim.count(HUNG, NGOC, replace=True)))
    assert counts == {(19, 20)}


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "api_key_is_required"),
        ({"x-api-key": ""}, "api_key_is_required"),
        ({"x-api-key": "wrong"}, "api_key_invalid"),
        ({"X-API-KEY": API_KEY[:-1]}, "api_key_invalid"),
    ],
)
def test_a_missing_or_wrong_key_is_refused_with_401(simulator, headers, message):
    sim, server = simulator
    answer = requests.post(server.url + TRANSFER, json={}, headers=headers, timeout=10)
    assert answer.status_code == 401
    assert answer.json()["status_code"] == -9999 and answer.json()["message"] == message


def test_the_key_header_name_is_case_insensitive(simulator):
    sim, server = simulator
    headers = {"X-API-KEY": API_KEY}
    answer = requests.post(
        server.url + TRANSFER, json={"sourceEmail": LAN, "targetEmail": HONG}, headers=headers
    )
    assert answer.status_code == 202


@pytest.mark.parametrize(
    ("raw", "message", "error"),
    [
        (b"", "request_body_required", "the body must be a JSON object"),
        (b"not json", "request_body_required", "the body must be a JSON object"),
        (b"[1, 2]", "request_body_required", "the body must be a JSON object"),
        (b"{}", "source_email_required", "sourceEmail is required"),
        (b'{"sourceEmail": " "}', "source_email_required", "sourceEmail is required"),
        (
            b'{"sourceEmail": "lan.nguyen@example.vn"}',
            "target_email_required",
            "targetEmail is required",
        ),
        (
            b'{"sourceEmail": "lan.nguyen@example.vn", "targetEmail": "hong.le@example.vn", "previewChanges": "yes"}',
            "request_body_required",
            "previewChanges must be true or false",
        ),
        (
            b'{"sourceEmail": "lan.nguyen@example.vn", "targetEmail": "hong.le@example.vn", "convIds": "c1"}',
            "request_body_required",
            "convIds must be a list of strings",
        ),
        (
            b'{"sourceEmail": "lan.nguyen@example.vn", "targetEmail": "hong.le@example.vn", "callbackResultConfig": {}}',
            "request_body_required",
            "callbackResultConfig.url is required",
        ),
    ],
)
def test_a_bad_transfer_body_is_refused_in_the_envelope(simulator, raw, message, error):
    sim, server = simulator
    before = sim.conversations
    answer = post(server, TRANSFER, raw=raw)
    assert answer.status_code == 200
    body = answer.json()
    assert (body["status_code"], body["message"], body["payload"]) == (
        -9999,
        message,
        {"error": error},
    )
    assert sim.conversations == before


@pytest.mark.parametrize(
    ("source", "target", "error"),
    [
        ("nobody@example.vn", HONG, "sourceEmail: no agent with email nobody@example.vn"),
        (LAN, "long.ly@example.vn", "targetEmail: no agent with email long.ly@example.vn"),
    ],
)
@pytest.mark.parametrize("preview", [True, False])
def test_an_unknown_agent_is_user_not_found(simulator, source, target, error, preview):
    sim, server = simulator
    answer = transfer(server, source, target, preview=preview)
    assert answer.status_code == 200
    assert answer.json()["message"] == "user_not_found"
    assert answer.json()["payload"] == {"error": error}
    assert sim.wait_idle(5) and callbacks_of(sim) == []


def test_emails_are_matched_without_case_or_spaces(simulator):
    sim, server = simulator
    answer = transfer(server, " Lan.Nguyen@Example.VN ", "HONG.LE@example.vn", preview=True)
    assert answer.json()["payload"]["updatedRecords"] == 19


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("POST", "/api/v3/agent/conversation/nothing", 404, "resource_not_found"),
        ("GET", TRANSFER, 405, "method_not_allowed"),
    ],
)
def test_unknown_paths_and_methods(simulator, method, path, status, message):
    sim, server = simulator
    answer = requests.request(method, server.url + path, headers={"x-api-key": API_KEY})
    assert (answer.status_code, answer.json()["message"]) == (status, message)


# --------------------------------------------------------------------------- chat endpoints


def test_new_room_then_messages_then_list(simulator):
    sim, server = simulator
    guest = {"phone": "0395000001", "full_name": "Nguyễn Văn Hiền", "domain": ""}
    room = post(server, "/api/social/livetalk/new_room", {"uuid": "p-1", "guest_info": guest})
    assert room.status_code == 200 and room.json()["status_code"] == 9999
    conversation = room.json()["payload"]["conversation"]
    assert (conversation["uuid"], conversation["guest_info"], conversation["members"]) == (
        "p-1",
        guest,
        [],
    )
    again = post(server, "/api/social/livetalk/new_room", {"uuid": "p-1"}).json()
    assert again["payload"]["conversation"]["_id"] == conversation["_id"]
    for text in ("Xin chào", "Tôi cần hỗ trợ đơn hàng"):
        sent = post(
            server, "/api/social/livetalk/guest_send_message", {"uuid": "p-1", "content": text}
        )
        assert sent.json()["payload"]["content"] == text
        assert sent.json()["payload"]["room_id"] == conversation["_id"]
        assert sent.json()["payload"]["conv_uuid"] == "p-1"
    listed = post(
        server, "/api/social/message/list?page=1&size=15", {"conv_id": conversation["_id"]}
    )
    assert [m["content"] for m in listed.json()["payload"]] == [
        "Tôi cần hỗ trợ đơn hàng",
        "Xin chào",
    ]
    second_page = post(server, "/api/social/message/list?page=2&size=1", {"conv_id": "p-1"})
    assert [m["content"] for m in second_page.json()["payload"]] == ["Xin chào"]


def test_new_room_without_uuid_gets_one_and_members_extension(simulator):
    sim, server = simulator
    room = post(server, "/api/social/livetalk/new_room", {"members": [LAN]}).json()
    conversation = room["payload"]["conversation"]
    assert conversation["uuid"] == conversation["_id"] and len(conversation["_id"]) == 24
    assert conversation["members"] == [LAN]
    assert sim.count(LAN, HONG) == 20  # new today, so inside the window


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/social/zalo/new_room", {}, "channel_not_supported"),
        ("/api/social/livetalk/guest_send_message", {"content": "x"}, "uuid_required"),
        ("/api/social/livetalk/guest_send_message", {"uuid": "p-9"}, "content_required"),
        (
            "/api/social/livetalk/guest_send_message",
            {"uuid": "p-9", "content": "x"},
            "resource_not_found",
        ),
        ("/api/social/message/list", {}, "conv_id_required"),
        ("/api/social/message/list", {"conv_id": "nope"}, "resource_not_found"),
        ("/api/social/message/list?page=0", {"conv_id": "livetalk-0001"}, "request_body_required"),
        ("/api/social/livetalk/new_room", {"members": ["x@y.vn"]}, "user_not_found"),
    ],
)
def test_chat_endpoints_refuse_bad_bodies(simulator, path, body, message):
    sim, server = simulator
    answer = post(server, path, body)
    assert (answer.status_code, answer.json()["status_code"]) == (200, -9999)
    assert answer.json()["message"] == message


def test_fixture_conversations_take_messages_by_uuid(simulator):
    sim, server = simulator
    post(
        server, "/api/social/livetalk/guest_send_message", {"uuid": "livetalk-0001", "content": "a"}
    )
    first_id = sim.conversations[0]["id"]
    listed = post(server, "/api/social/message/list", {"conv_id": first_id}).json()["payload"]
    assert [m["content"] for m in listed] == ["a"]


# --------------------------------------------------------------------------- faults


def test_latency_still_answers(make_simulator):
    sim, server = make_simulator(faults=Faults(latency_ms=30))
    assert transfer(server, LAN, HONG, preview=True).json()["payload"]["updatedRecords"] == 19
    assert [e["fault"] for e in requests_of(sim)] == [None]


def test_errors_are_500_or_503_and_apply_nothing(make_simulator, receiver):
    sim, server = make_simulator(faults=Faults(error_rate=1.0))
    statuses = set()
    for _ in range(8):
        answer = transfer(server, LAN, HONG, preview=False, receiver=receiver)
        statuses.add(answer.status_code)
        if answer.status_code == 500:
            assert answer.json()["message"] == "internal_server_error"
        else:
            assert answer.headers["Content-Type"] == "text/html" and "503" in answer.text
    assert statuses == {500, 503}
    assert sim.wait_idle(5) and sim.count(LAN, HONG) == 19 and receiver.received == []
    assert {(e["fault"], e["request_id"]) for e in requests_of(sim)} == {("error", None)}


def test_rate_limits_answer_429_with_retry_after(make_simulator):
    sim, server = make_simulator(faults=Faults(rate_limit_rate=1.0, retry_after=0.5))
    answer = transfer(server, LAN, HONG, preview=False)
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "0.5"
    assert answer.json()["message"] == "rate_limit_exceeded"
    assert sim.wait_idle(5) and sim.count(LAN, HONG) == 19
    assert requests_of(sim)[0]["fault"] == "rate_limit"


def test_a_slow_answer_comes_late_but_the_transfer_is_applied(make_simulator, receiver):
    sim, server = make_simulator(faults=Faults(slow_rate=1.0, slow_seconds=30))
    with pytest.raises(requests.exceptions.ReadTimeout):
        post(
            server,
            TRANSFER,
            {
                "sourceEmail": LAN,
                "targetEmail": HONG,
                "callbackResultConfig": {"url": receiver.url + "/cb", "headers": {}},
            },
            timeout=0.5,
        )
    [callback] = receiver.wait_for(1)
    assert callback["body"]["payload"]["updatedRecords"] == 19
    assert sim.count(LAN, HONG) == 0
    [event] = requests_of(sim)
    assert (event["status"], event["fault"]) == (202, "slow")
    assert event["request_id"] == callback["body"]["requestId"]


def test_a_reset_closes_the_connection_and_applies_nothing(make_simulator):
    sim, server = make_simulator(faults=Faults(reset_rate=1.0))
    with pytest.raises(requests.exceptions.ConnectionError):
        transfer(server, LAN, HONG, preview=False)
    assert sim.wait_idle(5) and sim.count(LAN, HONG) == 19
    [event] = requests_of(sim)
    assert (event["status"], event["fault"]) == (None, "reset")


def test_dropped_callbacks_are_logged_but_never_sent(make_simulator, receiver):
    sim, server = make_simulator(faults=Faults(drop_callbacks=1.0))
    request_id = transfer(server, LAN, HONG, preview=False, receiver=receiver).json()["payload"][
        "requestId"
    ]
    assert sim.wait_idle(10)
    assert sim.count(LAN, HONG) == 0 and receiver.received == []
    [event] = callbacks_of(sim)
    assert (event["request_id"], event["dropped"], event["delivery"]) == (request_id, True, None)


def test_duplicated_callbacks_arrive_twice(make_simulator, receiver):
    sim, server = make_simulator(faults=Faults(duplicate_callbacks=1.0))
    transfer(server, LAN, HONG, preview=False, receiver=receiver)
    assert sim.wait_idle(10)
    first, second = receiver.wait_for(2)
    assert first["body"] == second["body"]
    assert [e["duplicate"] for e in callbacks_of(sim)] == [False, True]


def test_a_delayed_callback_is_pending_until_sent_and_stop_drops_it(make_simulator, receiver):
    sim, server = make_simulator(faults=Faults(callback_delay=60))
    transfer(server, LAN, HONG, preview=False, receiver=receiver)
    assert sim.wait_idle(0.2) is False
    server.stop()
    assert sim.wait_idle(1) is True
    assert receiver.received == [] and callbacks_of(sim) == []


def test_a_short_callback_delay_still_delivers(make_simulator, receiver):
    sim, server = make_simulator(faults=Faults(callback_delay=0.2))
    transfer(server, LAN, HONG, preview=False, receiver=receiver)
    assert sim.wait_idle(10)
    assert len(receiver.wait_for(1)) == 1


def test_reordered_callbacks_come_out_of_order(make_simulator, receiver):
    sim, server = make_simulator(faults=Faults(reorder_callbacks=True), seed=3)
    sent = [
        transfer(server, LAN, HONG, preview=False, receiver=receiver).json()["payload"]["requestId"]
        for _ in range(20)
    ]
    assert sim.wait_idle(10)
    got = [c["body"]["requestId"] for c in receiver.wait_for(20)]
    assert sorted(got) == sorted(sent) and got != sent


def test_failed_callbacks_say_error_and_move_nothing(make_simulator, receiver):
    sim, server = make_simulator(faults=Faults(callback_error_rate=1.0))
    transfer(server, LAN, HONG, preview=False, receiver=receiver)
    assert sim.wait_idle(10)
    [callback] = receiver.wait_for(1)
    assert (callback["body"]["status"], callback["body"]["payload"]) == (
        "ERROR",
        {"updatedRecords": 0},
    )
    assert sim.count(LAN, HONG) == 19


def test_an_unreachable_callback_url_is_recorded(simulator):
    sim, server = simulator
    body = {
        "sourceEmail": LAN,
        "targetEmail": HONG,
        "callbackResultConfig": {"url": "http://127.0.0.1:9/cb", "headers": {}},
    }
    post(server, TRANSFER, body)
    assert sim.wait_idle(10)
    [event] = callbacks_of(sim)
    assert event["delivery"].startswith("ConnectionError: ")


def test_the_same_seed_gives_the_same_faults(make_simulator):
    outcomes = []
    for _ in range(2):
        sim, server = make_simulator(faults=Faults(error_rate=0.3, rate_limit_rate=0.3), seed=7)
        outcomes.append([transfer(server, LAN, HONG, preview=True).status_code for _ in range(12)])
    assert outcomes[0] == outcomes[1] and len(set(outcomes[0])) > 1


def test_faults_can_change_while_running(simulator):
    sim, server = simulator
    sim.faults.rate_limit_rate = 1.0
    assert transfer(server, LAN, HONG, preview=True).status_code == 429
    sim.faults.rate_limit_rate = 0
    assert transfer(server, LAN, HONG, preview=True).status_code == 200


# --------------------------------------------------------------------------- tickets

TICKETS = "/api/v3/agent/ticket/transfer"
THU, KHOA, QUANG = "thu.dang@example.vn", "khoa.duong@example.vn", "quang.trinh@example.vn"


def ticket_transfer(server, source, target, *, preview, receiver=None, path="/cb/b/9/tickets"):
    body = {"sourceEmail": source, "targetEmail": target, "previewChanges": preview}
    if receiver is not None:
        body["callbackResultConfig"] = {"url": receiver.url + path, "headers": {"X-Token": "t-9"}}
    return post(server, TICKETS, body)


def open_tickets(sim, email):
    return [t["id"] for t in sim.tickets if t["assignee"] == email and t["status"] != "closed"]


def test_a_ticket_preview_counts_the_open_tickets_and_changes_nothing(simulator):
    sim, server = simulator
    before = sim.tickets
    answer = ticket_transfer(server, BAO, KHOA, preview=True)
    assert answer.status_code == 200
    payload = answer.json()["payload"]
    assert payload["updatedRecords"] == sim.count_tickets(BAO, KHOA) == 7
    assert len(open_tickets(sim, BAO)) == 7
    assert sum(t["assignee"] == BAO for t in sim.tickets) == 10  # 3 are closed: never moved
    assert set(payload) == {"updatedRecords", "requestId"}
    assert sim.tickets == before


def test_a_ticket_execute_answers_202_moves_the_tickets_and_calls_back(simulator, receiver):
    sim, server = simulator
    moving = open_tickets(sim, THU)
    answer = ticket_transfer(server, THU, KHOA, preview=False, receiver=receiver)
    assert answer.status_code == 202 and answer.json()["status_code"] == 9999
    request_id = answer.json()["payload"]["requestId"]
    assert sim.wait_idle(10)
    [callback] = receiver.wait_for(1)
    assert (callback["path"], callback["token"]) == ("/cb/b/9/tickets", "t-9")
    body = callback["body"]
    assert (body["requestId"], body["action"], body["status"], body["payload"]) == (
        request_id, "TICKET_AGENT_TRANSFER", "SUCCESS", {"updatedRecords": 8}
    )  # fmt: skip
    assert sorted(moving) == sorted(t["id"] for t in sim.tickets if t["id"] in moving
                                    and t["assignee"] == KHOA)  # fmt: skip
    assert sim.count_tickets(THU, KHOA) == 0
    assert ticket_transfer(server, THU, KHOA, preview=True).json()["payload"]["updatedRecords"] == 0
    assert sim.count(THU, KHOA) > 0  # the conversations did not move with the tickets


def test_a_ticket_transfer_leaves_the_conversations_and_back(simulator, receiver):
    sim, server = simulator
    conversations, tickets = sim.count(LAN, HONG), sim.count_tickets(LAN, HONG)
    transfer(server, LAN, HONG, preview=False, receiver=receiver)
    assert sim.wait_idle(10)
    assert (sim.count(LAN, HONG), sim.count_tickets(LAN, HONG)) == (0, tickets)
    ticket_transfer(server, LAN, HONG, preview=False, receiver=receiver)
    assert sim.wait_idle(10)
    actions = [c["body"]["action"] for c in receiver.wait_for(2)]
    assert actions == ["CONVERSATION_AGENT_TRANSFER", "TICKET_AGENT_TRANSFER"]
    assert [c["body"]["payload"]["updatedRecords"] for c in receiver.received] == [
        conversations, tickets
    ]  # fmt: skip


def test_with_ticket_callbacks_off_tickets_move_but_nothing_calls_back(make_simulator, receiver):
    sim, server = make_simulator(ticket_callbacks=False)
    assert ticket_transfer(server, THU, KHOA, preview=False, receiver=receiver).status_code == 202
    assert sim.wait_idle(10)
    assert sim.count_tickets(THU, KHOA) == 0 and callbacks_of(sim) == []
    transfer(server, LAN, HONG, preview=False, receiver=receiver)  # conversations still call back
    assert sim.wait_idle(10)
    [callback] = receiver.wait_for(1)
    assert callback["body"]["action"] == "CONVERSATION_AGENT_TRANSFER"


@pytest.mark.parametrize("options", [{"preview_mode": "async"}, {"ticket_preview_mode": "async"}])
def test_an_async_ticket_preview_calls_back_with_the_count(make_simulator, receiver, options):
    sim, server = make_simulator(**options)
    answer = ticket_transfer(server, QUANG, KHOA, preview=True, receiver=receiver)
    assert answer.status_code == 202
    assert sim.wait_idle(10)
    [callback] = receiver.wait_for(1)
    assert callback["body"]["requestId"] == answer.json()["payload"]["requestId"]
    assert callback["body"]["payload"] == {"updatedRecords": 11}
    assert callback["body"]["action"] == "TICKET_AGENT_TRANSFER"
    assert sim.count_tickets(QUANG, KHOA) == 11


def test_a_ticket_preview_mode_of_its_own(make_simulator):
    sim, server = make_simulator(preview_mode="async", ticket_preview_mode="sync")
    answer = ticket_transfer(server, QUANG, KHOA, preview=True)
    assert (answer.status_code, answer.json()["payload"]["updatedRecords"]) == (200, 11)
    assert transfer(server, LAN, HONG, preview=True).status_code == 202


@pytest.mark.parametrize(("window", "expected"), [(None, 2), (200, 1), (30, 0)])
def test_the_ticket_window_is_an_option(make_simulator, window, expected):
    sim, _ = make_simulator(ticket_window_days=window, now="2026-11-25T00:00:00Z")
    assert sim.count_tickets("tuan.ho@example.vn", HONG) == expected


@pytest.mark.parametrize(("fault", "status"), [("permission_denied", 200), ("forbidden", 403)])
def test_a_key_without_the_ticket_permission_is_denied_on_tickets_only(
    make_simulator, receiver, fault, status
):
    sim, server = make_simulator(faults=Faults(ticket_fault=fault))
    answer = ticket_transfer(server, THU, KHOA, preview=False, receiver=receiver)
    assert answer.status_code == status
    assert (answer.json()["status_code"], answer.json()["message"]) == (-9999, "permission_denied")
    assert answer.json()["payload"] == {
        "error": "the key's role may not assign other agents' tickets"
    }
    assert failure_of(post(server, TICKETS, {}, key="wrong")) == (401, "api_key_invalid")
    assert transfer(server, LAN, HONG, preview=True).status_code == 200
    assert sim.wait_idle(5) and sim.count_tickets(THU, KHOA) == 8 and receiver.received == []


def failure_of(answer):
    return answer.status_code, answer.json()["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "source_email_required"),
        ({"sourceEmail": THU}, "target_email_required"),
        ({"sourceEmail": THU, "targetEmail": "long.ly@example.vn"}, "user_not_found"),
        ({"sourceEmail": THU, "targetEmail": KHOA, "previewChanges": 1}, "request_body_required"),
    ],
)
def test_a_bad_ticket_transfer_is_refused_in_the_envelope(simulator, body, message):
    sim, server = simulator
    assert failure_of(post(server, TICKETS, body)) == (200, message)
    assert sim.wait_idle(5) and sim.count_tickets(THU, KHOA) == 8


def test_a_ticket_transfer_ignores_conversation_fields(simulator):
    sim, server = simulator
    body = {"sourceEmail": THU, "targetEmail": KHOA, "convIds": ["x"],
            "replaceExistingMembers": True}  # fmt: skip
    assert post(server, TICKETS, body).status_code == 202
    assert sim.wait_idle(10) and sim.count_tickets(THU, KHOA) == 0
    assert sim.count(THU, KHOA) > 0


def test_a_failed_ticket_callback_says_error_and_moves_nothing(make_simulator, receiver):
    sim, server = make_simulator(faults=Faults(callback_error_rate=1.0))
    ticket_transfer(server, THU, KHOA, preview=False, receiver=receiver)
    assert sim.wait_idle(10)
    [callback] = receiver.wait_for(1)
    assert (callback["body"]["status"], callback["body"]["payload"]) == (
        "ERROR", {"updatedRecords": 0}
    )  # fmt: skip
    assert sim.count_tickets(THU, KHOA) == 8


# --------------------------------------------------------------------------- script


def test_scripted_answers_come_in_order_on_any_endpoint(simulator):
    sim, server = simulator
    sim.script(
        {"status": 429, "body": "slow down", "headers": {"Retry-After": "7"}},
        {"status": 202, "body": {"status_code": 9999, "payload": {"requestId": "r-1"}}},
        {"status": 502, "body": b"\x00\x01"},
    )
    first = transfer(server, LAN, HONG, preview=False)
    assert (first.status_code, first.text, first.headers["Retry-After"]) == (429, "slow down", "7")
    second = post(server, "/api/social/message/list", {"conv_id": "x"})
    assert second.status_code == 202 and second.json()["payload"] == {"requestId": "r-1"}
    third = post(server, "/api/social/livetalk/new_room", {}, key="wrong")
    assert (third.status_code, third.content) == (502, b"\x00\x01")
    assert post(server, "/api/social/livetalk/new_room", {}, key="wrong").status_code == 401
    assert [(e["fault"], e["status"], e["request_id"]) for e in requests_of(sim)] == [
        ("scripted", 429, None),
        ("scripted", 202, "r-1"),
        ("scripted", 502, None),
        (None, 401, None),
    ]
    assert sim.wait_idle(5) and sim.count(LAN, HONG) == 19  # nothing applied


@pytest.mark.parametrize(
    ("send", "source", "target", "action", "left", "moved"),
    [
        (transfer, LAN, HONG, "CONVERSATION_AGENT_TRANSFER", "count", 19),
        (ticket_transfer, THU, KHOA, "TICKET_AGENT_TRANSFER", "count_tickets", 8),
    ],
    ids=["conversations", "tickets"],
)
def test_a_scripted_reset_with_apply_moves_and_calls_back(
    simulator, receiver, send, source, target, action, left, moved
):
    sim, server = simulator
    sim.script({"reset": True, "apply": True, "body": {"payload": {"requestId": "lost-1"}}})
    with pytest.raises(requests.exceptions.ConnectionError):
        send(server, source, target, preview=False, receiver=receiver)
    assert sim.wait_idle(10)
    [callback] = receiver.wait_for(1)
    body = callback["body"]
    assert (body["requestId"], body["action"], body["payload"]) == (
        "lost-1", action, {"updatedRecords": moved}
    )  # fmt: skip
    assert getattr(sim, left)(source, target) == 0


@pytest.mark.parametrize("answer", [{"stauts": 200}, "200", {"status": 200, "sleep": 1}])
def test_a_bad_scripted_answer_is_refused(simulator, answer):
    sim, _ = simulator
    with pytest.raises(UsageError, match="a scripted answer is a dict with keys"):
        sim.script(answer)


# --------------------------------------------------------------------------- events & secrets


def test_events_keep_every_request_and_callback_but_never_the_key(simulator, receiver):
    sim, server = simulator
    transfer(server, LAN, HONG, preview=True)
    transfer(server, LAN, HONG, preview=False, receiver=receiver)
    assert sim.wait_idle(10)
    post(server, TRANSFER, {}, key="wrong-key-123")
    events = sim.events
    assert [e["kind"] for e in events] == ["request", "request", "callback", "request"]
    assert [e.get("status") for e in events] == [200, 202, None, 401]
    first = events[0]
    assert set(first) == {"kind", "at", "method", "path", "status", "body", "request_id", "fault"}
    assert (first["method"], first["path"], first["status"]) == ("POST", TRANSFER, 200)
    assert first["body"] == {"sourceEmail": LAN, "targetEmail": HONG, "previewChanges": True}
    [callback] = callbacks_of(sim)
    assert set(callback) == {
        "kind", "at", "url", "request_id", "body", "delivery", "duplicate", "dropped"
    }  # fmt: skip
    assert callback["request_id"] == events[1]["request_id"]
    text = repr(events) + repr(sim)
    assert API_KEY not in text and "wrong-key-123" not in text
    events[0]["status"] = 999
    assert sim.events[0]["status"] == 200  # a copy


def test_a_request_comes_before_its_callback_in_events(simulator, receiver):
    sim, server = simulator
    for _ in range(5):
        transfer(server, MINH, HONG, preview=False, receiver=receiver)
    assert sim.wait_idle(10)
    seen = set()
    for event in sim.events:
        if event["kind"] == "request":
            seen.add(event["request_id"])
        else:
            assert event["request_id"] in seen


# --------------------------------------------------------------------------- set-up


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"preview_mode": "later"}, "preview_mode must be one of sync, async"),
        ({"preview_field": "records"}, "preview_field must be one of updatedRecords"),
        ({"window_days": 0}, "window_days must be at least 1"),
        ({"fixture": {"agents": "x"}}, "the fixture needs an 'agents' list"),
        ({"fixture": {"agents": [{"name": "x"}]}}, "the fixture: agent 1 has no email"),
        (
            {"fixture": {"agents": [], "conversations": [{"id": "c", "members": ["z@x.vn"]}]}},
            "the fixture: conversation c names unknown agents",
        ),
        ({"fixture": "/nonexistent/fixture.json"}, "cannot read fixture /nonexistent/fixture.json"),
        ({"auth": "token"}, "auth must be one of api-key, bearer, both, not 'token'"),
        ({"directory_auth": "none"}, "directory_auth must be one of api-key, bearer, both"),
        ({"token_lifetime": 0}, "token_lifetime must be seconds > 0, not 0"),
        ({"refuse_token_after": -1}, "refuse_token_after must be >= 0, not -1"),
        ({"rate_limit_retry_after": "body"}, "rate_limit_retry_after must be one of header"),
        ({"directory_shape": "rows"}, "directory_shape must be one of items, data, list"),
    ],
)
def test_bad_options_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message.replace("'", ".")):
        Simulator(**options)


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        ({"error_rate": 1.5}, "fault error_rate is a fraction: 0 to 1"),
        ({"drop_callbacks": 2}, "fault drop_callbacks is a fraction: 0 to 1"),
        ({"latency_ms": -1}, "fault latency_ms must be a number >= 0"),
        ({"retry_after": "1"}, "fault retry_after must be a number >= 0"),
    ],
)
def test_bad_faults_are_usage_errors(faults, message):
    with pytest.raises(UsageError, match=message):
        Faults(**faults)


def test_count_of_an_unknown_agent_is_not_found(simulator):
    sim, _ = simulator
    with pytest.raises(NotFound, match="no agent ghost@example.vn in the simulator"):
        sim.count("ghost@example.vn", HONG)


def test_stop_is_idempotent_and_a_stopped_simulator_refuses_connections(simulator):
    sim, server = simulator
    server.stop()
    server.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(server.url + TRANSFER, json={}, timeout=2)


def test_a_taken_port_is_a_usage_error(simulator):
    _, server = simulator
    port = int(server.url.rsplit(":", 1)[1])
    with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{port}"):
        Simulator().start(port=port)


# --------------------------------------------------------------------------- sample data


def test_the_fixture_file_is_what_make_fixture_builds():
    assert FIXTURE_PATH.read_text(encoding="utf-8") == dumps(build())
    assert (ROOT / "data" / "simulator_fixture.json").read_text(encoding="utf-8") == dumps(build())
    fixture = build()
    assert len(fixture["agents"]) == 15 and len(fixture["conversations"]) == 300
    assert {"Nguyễn Thị Lan", "Trần Văn Minh"} <= {a["name"] for a in fixture["agents"]}
    former = [(a["email"], a["is_active"], a["is_deleted"]) for a in fixture["agents"][12:]]
    assert former == [
        ("quang.trinh@example.vn", False, False),
        ("phuong.mac@example.vn", False, False),
        ("yen.ly@example.vn", False, True),
    ]
    assert all(a["is_active"] and not a["is_deleted"] for a in fixture["agents"][:12])
    ages = [
        (datetime.fromisoformat(fixture["as_of"]) - datetime.fromisoformat(c["created_at"])).days
        for c in fixture["conversations"]
    ]
    assert min(ages) < 30 and max(ages) > 330 and 100 < sum(a < 183 for a in ages) < 200


def test_the_sample_csv_matches_the_fixture(simulator):
    sim, server = simulator
    with open(ROOT / "data" / "sample_offboarding.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "source_email",
        "target_email",
        "replace_existing_members",
        "conv_ids",
        "scope",
        "note",
    ]
    assert 5 <= len(rows) <= 8
    [both] = [r for r in rows if r["scope"] == "both"]  # its conversations and open tickets
    assert sim.count_tickets(both["source_email"], both["target_email"]) == 2
    leaving = {r["source_email"]: r["target_email"] for r in rows if not r["conv_ids"]}
    assert leaving[LAN] == MINH and leaving[MINH] == HONG  # a chain: lan → minh → hong
    split = [r for r in rows if r["source_email"] == BAO]
    assert [bool(r["conv_ids"]) for r in split] == [True, False]
    assert any("Nguyễn Thị Lan" in r["note"] for r in rows)
    [failing] = [r for r in rows if r["target_email"] not in sim.agents]
    answer = transfer(server, failing["source_email"], failing["target_email"], preview=True)
    assert answer.json()["message"] == "user_not_found"
    for row in rows:  # run like the pipeline: chains resolved, conv_ids rows first, in order
        if row is failing:
            continue
        target = leaving.get(row["target_email"], row["target_email"])
        conv_ids = row["conv_ids"].split(";") if row["conv_ids"] else None
        replace = row["replace_existing_members"] == "true"
        assert sim.count(row["source_email"], target, conv_ids, replace) >= 1, row
        body = {"convIds": conv_ids} if conv_ids else {}
        transfer(
            server,
            row["source_email"],
            target,
            preview=False,
            replaceExistingMembers=replace,
            **body,
        )
        assert sim.wait_idle(10)


# --------------------------------------------------------------------------- the CLI


def simulator_serve(tmp_path, *flags: str) -> ServiceProcess:
    """``omi-batch simulator serve --port 0 FLAGS`` as its own process, in ``tmp_path``."""
    return ServiceProcess("simulator", "serve", "--port", "0", *flags, cwd=tmp_path,
                          env={"OMI_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1"})  # fmt: skip


def test_simulator_serve_runs_as_a_process(receiver, tmp_path):
    with simulator_serve(tmp_path, "-v", "--seed", "4") as served:
        assert served.first.startswith("OMI simulator listening on http://127.0.0.1:")
        url = served.url
        body = {
            "sourceEmail": LAN,
            "targetEmail": HONG,
            "callbackResultConfig": {
                "url": receiver.url + "/cb/b/2/execute",
                "headers": {"X-Token": "t"},
            },
        }
        answer = requests.post(
            url + TRANSFER, json=body, headers={"x-api-key": API_KEY}, timeout=10
        )
        assert answer.status_code == 202
        [callback] = receiver.wait_for(1, timeout=20)
        assert callback["body"]["requestId"] == answer.json()["payload"]["requestId"]
        assert callback["body"]["payload"] == {"updatedRecords": 19}
        assert served.stop() == 0
    err = served.stderr
    assert served.lines.get(timeout=10) is None  # nothing on stdout after the address line
    assert f"POST {TRANSFER} -> 202" in err
    assert "OMI simulator stopped." in err
    assert API_KEY not in err + served.first


def test_simulator_serve_plays_the_rate_limit_bearer_auth_directory_and_ticket_flags(
    receiver, tmp_path
):
    flags = ["--rate-limit", "0.001:60", "--rate-limit-retry-after", "none", "--auth", "bearer",
             "--token-lifetime", "600", "--no-token-expires-in", "--refuse-token-after", "1",
             "--directory-shape", "list", "--directory-fault", "forbidden",
             "--no-ticket-callbacks", "--ticket-window-days", "400"]  # fmt: skip
    with simulator_serve(tmp_path, "-v", *flags) as served:
        url = served.url
        auth = requests.get(url + "/api/auth", params={"apiKey": API_KEY}, timeout=10)
        payload = auth.json()["payload"]
        assert set(payload) == {"access_token", "access_type", "token_type"}
        bearer = {"Authorization": "Bearer " + payload["access_token"]}
        assert requests.post(url + TRANSFER, json={}, headers={"x-api-key": API_KEY}, timeout=10
                             ).json()["message"] == "auth_invalid"  # fmt: skip

        def tickets(preview: bool) -> requests.Response:
            body = {"sourceEmail": THU, "targetEmail": KHOA, "previewChanges": preview,
                    "callbackResultConfig": {"url": receiver.url + "/t", "headers": {}}}  # fmt: skip
            return requests.post(url + TICKETS, json=body, headers=bearer, timeout=10)

        assert tickets(preview=False).status_code == 202
        for _ in range(20):  # bounded: until the worker has moved the tickets
            if tickets(preview=True).json()["payload"]["updatedRecords"] == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the ticket transfer was never applied")
        body = {"sourceEmail": LAN, "targetEmail": HONG,
                "callbackResultConfig": {"url": receiver.url + "/c", "headers": {}}}  # fmt: skip
        assert (
            requests.post(url + TRANSFER, json=body, headers=bearer, timeout=10).status_code == 202
        )
        # the worker sends in order: had the tickets called back, it would have come first
        assert [c["path"] for c in receiver.wait_for(1, timeout=20)] == ["/c"]
        directory = requests.get(url + "/api/agent/list", headers=bearer, timeout=10)
        assert (directory.status_code, directory.json()["message"]) == (403, "permission_denied")
        refresh = requests.get(url + "/api/auth", params={"apiKey": API_KEY}, timeout=10)
        assert (refresh.status_code, refresh.json()["message"]) == (401, "api_key_invalid")
        for _ in range(70):  # bounded: the 60-request bucket runs dry
            refused = requests.get(url + "/api/auth", params={"apiKey": API_KEY}, timeout=10)
            if refused.status_code == 429:
                break
        assert refused.status_code == 429 and "Retry-After" not in refused.headers
        assert served.stop() == 0
    err = served.stderr
    assert f"POST {TICKETS} -> 202" in err and "GET /api/auth -> 429 [rate_limited]" in err
    assert receiver.received[0]["body"]["action"] == "CONVERSATION_AGENT_TRANSFER"
    assert API_KEY not in served.first + err and payload["access_token"] not in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rate-limit", "fast"], "Invalid value for '--rate-limit': --rate-limit is RPS[:BURST]"),
        (["--auth", "token"], "Invalid value for '--auth'"),
        (["--token-lifetime", "0"], "Invalid value for '--token-lifetime'"),
        (["--directory-fault", "down"], "Invalid value for '--directory-fault'"),
    ],
)
def test_simulator_serve_refuses_bad_flags_with_exit_2(runner, flags, message):
    from omi_batch.cli import cli

    result = runner.invoke(cli, ["simulator", "serve", *flags])
    assert result.exit_code == 2
    assert message in result.output

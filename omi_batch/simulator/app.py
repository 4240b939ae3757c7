"""The simulator's WSGI app: OMI's routes, envelope, credentials, rate limit and faults.

Order for every request: a scripted answer if one is queued (and nothing else); else the
hidden rate limit, the latency fault, the random faults (reset, 429, 5xx; slow is decided here
too), then routing and method, the credentials, the body, and the endpoint. Every request
becomes one event; neither the API key nor a token is ever in an event or a log line.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from waitress.channel import ClientDisconnected

from omi_batch.simulator.gate import Gate, retry_after_seconds
from omi_batch.simulator.model import Rejected
from omi_batch.simulator.operations import Operations
from omi_batch.simulator.state import State

log = logging.getLogger("omi_batch.simulator")

TRANSFER_PATH = "/api/v3/agent/conversation/transfer"
TICKET_TRANSFER_PATH = "/api/v3/agent/ticket/transfer"
LIST_PATH = "/api/social/message/list"
AUTH_PATH = "/api/auth"
AGENT_LIST_PATH = "/api/agent/list"
DIRECTORY_PAGE_SIZE = 50
# path → the method it takes; the chat paths (_ROOM_PATH) take POST
METHODS = {
    TRANSFER_PATH: "POST",
    TICKET_TRANSFER_PATH: "POST",
    LIST_PATH: "POST",
    AUTH_PATH: "GET",
    AGENT_LIST_PATH: "GET",
}
TICKET_PERMISSION = "the key's role may not assign other agents' tickets"
_ROOM_PATH = re.compile(r"^/api/social/([^/]+)/(new_room|guest_send_message)/?$")
CHANNELS = ("livetalk",)
MAX_BODY = 1_000_000
UNAVAILABLE_PAGE = "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"


class ResetConnection(ClientDisconnected):
    """Raised to make waitress close the connection without writing an answer."""


@dataclass
class Answer:
    status: int
    body: Any = None  # dict (JSON) | str | bytes | None
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False


def envelope(payload: Any = None, *, message: str | None = None) -> dict:
    """The vendor's envelope: ``status_code`` 9999 on success, -9999 with ``message`` on failure."""
    body = {
        "instance_id": "sim",
        "payload": payload,
        "instance_version": "sim-1",
        "key_enabled": True,
        "status_code": 9999 if message is None else -9999,
    }
    if message is not None:
        body["message"] = message
    return body


def _failure(code: str, error: str | None = None, status: int = 200) -> Answer:
    return Answer(status, envelope({"error": error} if error else None, message=code))


def _read_body(environ: dict) -> tuple[bytes, bool]:
    """(raw body, too large?)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY:
        return b"", True
    stream = environ.get("wsgi.input")
    raw = stream.read(length if length else MAX_BODY + 1) if stream else b""
    return raw, len(raw) > MAX_BODY


def _page(query: dict, name: str, default: int) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        number = int(values[0])
    except ValueError:
        number = 0
    if number < 1:
        raise Rejected("request_body_required", f"{name} must be a whole number from 1")
    return number


def _rate_limited(how: str, wait: float) -> Answer:
    """The answer to a request over the hidden rate limit, as ``rate_limit_retry_after`` says."""
    if how == "envelope":
        return _failure("rate_limit_exceeded", "too many requests")
    answer = _failure("rate_limit_exceeded", "too many requests", 429)
    if how == "header":
        answer.headers["Retry-After"] = str(retry_after_seconds(wait))
    return answer


def _request_id(answer: Answer) -> str | None:
    body = answer.body
    if isinstance(body, dict) and isinstance(body.get("payload"), dict):
        value = body["payload"].get("requestId")
        return value if isinstance(value, str) else None
    return None


def _encode(answer: Answer) -> tuple[bytes, list[tuple[str, str]]]:
    if isinstance(answer.body, dict | list | int | float):
        data = json.dumps(answer.body, ensure_ascii=False).encode("utf-8")
        kind = "application/json; charset=utf-8"
    elif isinstance(answer.body, str):
        data, kind = answer.body.encode("utf-8"), "text/plain; charset=utf-8"
    elif isinstance(answer.body, bytes):
        data, kind = answer.body, "application/octet-stream"
    else:
        data, kind = b"", "text/plain"
    headers = {"Content-Type": kind, **{str(k): str(v) for k, v in answer.headers.items()}}
    headers["Content-Length"] = str(len(data))
    return data, list(headers.items())


def _directory_fault(fault: str | None) -> Answer | None:
    """The answer of an agent directory that cannot be reached (checked before credentials)."""
    if fault == "not_found":
        return Answer(404, "<html><body><h1>404 Not Found</h1></body></html>",
                      {"Content-Type": "text/html"})  # fmt: skip
    if fault == "unavailable":
        return Answer(503, UNAVAILABLE_PAGE, {"Content-Type": "text/html"})
    if fault == "error":
        return _failure("internal_server_error", status=500)
    return None


def _permission_fault(fault: str | None, error: str) -> Answer | None:
    """permission_denied in the envelope (200), or with 403 ("forbidden")."""
    if fault == "permission_denied":
        return _failure("permission_denied", error)
    if fault == "forbidden":
        return _failure("permission_denied", error, 403)
    return None


def make_app(gate: Gate, operations: Operations, state: State) -> Callable:
    """The WSGI app that answers like OMI: each request through ``gate``, then the faults of
    ``state``, then its endpoint in ``operations``."""

    def handle(method: str, path: str, environ: dict, body: Any, slow: bool) -> Answer:
        room = _ROOM_PATH.match(path)
        route = path.rstrip("/")
        if route not in METHODS and not room:
            return _failure("resource_not_found", f"no endpoint {path}", 404)
        wanted = "POST" if room else METHODS[route]
        if method != wanted:
            return _failure("method_not_allowed", f"{route} takes {wanted}", 405)
        query = parse_qs(environ.get("QUERY_STRING") or "")
        if route == AUTH_PATH:
            payload, error = gate.issue_token((query.get("apiKey") or [""])[0])
            return Answer(200, envelope(payload)) if payload else _failure(error, status=401)
        if route == AGENT_LIST_PATH:
            unreachable = _directory_fault(state.faults.directory_fault)
            if unreachable:
                return unreachable
        auth_error = gate.check_auth(
            environ.get("HTTP_X_API_KEY"),
            environ.get("HTTP_AUTHORIZATION"),
            directory=route == AGENT_LIST_PATH,
        )
        if auth_error:
            return _failure(auth_error, status=401)
        try:
            if route == AGENT_LIST_PATH:
                denied = _permission_fault(
                    state.faults.directory_fault, "the key's role may not list agents"
                )
                if denied:
                    return denied
                page, size = _page(query, "page", 1), _page(query, "size", DIRECTORY_PAGE_SIZE)
                keyword = (query.get("keyword") or [""])[0]
                return Answer(200, envelope(operations.list_agents(page, size, keyword)))
        except Rejected as rejected:
            return _failure(rejected.code, rejected.error, rejected.http_status)
        if not isinstance(body, dict):
            return _failure("request_body_required", "the body must be a JSON object")
        try:
            if route == TICKET_TRANSFER_PATH:
                denied = _permission_fault(state.faults.ticket_fault, TICKET_PERMISSION)
                if denied:
                    return denied
                request = operations.parse_transfer(body, "tickets")
                status, payload = operations.transfer(request, apply_now=slow)
                return Answer(status, envelope(payload))
            if room:
                channel, action = room.groups()
                if channel not in CHANNELS:
                    raise Rejected("channel_not_supported", f"channel {channel}: only livetalk")
                if action == "new_room":
                    return Answer(200, envelope(operations.new_room(channel, body)))
                return Answer(200, envelope(operations.guest_send_message(body)))
            if route == LIST_PATH:
                page, size = _page(query, "page", 1), _page(query, "size", 15)
                return Answer(200, envelope(operations.list_messages(body, page, size)))
            status, payload = operations.transfer(operations.parse_transfer(body), apply_now=slow)
            return Answer(status, envelope(payload))
        except Rejected as rejected:
            return _failure(rejected.code, rejected.error, rejected.http_status)

    def scripted(script: dict, path: str, body: Any) -> tuple[Answer, str | None]:
        """The scripted answer, and the request id of a transfer it applied (if any)."""
        answer = Answer(
            status=int(script.get("status", 200)),
            body=script.get("body"),
            headers=dict(script.get("headers") or {}),
            delay=float(script.get("delay") or 0),
            reset=bool(script.get("reset")),
        )
        kind = {TRANSFER_PATH: "conversations", TICKET_TRANSFER_PATH: "tickets"}.get(
            path.rstrip("/")
        )
        if script.get("apply") and kind and isinstance(body, dict):
            try:
                request = operations.parse_transfer(body, kind)
            except Rejected:
                return answer, _request_id(answer)
            if not request.preview:
                request_id = _request_id(answer) or str(uuid.uuid4())
                operations.transfer(request, apply_now=True, request_id=request_id)
                return answer, request_id
        return answer, _request_id(answer)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO") or "/"
        raw, too_large = _read_body(environ)
        try:
            body = None if too_large else json.loads(raw) if raw else None
        except ValueError:
            body = None
        event: dict = {
            "kind": "request",
            "method": method,
            "path": path,
            "status": None,
            "body": body,  # as sent (the test double's record); only x-api-key is left out
            "request_id": None,
            "fault": None,
        }
        recorded = False
        script = gate.next_scripted()
        wait = 0.0 if script is not None else gate.admit()
        if wait:
            event["fault"] = "rate_limited"
            answer = _rate_limited(gate.rate_limit_retry_after, wait)
        elif script is None:
            faults = state.faults
            state.sleep(faults.latency_ms / 1000)
            if state.draw(faults.reset_rate):
                event["fault"], answer = "reset", Answer(0, reset=True)
            elif state.draw(faults.rate_limit_rate):
                event["fault"] = "rate_limit"
                answer = _failure("rate_limit_exceeded", "too many requests", 429)
                answer.headers["Retry-After"] = f"{faults.retry_after:g}"
            elif state.draw(faults.error_rate):
                event["fault"] = "error"
                if state.choice([500, 503]) == 500:
                    answer = _failure("internal_server_error", status=500)
                else:
                    answer = Answer(503, UNAVAILABLE_PAGE, {"Content-Type": "text/html"})
            else:
                slow = state.draw(faults.slow_rate)
                if too_large:
                    answer = _failure("request_body_too_large", f"at most {MAX_BODY} bytes", 413)
                else:
                    with state.lock:  # the event is recorded before any callback of this request
                        answer = handle(method, path, environ, body, slow)
                        if slow:
                            event["fault"] = "slow"
                            answer.delay = faults.slow_seconds
                        event["status"], event["request_id"] = answer.status, _request_id(answer)
                        state.record(event)
                        recorded = True
        else:
            event["fault"] = "scripted"
            with state.lock:
                answer, event["request_id"] = scripted(script, path, body)
                event["status"] = None if answer.reset else answer.status
                state.record(event)
                recorded = True
        if not recorded:  # a fault answered: nothing was handled
            event["status"] = None if answer.reset else answer.status
            state.record(event)
        log.info(
            "%s %s -> %s%s",
            method,
            path,
            "no answer (reset)" if answer.reset else answer.status,
            f" [{event['fault']}]" if event["fault"] else "",
        )
        state.sleep(answer.delay)
        if answer.reset:
            raise ResetConnection("closed without an answer (simulated fault)")
        data, headers = _encode(answer)
        try:
            phrase = HTTPStatus(answer.status).phrase
        except ValueError:
            phrase = "Unknown"
        start_response(f"{answer.status} {phrase}", headers)
        return [data]

    return app

"""The simulator's WSGI app: OMI's routes, envelope, API key check and faults.

Order for every request: a scripted answer if one is queued (and nothing else); else the
latency fault, the random faults (reset, 429, 5xx; slow is decided here too), then routing,
the API key, the body, and the endpoint. Every request becomes one event.
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

from omi_batch.simulator.core import Rejected, Simulator

log = logging.getLogger("omi_batch.simulator")

TRANSFER_PATH = "/api/v3/agent/conversation/transfer"
LIST_PATH = "/api/social/message/list"
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


def make_app(sim: Simulator) -> Callable:
    """The WSGI app that answers like OMI, over ``sim``'s state."""

    def handle(method: str, path: str, environ: dict, body: Any, slow: bool) -> Answer:
        room = _ROOM_PATH.match(path)
        if path.rstrip("/") not in (TRANSFER_PATH, LIST_PATH) and not room:
            return _failure("resource_not_found", f"no endpoint {path}", 404)
        if method != "POST":
            return _failure("method_not_allowed", "every endpoint takes POST", 405)
        key_error = sim.check_key(environ.get("HTTP_X_API_KEY"))
        if key_error:
            return _failure(key_error, status=401)
        if not isinstance(body, dict):
            return _failure("request_body_required", "the body must be a JSON object")
        try:
            if room:
                channel, action = room.groups()
                if channel not in CHANNELS:
                    raise Rejected("channel_not_supported", f"channel {channel}: only livetalk")
                if action == "new_room":
                    return Answer(200, envelope(sim.new_room(channel, body)))
                return Answer(200, envelope(sim.guest_send_message(body)))
            if path.rstrip("/") == LIST_PATH:
                query = parse_qs(environ.get("QUERY_STRING") or "")
                page, size = _page(query, "page", 1), _page(query, "size", 15)
                return Answer(200, envelope(sim.list_messages(body, page, size)))
            status, payload = sim.transfer(sim.parse_transfer(body), apply_now=slow)
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
        if script.get("apply") and path.rstrip("/") == TRANSFER_PATH and isinstance(body, dict):
            try:
                request = sim.parse_transfer(body)
            except Rejected:
                return answer, _request_id(answer)
            if not request.preview:
                request_id = _request_id(answer) or str(uuid.uuid4())
                sim.transfer(request, apply_now=True, request_id=request_id)
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
        script = sim.next_scripted()
        if script is None:
            faults = sim.faults
            sim.sleep(faults.latency_ms / 1000)
            if sim.draw(faults.reset_rate):
                event["fault"], answer = "reset", Answer(0, reset=True)
            elif sim.draw(faults.rate_limit_rate):
                event["fault"] = "rate_limit"
                answer = _failure("rate_limit_exceeded", "too many requests", 429)
                answer.headers["Retry-After"] = f"{faults.retry_after:g}"
            elif sim.draw(faults.error_rate):
                event["fault"] = "error"
                if sim.choice([500, 503]) == 500:
                    answer = _failure("internal_server_error", status=500)
                else:
                    answer = Answer(503, UNAVAILABLE_PAGE, {"Content-Type": "text/html"})
            else:
                slow = sim.draw(faults.slow_rate)
                if too_large:
                    answer = _failure("request_body_too_large", f"at most {MAX_BODY} bytes", 413)
                else:
                    with sim.lock:  # the event is recorded before any callback of this request
                        answer = handle(method, path, environ, body, slow)
                        if slow:
                            event["fault"] = "slow"
                            answer.delay = faults.slow_seconds
                        event["status"], event["request_id"] = answer.status, _request_id(answer)
                        sim.record(event)
                        recorded = True
        else:
            event["fault"] = "scripted"
            with sim.lock:
                answer, event["request_id"] = scripted(script, path, body)
                event["status"] = None if answer.reset else answer.status
                sim.record(event)
                recorded = True
        if not recorded:  # a fault answered: nothing was handled
            event["status"] = None if answer.reset else answer.status
            sim.record(event)
        log.info(
            "%s %s -> %s%s",
            method,
            path,
            "no answer (reset)" if answer.reset else answer.status,
            f" [{event['fault']}]" if event["fault"] else "",
        )
        sim.sleep(answer.delay)
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

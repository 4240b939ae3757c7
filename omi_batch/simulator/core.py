"""The simulator's state: agents (and their directory), conversations, tickets, transfers,
faults, scripted answers, events, stats, and the worker that applies transfers and sends their
callbacks.

Everything mutable sits behind one lock (``Simulator._cond``) so the WSGI app can run in many
threads. Random faults come from ``random.Random(seed)`` so a run can be repeated; request ids
are real UUIDs so two runs never share one (a ledger may outlive a simulator).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omi_batch.config import Secret
from omi_batch.errors import NotFound, UsageError
from omi_batch.simulator.gate import (
    AUTH_MODES,
    RATE_LIMIT_ANSWERS,
    Credentials,
    TokenBucket,
    parse_rate_limit,
)
from omi_batch.simulator.model import (
    ACTIONS,
    CALLBACK_TIMEOUT,
    DAY_SECONDS,
    DIRECTORY_SHAPES,
    EVENT_LIMIT,
    FIXTURE_PATH,
    PREVIEW_FIELDS,
    PREVIEW_MODES,
    QUEUE_LIMIT,
    REORDER_GROUP,
    REORDER_WINDOW,
    SCRIPT_KEYS,
    TICKET_OPEN,
    Faults,
    Rejected,
    TransferRequest,
)

if TYPE_CHECKING:
    from omi_batch.serving import Running

log = logging.getLogger("omi_batch.simulator")


def _parse_time(value: Any, what: str) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"{what} is not an ISO date-time: {value!r}") from None
    else:
        raise UsageError(f"{what} is not an ISO date-time: {value!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ms(moment: datetime | None = None) -> int:
    return int((moment.timestamp() if moment else time.time()) * 1000)


def _agent_id(email: str) -> str:
    """A stable 24-hex id for an agent (the same email, the same id, every run)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "omi-simulator:" + email).hex[:24]


def _new_id() -> str:
    """A 24-hex id shaped like OMI's (Mongo ObjectId: time, then random)."""
    return f"{int(time.time()):08x}{uuid.uuid4().int & (2**64 - 1):016x}"


def load_fixture(
    fixture: str | Path | dict | None, now: datetime
) -> tuple[dict[str, dict], list[dict], list[dict]]:
    """Agents (email → {"name", "active", "deleted"}), conversations and tickets from a fixture
    file or dict.

    A fixture with ``as_of`` has relative dates: they move by whole days so that ``as_of`` is
    ``now``, and the sample keeps the same conversations inside the 6-month window every day.
    """
    where = "the fixture"
    if fixture is None:
        fixture = FIXTURE_PATH
    if isinstance(fixture, str | Path):
        where = f"fixture {fixture}"
        try:
            data = json.loads(Path(fixture).read_text(encoding="utf-8"))
        except OSError as error:
            raise UsageError(f"cannot read {where}: {error.strerror or error}") from None
        except ValueError as error:
            raise UsageError(f"{where} is not JSON: {error}") from None
    else:
        data = fixture
    if not isinstance(data, dict) or not isinstance(data.get("agents"), list):
        raise UsageError(f"{where} needs an 'agents' list")
    shift = timedelta(0)
    if data.get("as_of"):
        shift = timedelta(days=(now - _parse_time(data["as_of"], f"{where}: as_of")).days)
    agents: dict[str, dict] = {}
    for number, agent in enumerate(data["agents"], 1):
        email = agent.get("email") if isinstance(agent, dict) else None
        if not isinstance(email, str) or "@" not in email:
            raise UsageError(f"{where}: agent {number} has no email")
        flags = (agent.get("is_active", True), agent.get("is_deleted", False))
        if not all(isinstance(flag, bool) for flag in flags):
            raise UsageError(f"{where}: agent {email}: is_active and is_deleted are true or false")
        agents[email.strip().lower()] = {
            "name": str(agent.get("name") or email),
            "active": flags[0] and not flags[1],
            "deleted": flags[1],
        }
    conversations: list[dict] = []
    seen: set[str] = set()
    for number, raw in enumerate(data.get("conversations") or [], 1):
        conv_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(conv_id, str) or not conv_id or conv_id in seen:
            raise UsageError(f"{where}: conversation {number} has no id, or a repeated one")
        seen.add(conv_id)
        members = [str(m).strip().lower() for m in raw.get("members") or []]
        unknown = [m for m in members if m not in agents]
        if unknown:
            raise UsageError(f"{where}: conversation {conv_id} names unknown agents {unknown}")
        created = _parse_time(raw.get("created_at"), f"{where}: conversation {conv_id}")
        conversations.append(
            {
                "id": conv_id,
                "uuid": str(raw.get("uuid") or conv_id),
                "channel": str(raw.get("channel") or "livetalk"),
                "guest_info": dict(raw.get("guest_info") or {}),
                "members": members,
                "created": created + shift,
            }
        )
    tickets: list[dict] = []
    seen = set()
    for number, raw in enumerate(data.get("tickets") or [], 1):
        ticket_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(ticket_id, str) or not ticket_id or ticket_id in seen:
            raise UsageError(f"{where}: ticket {number} has no id, or a repeated one")
        seen.add(ticket_id)
        assignee = str(raw.get("assignee") or "").strip().lower()
        if assignee not in agents:
            raise UsageError(f"{where}: ticket {ticket_id} has no assignee among the agents")
        created = _parse_time(raw.get("created_at"), f"{where}: ticket {ticket_id}")
        tickets.append(
            {
                "id": ticket_id,
                "subject": str(raw.get("subject") or ""),
                "assignee": assignee,
                "status": str(raw.get("status") or "open"),
                "created": created + shift,
            }
        )
    return agents, conversations, tickets


class _Worker(threading.Thread):
    """Applies executed transfers and sends callbacks, each at its due time, one at a time."""

    def __init__(self, sim: Simulator):
        super().__init__(name="omi-simulator-callbacks", daemon=True)
        self.sim = sim
        self.stopping = False

    def run(self) -> None:
        import requests

        session = requests.Session()
        cond = self.sim._cond
        try:
            while True:
                with cond:
                    while not self.stopping:
                        if self.sim._jobs:
                            wait = self.sim._jobs[0][0] - time.monotonic()
                            if wait <= 0:
                                break
                            cond.wait(wait)
                        else:
                            cond.wait()
                    if self.stopping:
                        return
                    job = heapq.heappop(self.sim._jobs)[-1]
                    self.sim._in_flight += 1
                    cond.notify_all()  # room in the queue
                try:
                    if job["kind"] == "apply":
                        self.sim._finish_transfer(job["request"], job["request_id"])
                    else:
                        self.sim._deliver(session, job)
                except Exception:  # a bug here must not kill the worker
                    log.exception("simulator worker failed on a %s job", job["kind"])
                finally:
                    with cond:
                        self.sim._in_flight -= 1
                        cond.notify_all()
        finally:
            session.close()


class Simulator:
    """A stand-in for OMI's API: agents, conversations, tickets, transfers and their callbacks.

    ``fixture`` is a path or a dict (None: the built-in sample); ``api_key`` is the only
    accepted key; ``preview_mode`` "sync" puts the count in the response, "async" sends it in a
    callback; ``preview_field`` is where a sync preview puts it ("number": the payload itself).
    ``now`` pins the calendar clock (default: the real time).

    Rate limit: ``rate_limit`` "RPS[:BURST]" is a token bucket over every request of every
    endpoint, never disclosed; a refused request is answered by ``rate_limit_retry_after``:
    "header" (429 with ``Retry-After`` in whole seconds), "none" (429 without it) or
    "envelope" (200, -9999 ``rate_limit_exceeded``), and nothing is applied.

    Auth: ``auth`` "api-key" (``x-api-key`` only), "bearer" (``Authorization: Bearer`` with a
    token from ``GET /api/auth?apiKey=``, only) or "both"; ``directory_auth`` is the same for
    the agent directory (default "bearer", as the vendor documents it). Tokens live
    ``token_lifetime`` seconds; ``refuse_token_after`` N: the (N+1)th token is refused.

    Directory: ``GET /api/agent/list`` answers in ``directory_shape`` "items", "data" or "list".
    Tickets: ``ticket_window_days`` (None: every open ticket, however old), ``ticket_callbacks``
    False: OMI sends no callback for tickets; ``ticket_preview_mode`` (None: as conversations).
    """

    def __init__(
        self,
        fixture: str | Path | dict | None = None,
        api_key: str | Secret = "sim-key",
        preview_mode: str = "sync",
        preview_field: str = "updatedRecords",
        faults: Faults | None = None,
        seed: int = 0,
        window_days: int = 183,
        now: datetime | str | None = None,
        *,
        rate_limit: str | float | None = None,
        rate_limit_retry_after: str = "header",
        auth: str = "api-key",
        directory_auth: str = "bearer",
        token_lifetime: float = DAY_SECONDS,
        token_expires_in: bool = True,
        refuse_token_after: int | None = None,
        directory_shape: str = "items",
        ticket_window_days: int | None = None,
        ticket_callbacks: bool = True,
        ticket_preview_mode: str | None = None,
    ):
        if preview_mode not in PREVIEW_MODES:
            raise UsageError(f"preview_mode must be one of {', '.join(PREVIEW_MODES)}")
        if ticket_preview_mode not in (None, *PREVIEW_MODES):
            raise UsageError(f"ticket_preview_mode must be one of {', '.join(PREVIEW_MODES)}")
        for name, value in (("auth", auth), ("directory_auth", directory_auth)):
            if value not in AUTH_MODES:
                raise UsageError(f"{name} must be one of {', '.join(AUTH_MODES)}, not {value!r}")
        if rate_limit_retry_after not in RATE_LIMIT_ANSWERS:
            raise UsageError(
                f"rate_limit_retry_after must be one of {', '.join(RATE_LIMIT_ANSWERS)}"
            )
        if directory_shape not in DIRECTORY_SHAPES:
            raise UsageError(f"directory_shape must be one of {', '.join(DIRECTORY_SHAPES)}")
        if ticket_window_days is not None and ticket_window_days < 1:
            raise UsageError("ticket_window_days must be at least 1 (or None: no window)")
        if preview_field not in PREVIEW_FIELDS:
            raise UsageError(f"preview_field must be one of {', '.join(PREVIEW_FIELDS)}")
        if window_days < 1:
            raise UsageError("window_days must be at least 1")
        self._credentials = Credentials(
            api_key if isinstance(api_key, Secret) else Secret(api_key),
            token_lifetime,
            refuse_token_after,
        )
        self.preview_mode = preview_mode
        self.preview_field = preview_field
        self.faults = faults if faults is not None else Faults()
        self.window_days = window_days
        self._bucket: TokenBucket | None = parse_rate_limit(rate_limit)
        self.rate_limit_retry_after = rate_limit_retry_after
        self.auth = auth
        self.directory_auth = directory_auth
        self.token_expires_in = token_expires_in
        self.directory_shape = directory_shape
        self.ticket_window_days = ticket_window_days
        self.ticket_callbacks = ticket_callbacks
        self.ticket_preview_mode = ticket_preview_mode
        self._stats = {"requests": 0, "admitted": 0, "refused": 0}
        self._fixed_now = None if now is None else _parse_time(now, "now")
        self._agents, self._conversations, self._tickets = load_fixture(fixture, self.now())
        self._by_id = {c["id"]: c for c in self._conversations}
        self._by_uuid = {c["uuid"]: c for c in self._conversations}
        self._messages: dict[str, list[dict]] = {}
        self._rng = random.Random(seed)
        self._cond = threading.Condition(threading.RLock())
        self._events: deque[dict] = deque(maxlen=EVENT_LIMIT)
        self._script: deque[dict] = deque()
        self._jobs: list[tuple] = []
        self._seq = itertools.count()
        self._in_flight = 0
        self._group_due = 0.0  # when the current group of reordered callbacks goes out
        self._group_size = 0
        self._worker: _Worker | None = None
        self._stopping = threading.Event()

    def __repr__(self) -> str:
        return (
            f"Simulator(agents={len(self._agents)}, conversations={len(self._conversations)}, "
            f"tickets={len(self._tickets)}, preview_mode={self.preview_mode!r}, "
            f"preview_field={self.preview_field!r}, auth={self.auth!r}, "
            f"rate_limit={self.rate_limit!r})"
        )

    # ----------------------------------------------------------------- public API

    def now(self) -> datetime:
        """The simulator's clock: ``now`` if pinned, else the real UTC time."""
        return self._fixed_now or datetime.now(UTC)

    @property
    def agents(self) -> dict[str, str]:
        """email → name of every agent OMI knows (former agents included)."""
        return {email: agent["name"] for email, agent in self._agents.items()}

    @property
    def directory(self) -> list[dict]:
        """Every agent as the directory lists it: ``{"email", "name", "is_active", "is_deleted"}``."""
        return [
            {"email": e, "name": a["name"], "is_active": a["active"], "is_deleted": a["deleted"]}
            for e, a in self._agents.items()
        ]

    @property
    def tickets(self) -> list[dict]:
        """A copy of every ticket: ``{"id", "assignee", "status", "created_at"}``."""
        with self._cond:
            return [
                {
                    "id": t["id"],
                    "assignee": t["assignee"],
                    "status": t["status"],
                    "created_at": _iso(t["created"]),
                }
                for t in self._tickets
            ]

    @property
    def rate_limit(self) -> str | None:
        """The hidden limit as "RPS:BURST" (None: no limit); settable while running."""
        bucket = self._bucket
        return None if bucket is None else f"{bucket.rate:g}:{bucket.burst}"

    @rate_limit.setter
    def rate_limit(self, spec: str | float | None) -> None:
        self._bucket = parse_rate_limit(spec)

    @property
    def refuse_token_after(self) -> int | None:
        """Tokens issued before ``/api/auth`` refuses every other (None: never); settable."""
        return self._credentials.refuse_token_after

    @refuse_token_after.setter
    def refuse_token_after(self, count: int | None) -> None:
        self._credentials.refuse_token_after = count

    @property
    def stats(self) -> dict[str, int]:
        """Counts so far: ``requests`` (all), ``admitted`` and ``refused`` by the rate limit
        (every unscripted request is admitted when there is none), ``tokens_issued``."""
        with self._cond:
            return dict(self._stats, tokens_issued=self._credentials.issued)

    def expire_tokens(self) -> int:
        """Make every token issued so far expired (a test's "24 hours later"); how many."""
        return self._credentials.expire_all()

    @property
    def conversations(self) -> list[dict]:
        """A copy of every conversation: ``{"id", "members", "created_at"}``."""
        with self._cond:
            return [
                {"id": c["id"], "members": list(c["members"]), "created_at": _iso(c["created"])}
                for c in self._conversations
            ]

    @property
    def events(self) -> list[dict]:
        """Every request and callback so far, in order (a copy)."""
        with self._cond:
            return [dict(e) for e in self._events]

    def script(self, *answers: dict) -> None:
        """Queue exact answers for the next API requests, in order, whatever the endpoint.

        Keys: ``status`` (default 200), ``body`` (dict → JSON, str, bytes), ``headers``,
        ``delay`` (seconds), ``reset`` (close the connection, no answer), ``apply`` (process
        the request for real first: an execute is applied and its callback sent).
        """
        for answer in answers:
            if not isinstance(answer, dict) or not set(answer) <= SCRIPT_KEYS:
                raise UsageError(f"a scripted answer is a dict with keys {sorted(SCRIPT_KEYS)}")
        with self._cond:
            self._script.extend(dict(a) for a in answers)

    def count(
        self,
        source: str,
        target: str,
        conv_ids: list[str] | tuple[str, ...] | None = None,
        replace: bool = False,
    ) -> int:
        """How many conversations a preview of this transfer would count right now."""
        source, target = self._known(source), self._known(target)
        with self._cond:
            return len(
                self._changes(source, target, tuple(conv_ids) if conv_ids else None, replace)
            )

    def count_tickets(self, source: str, target: str) -> int:
        """How many tickets a preview of this ticket transfer would count right now."""
        source, target = self._known(source), self._known(target)
        with self._cond:
            return len(self._ticket_changes(source, target))

    def _known(self, email: str) -> str:
        email = email.strip().lower()
        if email not in self._agents:
            raise NotFound(f"no agent {email} in the simulator")
        return email

    def wait_idle(self, timeout: float = 10) -> bool:
        """True once no transfer or callback is pending or in flight; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._jobs or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def start(self, host: str = "127.0.0.1", port: int = 0, *, threads: int = 32) -> Running:
        """Serve the API with waitress in a daemon thread; returns a handle with ``url``, ``stop()``."""
        from omi_batch.simulator.server import start

        return start(self, host, port, threads=threads)

    def close(self) -> None:
        """Stop the worker (pending callbacks are dropped) and wake every sleeping answer."""
        self._stopping.set()
        with self._cond:
            worker, self._worker = self._worker, None
            self._jobs.clear()
            if worker:
                worker.stopping = True
            self._cond.notify_all()
        if worker and worker is not threading.current_thread():
            worker.join(timeout=CALLBACK_TIMEOUT + 3)

    # ----------------------------------------------------------------- used by the app

    @property
    def lock(self) -> threading.Condition:
        """The one lock over all state (re-entrant)."""
        return self._cond

    def check_auth(self, api_key: str | None, authorization: str | None, mode: str) -> str | None:
        """None if the request's credentials pass ``mode``, else the error code (HTTP 401)."""
        return self._credentials.check(mode, api_key, authorization)

    def issue_token(self, presented: str | None) -> tuple[dict | None, str | None]:
        """``GET /api/auth``: (the payload, None) for the right key, else (None, error code)."""
        token, error = self._credentials.issue(presented)
        if token is None:
            return None, error
        payload: dict[str, Any] = {
            "access_token": token,
            "access_type": "api_key",
            "token_type": "Bearer",
        }
        if self.token_expires_in:
            payload["expires_in"] = int(self._credentials.token_lifetime)
        return payload, None

    def admit(self) -> float:
        """Count one request against the hidden rate limit: 0 admitted, else seconds to wait."""
        bucket = self._bucket
        wait = bucket.take() if bucket is not None else 0.0
        with self._cond:
            self._stats["refused" if wait else "admitted"] += 1
        return wait

    def count_request(self) -> None:
        with self._cond:
            self._stats["requests"] += 1

    def next_scripted(self) -> dict | None:
        with self._cond:
            return self._script.popleft() if self._script else None

    def draw(self, rate: float) -> bool:
        """One repeatable coin toss; a rate of 0 draws nothing, so it shifts no other fault."""
        if rate <= 0:
            return False
        with self._cond:
            return self._rng.random() < rate

    def choice(self, options: list) -> Any:
        with self._cond:
            return self._rng.choice(options)

    def sleep(self, seconds: float) -> None:
        """Wait, but wake at once when the simulator stops."""
        if seconds > 0:
            self._stopping.wait(seconds)

    def record(self, event: dict) -> None:
        event.setdefault("at", datetime.now(UTC).isoformat(timespec="milliseconds"))
        with self._cond:
            self._events.append(event)

    def agent(self, email: str, field: str) -> str:
        email = email.strip().lower()
        if email not in self._agents:
            raise Rejected("user_not_found", f"{field}: no agent with email {email}")
        return email

    def new_room(self, channel: str, body: dict) -> dict:
        """Create (or return, if ``uuid`` exists) a conversation. ``members`` is a simulator
        extension: agent emails, so a test can make conversations a transfer will find."""
        room_uuid = body.get("uuid") or ""
        guest = body.get("guest_info") or {}
        if not isinstance(room_uuid, str) or not isinstance(guest, dict):
            raise Rejected("request_body_required", "uuid is a string, guest_info an object")
        members = body.get("members") or []
        if not isinstance(members, list):
            raise Rejected("request_body_required", "members is a list of agent emails")
        members = [self.agent(str(m), "members") for m in members]
        with self._cond:
            conversation = self._by_uuid.get(room_uuid) if room_uuid else None
            if conversation is None:
                conv_id = _new_id()
                conversation = {
                    "id": conv_id,
                    "uuid": room_uuid or conv_id,
                    "channel": channel,
                    "guest_info": dict(guest),
                    "members": members,
                    "created": self.now(),
                }
                self._conversations.append(conversation)
                self._by_id[conv_id] = conversation
                self._by_uuid[conversation["uuid"]] = conversation
            return {"conversation": self._room_view(conversation)}

    def guest_send_message(self, body: dict) -> dict:
        room_uuid, content = body.get("uuid"), body.get("content")
        if not isinstance(room_uuid, str) or not room_uuid:
            raise Rejected("uuid_required", "uuid: the conversation's uuid is required")
        if not isinstance(content, str) or not content:
            raise Rejected("content_required", "content: the message text is required")
        multimedias = body.get("multimedias")
        if multimedias is not None and not isinstance(multimedias, list):
            raise Rejected("request_body_required", "multimedias is a list")
        with self._cond:
            conversation = self._by_uuid.get(room_uuid)
            if conversation is None:
                raise Rejected("resource_not_found", f"no conversation with uuid {room_uuid}")
            stamp = _ms()
            message = {
                "created_date": stamp,
                "last_updated_date": stamp,
                "_id": _new_id(),
                "room_id": conversation["id"],
                "member_type": "guest",
                "type": "chat",
                "content": content,
                "multimedias": multimedias,
                "kind": "normal",
                "uuid": str(uuid.uuid4()),
                "conv_uuid": conversation["uuid"],
                "guest_info": conversation["guest_info"] or None,
            }
            self._messages.setdefault(conversation["id"], []).append(message)
            return dict(message)

    def list_messages(self, body: dict, page: int, size: int) -> list[dict]:
        """A page of a conversation's messages, newest first. ``conv_id`` may be id or uuid."""
        conv_id = body.get("conv_id")
        if not isinstance(conv_id, str) or not conv_id:
            raise Rejected("conv_id_required", "conv_id: the conversation id is required")
        with self._cond:
            conversation = self._by_id.get(conv_id) or self._by_uuid.get(conv_id)
            if conversation is None:
                raise Rejected("resource_not_found", f"no conversation {conv_id}")
            messages = list(reversed(self._messages.get(conversation["id"], [])))
            return [dict(m) for m in messages[(page - 1) * size : page * size]]

    def list_agents(self, page: int, size: int, keyword: str) -> Any:
        """``GET /api/agent/list``: a page of the directory in ``directory_shape``; ``keyword``
        matches any part of the email or the name, without case. Past the end: an empty page."""
        needle = keyword.strip().casefold()
        matches = [
            (email, agent)
            for email, agent in self._agents.items()
            if not needle or needle in email or needle in agent["name"].casefold()
        ]
        chosen = matches[(page - 1) * size : page * size]
        if self.directory_shape == "data":
            items = [
                {
                    "id": _agent_id(email),
                    "identify_info": email,
                    "fullname": agent["name"],
                    "is_active": agent["active"],
                    "is_deleted": agent["deleted"],
                }
                for email, agent in chosen
            ]
            return {"data": items, "total": len(matches), "page_number": page, "page_size": size}
        items = [
            {
                "_id": _agent_id(email),
                "identify_info": email,
                "full_name": agent["name"],
                "name": agent["name"],
                "email": email,
                "is_active": agent["active"],
                "is_deleted": agent["deleted"],
                "role": "agent",
            }
            for email, agent in chosen
        ]
        if self.directory_shape == "list":
            return items
        return {"items": items, "page": page, "size": size, "total_items": len(matches)}

    def parse_transfer(self, body: dict, kind: str = "conversations") -> TransferRequest:
        """Check a transfer body the way OMI would; raise Rejected with the first problem.

        A ticket transfer reads only sourceEmail, targetEmail, previewChanges and
        callbackResultConfig (anything else is ignored, as unknown fields are)."""
        source, target = body.get("sourceEmail"), body.get("targetEmail")
        if not isinstance(source, str) or not source.strip():
            raise Rejected("source_email_required", "sourceEmail is required")
        if not isinstance(target, str) or not target.strip():
            raise Rejected("target_email_required", "targetEmail is required")
        for name in ("previewChanges", "replaceExistingMembers"):
            if body.get(name) is not None and not isinstance(body[name], bool):
                raise Rejected("request_body_required", f"{name} must be true or false")
        conv_ids = body.get("convIds") if kind == "conversations" else None
        if conv_ids is not None and (
            not isinstance(conv_ids, list) or not all(isinstance(c, str) for c in conv_ids)
        ):
            raise Rejected("request_body_required", "convIds must be a list of strings")
        callback = body.get("callbackResultConfig")
        if callback is not None:
            url = callback.get("url") if isinstance(callback, dict) else None
            headers = callback.get("headers") if isinstance(callback, dict) else None
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise Rejected("request_body_required", "callbackResultConfig.url is required")
            if headers is not None and not isinstance(headers, dict):
                raise Rejected("request_body_required", "callbackResultConfig.headers is an object")
            callback = {"url": url, "headers": {str(k): str(v) for k, v in (headers or {}).items()}}
        return TransferRequest(
            source=self.agent(source, "sourceEmail"),
            target=self.agent(target, "targetEmail"),
            preview=bool(body.get("previewChanges")),
            replace=kind == "conversations" and bool(body.get("replaceExistingMembers")),
            conv_ids=tuple(conv_ids) if conv_ids else None,
            callback=callback,
            request_time_ms=_ms(),
            kind=kind,
        )

    def transfer(
        self, request: TransferRequest, *, apply_now: bool = False, request_id: str | None = None
    ) -> tuple[int, Any]:
        """Handle a parsed transfer; returns (HTTP status, payload) and queues what follows.

        A preview counts (sync: in the answer; async: in a callback). An execute is applied by
        the worker, which then sends the callback; ``apply_now`` applies it here instead
        (the slow fault and scripted ``apply``: the work is done even if the answer is late).
        """
        request_id = request_id or str(uuid.uuid4())
        if request.preview:
            with self._cond:
                count = len(self._request_changes(request))
            mode = self.preview_mode
            if request.kind == "tickets" and self.ticket_preview_mode:
                mode = self.ticket_preview_mode
            if mode == "sync":
                if self.preview_field == "number":
                    return 200, count
                return 200, {self.preview_field: count, "requestId": request_id}
            if request.callback:
                self._schedule_callback(request, request_id, "SUCCESS", count)
            return 202, {"requestId": request_id}
        if apply_now:
            self._finish_transfer(request, request_id)
        else:
            self._enqueue(
                {"kind": "apply", "request": request, "request_id": request_id}, time.monotonic()
            )
        return 202, {"requestId": request_id}

    # ----------------------------------------------------------------- internals

    def _room_view(self, conversation: dict) -> dict:
        stamp = _ms(conversation["created"])
        return {
            "created_date": stamp,
            "last_updated_date": stamp,
            "_id": conversation["id"],
            "guest_info": conversation["guest_info"] or None,
            "status": "active",
            "uuid": conversation["uuid"],
            "name": conversation["guest_info"].get("full_name"),
            "members": list(conversation["members"]),
            "last_message": None,
        }

    def _changes(
        self, source: str, target: str, conv_ids: tuple[str, ...] | None, replace: bool
    ) -> list[dict]:
        """The conversations this transfer would change now (call with the lock held)."""
        since = self.now() - timedelta(days=self.window_days)
        wanted = set(conv_ids) if conv_ids else None
        changes = []
        for conversation in self._conversations:
            members = conversation["members"]
            if source not in members or conversation["created"] < since:
                continue
            if wanted is not None and conversation["id"] not in wanted:
                continue
            if (members != [target]) if replace else (target not in members):
                changes.append(conversation)
        return changes

    def _ticket_changes(self, source: str, target: str) -> list[dict]:
        """The open tickets of ``source`` a ticket transfer would move now (lock held)."""
        since = None
        if self.ticket_window_days is not None:
            since = self.now() - timedelta(days=self.ticket_window_days)
        return [
            t
            for t in self._tickets
            if t["assignee"] == source
            and source != target
            and t["status"] in TICKET_OPEN
            and (since is None or t["created"] >= since)
        ]

    def _request_changes(self, request: TransferRequest) -> list[dict]:
        """What this request would change now, conversations or tickets (lock held)."""
        if request.kind == "tickets":
            return self._ticket_changes(request.source, request.target)
        return self._changes(request.source, request.target, request.conv_ids, request.replace)

    def _finish_transfer(self, request: TransferRequest, request_id: str) -> None:
        """Apply an executed transfer (or fail it, by the callback_error_rate fault), then
        queue its callback."""
        failed = self.draw(self.faults.callback_error_rate)
        updated = 0
        if not failed:
            with self._cond:
                changes = self._request_changes(request)
                for record in changes:
                    if request.kind == "tickets":
                        record["assignee"] = request.target
                    elif request.replace:
                        record["members"] = [request.target]
                    else:
                        record["members"].append(request.target)
                updated = len(changes)
        if request.callback:
            self._schedule_callback(request, request_id, "ERROR" if failed else "SUCCESS", updated)

    def _schedule_callback(
        self, request: TransferRequest, request_id: str, status: str, updated: int
    ) -> None:
        if request.kind == "tickets" and not self.ticket_callbacks:
            return  # the variant where OMI never calls back for tickets
        body = {
            "requestId": request_id,
            "requestTimeMs": request.request_time_ms,
            "action": ACTIONS[request.kind],
            "status": status,
            "responseTimeMs": _ms(),
            "payload": {"updatedRecords": updated},
        }
        job = {
            "kind": "callback",
            "url": request.callback["url"],
            "headers": request.callback["headers"],
            "request_id": request_id,
            "body": body,
            "duplicate": False,
        }
        if self.draw(self.faults.drop_callbacks):
            self.record(
                {
                    "kind": "callback",
                    "url": job["url"],
                    "request_id": request_id,
                    "body": body,
                    "delivery": None,
                    "duplicate": False,
                    "dropped": True,
                }
            )
            return
        copies = [job]
        if self.draw(self.faults.duplicate_callbacks):
            copies.append(dict(job, duplicate=True))
        due = time.monotonic() + self.faults.callback_delay
        for copy in copies:
            self._enqueue(copy, due)

    def _enqueue(self, job: dict, due: float) -> None:
        with self._cond:
            if self._worker is None:
                if self._stopping.is_set():
                    return  # stopped: nothing more goes out
                self._worker = _Worker(self)
                self._worker.start()
            worker = threading.current_thread() is self._worker  # must never wait on itself
            while len(self._jobs) >= QUEUE_LIMIT and not worker and not self._stopping.is_set():
                self._cond.wait(0.5)
            order: float = 0
            if job["kind"] == "callback" and self.faults.reorder_callbacks:
                if due > self._group_due or self._group_size >= REORDER_GROUP:
                    self._group_due, self._group_size = due + REORDER_WINDOW, 0
                due, order = self._group_due, self._rng.random()
                self._group_size += 1
            heapq.heappush(self._jobs, (due, order, next(self._seq), job))
            self._cond.notify_all()

    def _deliver(self, session: Any, job: dict) -> None:
        headers = {"Content-Type": "application/json", **job["headers"]}
        data = json.dumps(job["body"]).encode()
        try:
            response = session.post(
                job["url"], data=data, headers=headers, timeout=CALLBACK_TIMEOUT
            )
            response.close()
            delivery: int | str = response.status_code
        except Exception as error:  # any transport failure is the outcome, not a crash
            delivery = f"{type(error).__name__}: {error}"[:300]
        log.info("callback %s -> %s", job["request_id"], delivery)
        self.record(
            {
                "kind": "callback",
                "url": job["url"],
                "request_id": job["request_id"],
                "body": job["body"],
                "delivery": delivery,
                "duplicate": job["duplicate"],
                "dropped": False,
            }
        )

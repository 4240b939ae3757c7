"""The simulator as one object: ``Simulator`` holds its parts and is what tests, demos and the
CLI use. The parts: ``state`` (the world and the one lock), ``gate`` (scripted answers, the
hidden rate limit, credentials), ``operations`` (what each endpoint does to the state),
``delivery`` (the worker: transfers applied, callbacks sent), ``app`` (the WSGI app over them)
and ``server`` (serving it). Request ids are real UUIDs so two runs never share one (a ledger
may outlive a simulator).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from omi_batch.config import Secret
from omi_batch.errors import NotFound
from omi_batch.serving import Running
from omi_batch.simulator import server
from omi_batch.simulator.app import make_app
from omi_batch.simulator.delivery import Delivery
from omi_batch.simulator.fixtures import _iso, _parse_time, load_fixture
from omi_batch.simulator.gate import Credentials, Gate, parse_rate_limit
from omi_batch.simulator.model import DAY_SECONDS, Answers, Faults
from omi_batch.simulator.operations import Operations
from omi_batch.simulator.state import State


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
        answers = Answers(
            preview_mode=preview_mode, preview_field=preview_field, window_days=window_days,
            directory_shape=directory_shape, ticket_window_days=ticket_window_days,
            ticket_callbacks=ticket_callbacks, ticket_preview_mode=ticket_preview_mode,
        )  # fmt: skip
        self.gate = Gate(
            Credentials(
                api_key if isinstance(api_key, Secret) else Secret(api_key),
                token_lifetime,
                refuse_token_after,
            ),
            parse_rate_limit(rate_limit),
            auth=auth,
            directory_auth=directory_auth,
            rate_limit_retry_after=rate_limit_retry_after,
            token_expires_in=token_expires_in,
        )
        fixed_now = None if now is None else _parse_time(now, "now")
        agents, conversations, tickets = load_fixture(fixture, fixed_now or datetime.now(UTC))
        self.state = State(
            agents,
            conversations,
            tickets,
            faults=faults if faults is not None else Faults(),
            seed=seed,
            fixed_now=fixed_now,
        )
        self.delivery = Delivery(self.state)
        self.operations = Operations(self.state, self.delivery, answers)

    def __repr__(self) -> str:
        state, operations = self.state, self.operations
        return (
            f"Simulator(agents={len(state.agents)}, conversations={len(state.conversations)}, "
            f"tickets={len(state.tickets)}, preview_mode={operations.answers.preview_mode!r}, "
            f"preview_field={operations.answers.preview_field!r}, auth={self.gate.auth!r}, "
            f"rate_limit={self.rate_limit!r})"
        )

    # ----------------------------------------------------------------- public API

    def now(self) -> datetime:
        """The simulator's clock: ``now`` if pinned, else the real UTC time."""
        return self.state.now()

    @property
    def faults(self) -> Faults:
        """The fault knobs, read at each request: change them while running."""
        return self.state.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self.state.faults = faults

    @property
    def agents(self) -> dict[str, str]:
        """email → name of every agent OMI knows (former agents included)."""
        return {email: agent["name"] for email, agent in self.state.agents.items()}

    @property
    def directory(self) -> list[dict]:
        """Every agent as the directory lists it: ``{"email", "name", "is_active", "is_deleted"}``."""
        return [
            {"email": e, "name": a["name"], "is_active": a["active"], "is_deleted": a["deleted"]}
            for e, a in self.state.agents.items()
        ]

    @property
    def tickets(self) -> list[dict]:
        """A copy of every ticket: ``{"id", "assignee", "status", "created_at"}``."""
        with self.state.lock:
            return [
                {
                    "id": t["id"],
                    "assignee": t["assignee"],
                    "status": t["status"],
                    "created_at": _iso(t["created"]),
                }
                for t in self.state.tickets
            ]

    @property
    def rate_limit(self) -> str | None:
        """The hidden limit as "RPS:BURST" (None: no limit); settable while running."""
        bucket = self.gate.bucket
        return None if bucket is None else f"{bucket.rate:g}:{bucket.burst}"

    @rate_limit.setter
    def rate_limit(self, spec: str | float | None) -> None:
        self.gate.bucket = parse_rate_limit(spec)

    @property
    def refuse_token_after(self) -> int | None:
        """Tokens issued before ``/api/auth`` refuses every other (None: never); settable."""
        return self.gate.credentials.refuse_token_after

    @refuse_token_after.setter
    def refuse_token_after(self, count: int | None) -> None:
        self.gate.credentials.refuse_token_after = count

    @property
    def stats(self) -> dict[str, int]:
        """Counts so far: ``requests`` (all), ``admitted`` and ``refused`` by the rate limit
        (every unscripted request is admitted when there is none), ``tokens_issued``."""
        return self.gate.stats

    def expire_tokens(self) -> int:
        """Make every token issued so far expired (a test's "24 hours later"); how many."""
        return self.gate.credentials.expire_all()

    @property
    def conversations(self) -> list[dict]:
        """A copy of every conversation: ``{"id", "members", "created_at"}``."""
        with self.state.lock:
            return [
                {"id": c["id"], "members": list(c["members"]), "created_at": _iso(c["created"])}
                for c in self.state.conversations
            ]

    @property
    def events(self) -> list[dict]:
        """Every request and callback so far, in order (a copy)."""
        with self.state.lock:
            return [dict(e) for e in self.state.events]

    def script(self, *answers: dict) -> None:
        """Queue exact answers for the next API requests, in order, whatever the endpoint.

        Keys: ``status`` (default 200), ``body`` (dict → JSON, str, bytes), ``headers``,
        ``delay`` (seconds), ``reset`` (close the connection, no answer), ``apply`` (process
        the request for real first: an execute is applied and its callback sent).
        """
        self.gate.script(answers)

    def count(
        self,
        source: str,
        target: str,
        conv_ids: list[str] | tuple[str, ...] | None = None,
        replace: bool = False,
    ) -> int:
        """How many conversations a preview of this transfer would count right now."""
        source, target = self._known(source), self._known(target)
        with self.state.lock:
            return len(
                self.operations.changes(
                    source, target, tuple(conv_ids) if conv_ids else None, replace
                )
            )

    def count_tickets(self, source: str, target: str) -> int:
        """How many tickets a preview of this ticket transfer would count right now."""
        source, target = self._known(source), self._known(target)
        with self.state.lock:
            return len(self.operations.ticket_changes(source, target))

    def moving_pair(self) -> tuple[str, str]:
        """A (source, target) whose conversation transfer would move something now, the
        busiest source first: the transfer a test or benchmark needs without naming agents."""
        members = Counter(m for c in self.conversations for m in c["members"])
        agents = [email for email, _ in members.most_common()]
        for source in agents:
            for target in agents:
                if target != source and self.count(source, target) > 0:
                    return source, target
        raise NotFound("no conversation transfer in the simulator would move anything")

    def _known(self, email: str) -> str:
        email = email.strip().lower()
        if email not in self.state.agents:
            raise NotFound(f"no agent {email} in the simulator")
        return email

    def wait_idle(self, timeout: float = 10) -> bool:
        """True once no transfer or callback is pending or in flight; False after ``timeout``."""
        return self.delivery.wait_idle(timeout)

    def app(self) -> Callable:
        """The WSGI app that answers like OMI over this simulator."""
        return make_app(self.gate, self.operations, self.state)

    def start(self, host: str = "127.0.0.1", port: int = 0, *, threads: int = 32) -> Running:
        """Serve the API with waitress in a daemon thread; returns a handle with ``url``,
        ``stop()`` (which also ends the callback worker)."""
        self.state.stopping.clear()  # a simulator stopped before may serve again
        return server.start(self.app(), self.close, host, port, threads=threads)

    def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ready: Callable[[str], None] | None = None,
        threads: int = 32,
    ) -> None:
        """Serve the API until SIGTERM or Ctrl-C; calls ``ready(url)`` once listening."""
        self.state.stopping.clear()
        server.serve(self.app(), self.close, host, port, ready=ready, threads=threads)

    def close(self) -> None:
        """Stop the worker (pending callbacks are dropped) and wake every sleeping answer."""
        self.state.stopping.set()
        self.delivery.close()

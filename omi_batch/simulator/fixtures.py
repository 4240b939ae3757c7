"""Loading a fixture (a path or a dict) into the simulator's agents, conversations and
tickets, and the small time and id helpers the state shares."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from omi_batch.errors import UsageError
from omi_batch.simulator.model import (
    FIXTURE_PATH,
)


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

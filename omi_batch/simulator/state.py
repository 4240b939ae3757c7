"""The simulator's world and the one lock over it: agents, conversations, tickets, messages, the
events, the seeded coin for faults, the calendar clock. ``Operations`` and ``Delivery`` work on
it; ``Simulator`` builds it and reads it.

Everything mutable sits behind one lock (``State.lock``) so the WSGI app can run in many
threads. Random faults come from ``random.Random(seed)`` so a run can be repeated.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from datetime import UTC, datetime
from typing import Any

from omi_batch.simulator.model import EVENT_LIMIT, Faults


class State:
    """What the simulator knows and has seen, shared by its parts under ``lock``."""

    def __init__(
        self,
        agents: dict[str, dict],
        conversations: list[dict],
        tickets: list[dict],
        *,
        faults: Faults,
        seed: int,
        fixed_now: datetime | None,
    ):
        self.agents = agents
        self.conversations = conversations
        self.tickets = tickets
        self.by_id = {c["id"]: c for c in conversations}
        self.by_uuid = {c["uuid"]: c for c in conversations}
        self.messages: dict[str, list[dict]] = {}
        self.faults = faults
        self.fixed_now = fixed_now
        self.lock = threading.Condition(threading.RLock())
        self.stopping = threading.Event()
        self.events: deque[dict] = deque(maxlen=EVENT_LIMIT)
        self._rng = random.Random(seed)

    def now(self) -> datetime:
        """The calendar clock: ``fixed_now`` if pinned, else the real UTC time."""
        return self.fixed_now or datetime.now(UTC)

    def draw(self, rate: float) -> bool:
        """One repeatable coin toss; a rate of 0 draws nothing, so it shifts no other fault."""
        if rate <= 0:
            return False
        with self.lock:
            return self._rng.random() < rate

    def choice(self, options: list) -> Any:
        """One repeatable pick among ``options``."""
        with self.lock:
            return self._rng.choice(options)

    def random(self) -> float:
        """One repeatable number in [0, 1) (the order of reordered callbacks)."""
        with self.lock:
            return self._rng.random()

    def sleep(self, seconds: float) -> None:
        """Wait, but wake at once when the simulator stops."""
        if seconds > 0:
            self.stopping.wait(seconds)

    def record(self, event: dict) -> None:
        """Keep one request or callback event (the last EVENT_LIMIT are kept)."""
        event.setdefault("at", datetime.now(UTC).isoformat(timespec="milliseconds"))
        with self.lock:
            self.events.append(event)

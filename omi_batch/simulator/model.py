"""The simulator's vocabulary, with no behaviour: its constants, the ``Faults`` it can inject,
the ``Answers`` its endpoints give, a parsed transfer request, and ``Rejected`` (a refusal in
the vendor's envelope). Every other part of the simulator uses these, so none imports another
for them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from omi_batch.errors import UsageError

FIXTURE_PATH = Path(__file__).with_name("fixture.json")
PREVIEW_MODES = ("sync", "async")
PREVIEW_FIELDS = ("updatedRecords", "totalRecords", "total", "count", "number")
KINDS = ("conversations", "tickets")
ACTIONS = {"conversations": "CONVERSATION_AGENT_TRANSFER", "tickets": "TICKET_AGENT_TRANSFER"}
DIRECTORY_SHAPES = ("items", "data", "list")
DIRECTORY_FAULTS = ("permission_denied", "forbidden", "not_found", "unavailable", "error")
TICKET_FAULTS = ("permission_denied", "forbidden")
TICKET_OPEN = ("open", "in_progress")  # a closed ticket is never moved
DAY_SECONDS = 86_400
CALLBACK_TIMEOUT = 2.0  # OMI gives the partner's endpoint 2 seconds
QUEUE_LIMIT = 20_000  # jobs waiting for the worker; a full queue makes the API wait
EVENT_LIMIT = 200_000  # oldest events are forgotten beyond this
REORDER_WINDOW = 0.25  # seconds callbacks are held back when reorder_callbacks is on
REORDER_GROUP = 64  # at most this many callbacks shuffled together
SCRIPT_KEYS = frozenset({"status", "body", "headers", "delay", "reset", "apply"})


@dataclass(frozen=True)
class Answers:
    """How the endpoints answer (the variants OMI may turn out to have); see ``Simulator``."""

    preview_mode: str = "sync"
    preview_field: str = "updatedRecords"
    window_days: int = 183
    directory_shape: str = "items"
    ticket_window_days: int | None = None
    ticket_callbacks: bool = True
    ticket_preview_mode: str | None = None

    def __post_init__(self) -> None:
        if self.preview_mode not in PREVIEW_MODES:
            raise UsageError(f"preview_mode must be one of {', '.join(PREVIEW_MODES)}")
        if self.ticket_preview_mode not in (None, *PREVIEW_MODES):
            raise UsageError(f"ticket_preview_mode must be one of {', '.join(PREVIEW_MODES)}")
        if self.directory_shape not in DIRECTORY_SHAPES:
            raise UsageError(f"directory_shape must be one of {', '.join(DIRECTORY_SHAPES)}")
        if self.ticket_window_days is not None and self.ticket_window_days < 1:
            raise UsageError("ticket_window_days must be at least 1 (or None: no window)")
        if self.preview_field not in PREVIEW_FIELDS:
            raise UsageError(f"preview_field must be one of {', '.join(PREVIEW_FIELDS)}")
        if self.window_days < 1:
            raise UsageError("window_days must be at least 1")


@dataclass
class Faults:
    """What goes wrong, and how often. Everything is off by default; fractions are 0..1.

    May be changed while the simulator runs (``sim.faults.error_rate = 1.0``).
    """

    latency_ms: float = 0  # added before every API answer
    error_rate: float = 0  # answered 500 or 503; nothing applied
    rate_limit_rate: float = 0  # answered 429 with Retry-After; nothing applied
    retry_after: float = 1.0  # seconds put in Retry-After
    slow_rate: float = 0  # answered only after slow_seconds; the transfer IS applied first
    slow_seconds: float = 35.0
    reset_rate: float = 0  # connection closed with no answer; nothing applied
    drop_callbacks: float = 0  # callbacks never sent
    duplicate_callbacks: float = 0  # callbacks sent twice
    callback_delay: float = 0  # seconds before each callback is sent
    reorder_callbacks: bool = False  # hold callbacks back and send them shuffled
    callback_error_rate: float = 0  # executes whose callback says ERROR (nothing moved)
    # The agent directory answers: None (normally), permission_denied (200, -9999),
    # forbidden (403, permission_denied), not_found (404 page), unavailable (503 page), error (500)
    directory_fault: str | None = None
    # Ticket transfers answer: None (normally), permission_denied (200, -9999), forbidden (403);
    # the key lacks the permission to assign others' tickets, conversations still work
    ticket_fault: str | None = None

    def __post_init__(self) -> None:
        for name, allowed in (
            ("directory_fault", DIRECTORY_FAULTS),
            ("ticket_fault", TICKET_FAULTS),
        ):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise UsageError(f"fault {name} must be one of {', '.join(allowed)}, not {value!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("reorder_callbacks", "directory_fault", "ticket_fault"):
                continue
            if not isinstance(value, int | float) or value < 0:
                raise UsageError(f"fault {f.name} must be a number >= 0, not {value!r}")
            if f.name.endswith(("_rate", "_callbacks")) and value > 1:
                raise UsageError(f"fault {f.name} is a fraction: 0 to 1, not {value!r}")


@dataclass(frozen=True)
class TransferRequest:
    """One parsed conversation or ticket transfer body (``kind``: conversations | tickets)."""

    source: str
    target: str
    preview: bool
    replace: bool
    conv_ids: tuple[str, ...] | None
    callback: dict | None  # {"url", "headers"}
    request_time_ms: int
    kind: str = "conversations"


class Rejected(Exception):
    """A request the API refuses with the vendor's -9999 envelope (HTTP 200 unless said)."""

    def __init__(self, code: str, error: str | None = None, http_status: int = 200):
        super().__init__(code)
        self.code = code
        self.error = error
        self.http_status = http_status

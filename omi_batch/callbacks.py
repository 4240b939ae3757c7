"""How a transfer's callback URL and credential are made, and how a received one is checked.

Each transfer gets its own URL, ``{OMI_WEBHOOK_URL}/callbacks/{batch}/{row}/{phase}`` (a ticket
transfer's phase is ``tickets-preview`` / ``tickets-execute``), and its own header, ``X-Omi-Batch-Token: HMAC-SHA256(secret, "{batch}/{row}/{phase}")``. So a callback
names its row even if the runner died before it saved the ``requestId``, and one leaked header
opens no other row. OMI signs nothing (see docs/omi-api.md); this is all the protection there is.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from omi_batch.config import Secret

HEADER = "X-Omi-Batch-Token"
# A ticket transfer has its own phases, so its own URL and credential (issue 15).
PHASES = ("preview", "execute", "tickets-preview", "tickets-execute")
_PATH = re.compile(
    r"(?:^|/)callbacks/([A-Za-z0-9_.-]{1,64})/([0-9]{1,9})/((?:tickets-)?(?:preview|execute))/?$"
)


@dataclass(frozen=True)
class CallbackTarget:
    """Which transfer a callback URL belongs to."""

    batch_id: str
    row: int
    phase: str


def token(secret: Secret, batch_id: str, row: int, phase: str) -> str:
    message = f"{batch_id}/{row}/{phase}".encode()
    return hmac.new(secret.value.encode(), message, hashlib.sha256).hexdigest()


def callback_config(webhook_url: str, secret: Secret, batch_id: str, row: int, phase: str) -> dict:
    """The ``callbackResultConfig`` to send with one transfer."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}")
    return {
        "url": f"{webhook_url.rstrip('/')}/callbacks/{batch_id}/{row}/{phase}",
        "headers": {HEADER: token(secret, batch_id, row, phase)},
    }


def parse_path(path: str) -> CallbackTarget | None:
    """The transfer a request path names, or None. Any prefix before ``callbacks/`` is allowed
    (a reverse proxy may or may not strip one)."""
    match = _PATH.search(path)
    if not match:
        return None
    return CallbackTarget(match.group(1), int(match.group(2)), match.group(3))


def check(secret: Secret, target: CallbackTarget, presented: str | None) -> bool:
    """True when ``presented`` is this transfer's credential (compared in constant time)."""
    if not presented:
        return False
    expected = token(secret, target.batch_id, target.row, target.phase)
    return hmac.compare_digest(expected.encode(), presented.strip().encode())


def parse_listen(text: str) -> tuple[str, int] | None:
    """``"HOST:PORT"`` (``[::1]:8080`` too) as ``(host, port)``, or None when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return None
    return host.strip("[]"), int(port)

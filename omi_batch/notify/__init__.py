"""Notifications: tell people that a review waits, a batch finished, or something needs them.

Each notification URL is in apprise's syntax (``mailto://``, ``slack://``, ``msteams://``,
``json://``, …). A secret in a URL is never written in it: ``${NAME}`` stands for the value of
the environment variable ``NAME`` and is filled in only at the moment of sending, so the
expanded URL is never logged, stored or shown (apprise's own log lines are passed on with every
such value scrubbed). The value is inserted as written: percent-encode it in the variable if
it holds a character the URL cannot carry (``@``, ``/``, ``?``, ``#``).

Sending never fails or holds up the caller for long: each URL gets ``timeout`` seconds, the
whole call ``budget`` seconds, and a notification that could not be sent goes to the outbox, a
small JSON-lines file (rewritten atomically) that the next call tries first. An entry given up
on (after ``MAX_ATTEMPTS`` tries, or pushed out when the outbox is full) is logged as an error.

``urls`` (the URL templates), ``messages`` (what each notification says), ``delivery`` (one send
with apprise, its log scrubbed), ``outbox`` (what waits), ``notifier`` (``Notifier``, the façade).
"""

from __future__ import annotations

from omi_batch.notify.messages import (
    KINDS,
    MAX_LISTED,
    Message,
    batch_finished,
    file_rejected,
    review_waiting,
    rows_need_attention,
)
from omi_batch.notify.notifier import (
    BUDGET,
    MAX_ATTEMPTS,
    MAX_OUTBOX,
    TIMEOUT,
    Notifier,
    Outcome,
    notifier_for,
)
from omi_batch.notify.urls import check_url, missing_variables, redact, variables

__all__ = [
    "BUDGET",
    "KINDS",
    "MAX_ATTEMPTS",
    "MAX_LISTED",
    "MAX_OUTBOX",
    "TIMEOUT",
    "Message",
    "Notifier",
    "Outcome",
    "batch_finished",
    "check_url",
    "file_rejected",
    "missing_variables",
    "notifier_for",
    "redact",
    "review_waiting",
    "rows_need_attention",
    "variables",
]

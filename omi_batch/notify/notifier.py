"""The notifier: sends messages to every notification URL within a time budget, and keeps what
could not be sent in the outbox for the next call."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omi_batch.errors import ConfigError
from omi_batch.notify import delivery
from omi_batch.notify.messages import Message
from omi_batch.notify.outbox import Entry, read_entries, write_entries
from omi_batch.notify.urls import check_url, missing_variables, redact, scheme

log = logging.getLogger("omi_batch.notify")

TIMEOUT = 10.0  # seconds one URL gets to take a notification
BUDGET = 60.0  # seconds one call may spend sending, outbox included
MAX_ATTEMPTS = 50  # tries of one outbox entry before it is given up (about 4 h of 5-minute ticks)
MAX_OUTBOX = 200  # entries kept at most; the oldest is given up first


@dataclass
class Outcome:
    """What one call did: notifications sent, kept in the outbox for later, given up."""

    sent: int = 0
    kept: int = 0
    given_up: int = 0
    errors: list[str] = field(default_factory=list)


class Notifier:
    """Sends messages to a list of notification URLs; keeps what failed in ``outbox``.

    Without an outbox (a manual run), a notification that fails is logged and dropped.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        outbox: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = TIMEOUT,
        budget: float = BUDGET,
    ):
        self.urls = list(urls)
        for url in self.urls:
            check_url(url)
        self.outbox = Path(outbox) if outbox else None
        self._env = dict(os.environ if env is None else env)
        self.timeout = timeout
        self.budget = budget

    def __repr__(self) -> str:
        return f"Notifier(urls={[redact(u) for u in self.urls]!r}, outbox={self.outbox!r})"

    def check(self) -> None:
        """ConfigError naming the first variable a URL needs that is not set, or a URL whose
        service apprise does not know (nothing is sent)."""
        missing = missing_variables(self.urls, self._env)
        if missing:
            raise ConfigError(f"{missing[0]} is not set: a notification URL reads a secret "
                              "from it")  # fmt: skip
        known = delivery.schemas()
        for url in self.urls:
            if scheme(url) not in known:
                raise ConfigError(f"notification URL {redact(url)}: apprise knows no service "
                                  f"{scheme(url)}://")  # fmt: skip

    def send(self, *messages: Message) -> Outcome:
        """Try the outbox first, then each message to every URL; never raises for a failed
        send."""
        return self._deliver([Entry.of(url, m) for m in messages for url in self.urls])

    def flush(self) -> Outcome:
        """Try again what the outbox keeps (what a tick with nothing else to do calls)."""
        return self._deliver([])

    def pending(self) -> list[dict]:
        """The outbox's entries (templates only, never an expanded URL)."""
        return [asdict(e) for e in read_entries(self.outbox)]

    # ------------------------------------------------------------------ internals

    def _deliver(self, new: list[Entry]) -> Outcome:
        """Try what waits, then ``new``, within the budget; keep what failed in the outbox."""
        outcome = Outcome()
        waiting = read_entries(self.outbox)
        if not waiting and not new:
            return outcome
        deadline = time.monotonic() + self.budget
        kept: list[Entry] = []
        for entry in [*waiting, *new]:
            if time.monotonic() >= deadline:
                entry.last_error = entry.last_error or "not tried: the sending budget was spent"
                kept.append(entry)
                continue
            limit = min(self.timeout * 3, deadline - time.monotonic())
            error = delivery.send(entry.url, self._env, kind=entry.kind, title=entry.title,
                                  body=entry.body, attach=entry.attach, timeout=self.timeout,
                                  limit=limit)  # fmt: skip
            entry.attempts += 1
            if error is None:
                outcome.sent += 1
                log.info("notification sent: %s to %s", entry.kind, redact(entry.url))
                continue
            entry.last_error = error
            outcome.errors.append(f"{entry.kind} to {redact(entry.url)}: {error}")
            if self.outbox is None:
                outcome.given_up += 1
                log.error("notification not sent: %s to %s: %s", entry.kind,
                          redact(entry.url), error)  # fmt: skip
            elif entry.attempts >= MAX_ATTEMPTS:
                outcome.given_up += 1
                log.error("notification given up after %d attempts: %s to %s: %s",
                          entry.attempts, entry.kind, redact(entry.url), error)  # fmt: skip
            else:
                kept.append(entry)
                log.warning("notification not sent, kept in the outbox for the next try "
                            "(attempt %d): %s to %s: %s", entry.attempts, entry.kind,
                            redact(entry.url), error)  # fmt: skip
        if len(kept) > MAX_OUTBOX:
            dropped, kept = kept[: len(kept) - MAX_OUTBOX], kept[-MAX_OUTBOX:]
            outcome.given_up += len(dropped)
            log.error("notification outbox full: %d oldest notification(s) given up",
                      len(dropped))  # fmt: skip
        outcome.kept = len(kept) if self.outbox is not None else 0
        if self.outbox is not None and (kept or waiting):
            write_entries(self.outbox, kept)
        return outcome


def notifier_for(
    urls: Sequence[str],
    *,
    outbox: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
) -> Notifier | None:
    """The notifier for ``--notify URL`` (repeatable) or a job's ``notify`` list, checked
    (ConfigError for an unset variable or an unknown service); None when there is no URL."""
    if not urls:
        return None
    notifier = Notifier(urls, outbox=outbox, env=env)
    notifier.check()
    return notifier

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
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from omi_batch.errors import ConfigError, UsageError

log = logging.getLogger("omi_batch.notify")

KINDS = ("review_waiting", "batch_finished", "needs_attention")
TIMEOUT = 10.0  # seconds one URL gets to take a notification
BUDGET = 60.0  # seconds one call may spend sending, outbox included
MAX_ATTEMPTS = 50  # tries of one outbox entry before it is given up (about 4 h of 5-minute ticks)
MAX_OUTBOX = 200  # entries kept at most; the oldest is given up first
MAX_LISTED = 20  # targets or errors listed in one message at most
_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CREDENTIAL_WORDS = ("key", "secret", "token", "pass", "credential", "auth", "sig", "code")
_APPRISE_TYPES = {"review_waiting": "info", "batch_finished": "success",
                  "needs_attention": "warning"}  # fmt: skip


# --------------------------------------------------------------------------- URL templates


def variables(url: str) -> list[str]:
    """The environment variables ``url`` names with ``${NAME}``, in order; UsageError for a
    malformed reference (``${}``, ``${1X}``, an unclosed ``${``)."""
    names = []
    for match in _REFERENCE.finditer(url):
        name = match.group(1)
        if not _ENV_NAME.match(name):
            raise UsageError(f"notification URL {redact(url)}: ${{{name}}} is not the name of "
                             "an environment variable")  # fmt: skip
        names.append(name)
    if "${" in _REFERENCE.sub("", url):
        raise UsageError(f"notification URL {redact(url)}: a ${{ is not closed with }}")
    return names


def redact(url: str) -> str:
    """The URL as it may be shown: its scheme and host, every other part left out."""
    match = _SCHEME.match(url)
    if not match:
        return "'<not a URL>'"
    netloc = re.split(r"[/?#]", url[match.end() :], maxsplit=1)[0]
    host = netloc.rpartition("@")[2]
    return f"{match.group(1)}://{host}/…" if host else f"{match.group(1)}://…"


def check_url(url: str) -> None:
    """UsageError unless ``url`` is an apprise-style URL whose credential parts (password, and
    query values named like a credential) are all ``${NAME}`` references.

    Only the form is checked here (no apprise import): which services exist is checked when a
    notifier is built."""
    if not isinstance(url, str) or not _SCHEME.match(url.strip()):
        raise UsageError("a notification URL looks like scheme://… (apprise syntax, e.g. "
                         "mailto://, slack://, msteams://, json://)")  # fmt: skip
    variables(url)
    advice = "write ${NAME} there and keep the value in the environment variable NAME"
    netloc = _SCHEME.sub("", url).split("/", 1)[0].split("?", 1)[0]
    if "@" in netloc:
        userinfo = netloc.rpartition("@")[0]
        _, colon, password = userinfo.partition(":")
        if colon and password and not _REFERENCE.fullmatch(password):
            raise UsageError(f"notification URL {redact(url)} carries a password; {advice}")
    raw_query = url.split("?", 1)[1] if "?" in url else ""
    for name, value in parse_qsl(raw_query.split("#", 1)[0], keep_blank_values=True):
        if (
            any(word in name.lower() for word in _CREDENTIAL_WORDS)
            and value
            and not (_REFERENCE.fullmatch(value))
        ):
            raise UsageError(f"notification URL {redact(url)}: {name}= holds a value; {advice}")


def missing_variables(urls: Iterable[str], env: Mapping[str, str] | None = None) -> list[str]:
    """The variables the URLs name that are unset or empty in ``env``, each once."""
    env = os.environ if env is None else env
    missing: list[str] = []
    for url in urls:
        for name in variables(url):
            if not env.get(name) and name not in missing:
                missing.append(name)
    return missing


def _expand(url: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """The URL with its references filled in, and the values filled in (to scrub)."""
    values: list[str] = []

    def fill(match: re.Match) -> str:
        value = env.get(match.group(1)) or ""
        if not value:
            raise ConfigError(f"{match.group(1)} is not set: notification URL {redact(url)} "
                              "reads a secret from it")  # fmt: skip
        values.append(value)
        return value

    return _REFERENCE.sub(fill, url), values


def _with_timeouts(url: str, timeout: float) -> str:
    """Add apprise's connect and read timeouts (``cto``, ``rto``) unless the URL sets them."""
    query = url.split("?", 1)[1] if "?" in url else ""
    names = {name for name, _ in parse_qsl(query, keep_blank_values=True)}
    extra = [f"{name}={timeout:g}" for name in ("cto", "rto") if name not in names]
    if not extra:
        return url
    return url + ("&" if "?" in url else "?") + "&".join(extra)


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Message:
    """One notification: what it is about, its title and text, and a file to attach."""

    kind: str
    title: str
    body: str
    batch: str | None = None
    attach: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")


def _listed(lines: list[str], limit: int = MAX_LISTED) -> list[str]:
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"  … and {len(lines) - limit} more"]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _message(
    kind: str,
    title: str,
    lines: list[str],
    tail: Mapping[str, object] | None = None,
    *,
    batch: str | None = None,
    attach: str | None = None,
) -> Message:
    """A message whose body is ``lines`` then a ``label: value`` line for each value of
    ``tail`` that is set (the one way every message ends: a file or a command to use)."""
    ending = [f"{label}: {value}" for label, value in (tail or {}).items() if value]
    return Message(kind=kind, title=f"omi-batch: {title}", body="\n".join([*lines, *ending]),
                   batch=batch, attach=attach)  # fmt: skip


def review_waiting(
    batch_id: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    file: str | None = None,
    workbook: str | os.PathLike | None = None,
    approve_command: str | None = None,
    job: str | None = None,
) -> Message:
    """The review-waiting message: the batch, its file, rows, conversations and target load, the workbook
    (attached where the service takes attachments) and the command that approves it."""
    previewed = [r for r in rows if r.get("conversations_previewed") is not None]
    failed = sum(r.get("state") == "preview_failed" for r in rows)
    conversations = sum(int(r["conversations_previewed"]) for r in previewed)
    load: dict[str, list] = {}
    for row in previewed:
        entry = load.setdefault(str(row["target_email"]), [0, set()])
        entry[0] += int(row["conversations_previewed"])
        entry[1].add(row.get("source_email"))
    ranked = sorted(load.items(), key=lambda item: (-item[1][0], item[0]))
    command = approve_command or f"omi-batch approve {batch_id} --report FILE"
    of_job = f" (job {job})" if job else ""
    lines = [
        f"Batch {batch_id}{of_job} is waiting for review.",
        *([f"File: {file}"] if file else []),
        f"Rows: {len(rows)} ({len(previewed)} previewed, {failed} failed their preview)",
        f"Conversations to move: {conversations}",
        f"Targets: {_plural(len(load), 'agent')}",
        *_listed(
            [
                f"  {target}: {_plural(n, 'conversation')} from {_plural(len(s), 'source')}"
                for target, (n, s) in ranked
            ]
        ),  # fmt: skip
    ]
    return _message("review_waiting", f"batch {batch_id} is waiting for review", lines,
                    {"Review workbook": workbook, "Approve": command}, batch=batch_id,
                    attach=str(workbook) if workbook else None)  # fmt: skip


def batch_finished(
    batch_id: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    summary: str | None = None,
    job: str | None = None,
) -> Message:
    """The batch-finished message: the summary line (counts per status) and the totals per target."""
    from omi_batch.states import result_status

    statuses = Counter(result_status(dict(r)) for r in rows)
    line = summary or ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "no rows"
    totals: dict[str, dict[str, int]] = {}
    by_row: dict[tuple[str, Any], list[Mapping[str, Any]]] = {}  # a row's transfers (issue 15)
    for row in rows:
        by_row.setdefault((str(row["target_email"]), row["row"]), []).append(row)
    for (target, _), transfers in by_row.items():
        entry = totals.setdefault(target, {"rows": 0, "succeeded": 0, "moved": 0, "tickets": 0})
        entry["rows"] += 1
        entry["succeeded"] += all(result_status(dict(t)) == "succeeded" for t in transfers)
        for transfer in transfers:
            kind = "tickets" if transfer.get("kind") == "tickets" else "moved"
            entry[kind] += int(transfer.get("updated_records") or 0)
    tickets = any(row.get("kind") == "tickets" for row in rows)
    of_job = f" (job {job})" if job else ""
    lines = [
        f"Batch {batch_id}{of_job} finished: {line}.",
        "Per target:",
        *_listed(
            [
                f"  {target}: {t['succeeded']} of {_plural(t['rows'], 'row')} succeeded, "
                f"{_plural(t['moved'], 'conversation')}"
                + (f" and {_plural(t['tickets'], 'ticket')}" if tickets else "")
                + " moved"
                for target, t in sorted(totals.items())
            ]
        ),  # fmt: skip
    ]
    return _message("batch_finished", f"batch {batch_id} finished: {line}", lines, batch=batch_id)


def rows_need_attention(
    batch_id: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    retry_report: str | os.PathLike | None = None,
    job: str | None = None,
) -> Message | None:
    """The needs-attention message of a batch with rows that failed, stayed unconfirmed or
    failed their preview (None when it has none), listing the first of them with their errors."""
    from omi_batch.states import PROBLEMS, result_status

    bad = [r for r in rows if result_status(dict(r)) in PROBLEMS]
    if not bad:
        return None
    counts = Counter(result_status(dict(r)) for r in bad)
    what = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    of_job = f" (job {job})" if job else ""
    lines = [
        f"Batch {batch_id}{of_job}: {what}.",
        *_listed(
            [
                f"  row {r['row']} {r['source_email']} -> {r['target_email']}: "
                f"{result_status(dict(r))}" + (f": {why}" if (why := _why(r)) else "")
                for r in bad
            ],
            limit=5,
        ),  # fmt: skip
    ]
    return _message("needs_attention", f"batch {batch_id} needs attention: {what}", lines,
                    {"Retry report": retry_report}, batch=batch_id)  # fmt: skip


def _why(row: Mapping[str, Any]) -> str:
    """A row's error, or its preview's error (what the results report shows)."""
    return str(row.get("error") or row.get("preview_error") or "")


def file_rejected(
    file: str,
    error: str,
    problems: Sequence[Any] = (),
    *,
    errors_report: str | os.PathLike | None = None,
    job: str | None = None,
) -> Message:
    """The needs-attention message of a rejected input file, with its first errors."""
    listed = []
    for problem in problems:
        row = getattr(problem, "row", None)
        text = getattr(problem, "message", str(problem))
        listed.append(f"  {'row ' + str(row) + ': ' if row is not None else ''}{text}")
    of_job = f" by job {job}" if job else ""
    lines = [f"File {file} was rejected{of_job}: {error}", *_listed(listed, limit=5)]
    return _message("needs_attention", f"file {file} was rejected", lines,
                    {"Every error": errors_report})  # fmt: skip


# --------------------------------------------------------------------------- scrubbing apprise


class _Relay(logging.Handler):
    """apprise's log, made safe: as a filter on the ``apprise`` logger it replaces every secret
    value ever filled into a URL with ``***`` in each record before any handler sees it
    (apprise may log from its own threads, and a send given up on may log later); as its
    handler it passes the line on to ``omi_batch.notify`` at DEBUG and keeps the warnings of
    the send in progress (apprise's logger no longer propagates)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.secrets: set[str] = set()
        self.warnings: list[str] = []

    def scrub(self, text: str) -> str:
        for value in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(value, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad apprise log call must not break a send
            text = str(record.msg)
        record.msg, record.args = self.scrub(text), ()
        if record.exc_info or record.exc_text:
            record.exc_info, record.exc_text = None, None
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.warnings.append(record.msg)
        log.debug("apprise: %s", record.msg)


_RELAY = _Relay()
_SENDING = threading.Lock()  # one send at a time, so a send's warnings are its own
_INSTALL = threading.Lock()
_INSTALLED = False


def _apprise() -> Any:
    """apprise, imported on first use, its log routed through the scrubbing relay only."""
    global _INSTALLED
    with _INSTALL:
        if not _INSTALLED:
            logger = logging.getLogger("apprise")
            logger.addFilter(_RELAY)
            logger.addHandler(_RELAY)
            logger.propagate = False
            logger.setLevel(logging.DEBUG)
            _INSTALLED = True
    import apprise

    return apprise


# --------------------------------------------------------------------------- the notifier


@dataclass
class Outcome:
    """What one call did: notifications sent, kept in the outbox for later, given up."""

    sent: int = 0
    kept: int = 0
    given_up: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class _Entry:
    """One notification for one URL (the template, never expanded), as the outbox keeps it."""

    url: str
    kind: str
    title: str
    body: str
    batch: str | None = None
    attach: str | None = None
    created_at: str = ""
    attempts: int = 0
    last_error: str = ""

    @classmethod
    def of(cls, url: str, message: Message) -> _Entry:
        return cls(url=url, kind=message.kind, title=message.title, body=message.body,
                   batch=message.batch, attach=message.attach,
                   created_at=datetime.now(UTC).isoformat(timespec="seconds"))  # fmt: skip


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
        known = _schemas()
        for url in self.urls:
            if _scheme(url) not in known:
                raise ConfigError(f"notification URL {redact(url)}: apprise knows no service "
                                  f"{_scheme(url)}://")  # fmt: skip

    def send(self, *messages: Message) -> Outcome:
        """Try the outbox first, then each message to every URL; never raises for a failed
        send."""
        return self._deliver([_Entry.of(url, m) for m in messages for url in self.urls])

    def flush(self) -> Outcome:
        """Try again what the outbox keeps (what a tick with nothing else to do calls)."""
        return self._deliver([])

    def pending(self) -> list[dict]:
        """The outbox's entries (templates only, never an expanded URL)."""
        return [asdict(e) for e in self._read()]

    # ------------------------------------------------------------------ internals

    def _deliver(self, new: list[_Entry]) -> Outcome:
        outcome = Outcome()
        waiting = self._read()
        if not waiting and not new:
            return outcome
        deadline = time.monotonic() + self.budget
        kept: list[_Entry] = []
        for entry in [*waiting, *new]:
            if time.monotonic() >= deadline:
                entry.last_error = entry.last_error or "not tried: the sending budget was spent"
                kept.append(entry)
                continue
            error = self._try(entry, min(self.timeout * 3, deadline - time.monotonic()))
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
            self._write(kept)
        return outcome

    def _try(self, entry: _Entry, limit: float) -> str | None:
        """Send one entry within ``limit`` seconds: None when sent, else why not (scrubbed)."""
        try:
            url, secrets = _expand(entry.url, self._env)
        except ConfigError as error:
            return str(error)
        _RELAY.secrets.update(secrets)
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                apprise = _apprise()
                asset = apprise.AppriseAsset(storage_mode="memory", async_mode=False)
                sender = apprise.Apprise(asset=asset)
                if not sender.add(_with_timeouts(url, self.timeout)):
                    result["error"] = (f"apprise cannot use this URL ({_scheme(entry.url)}:// "
                                       "service unknown or its parts malformed)")  # fmt: skip
                    return
                attach = entry.attach if entry.attach and Path(entry.attach).is_file() else None
                if not sender.notify(body=entry.body, title=entry.title, attach=attach,
                                     notify_type=_APPRISE_TYPES[entry.kind]):  # fmt: skip
                    said = [w for w in _RELAY.warnings if "notification" in w.lower()]
                    result["error"] = (said or _RELAY.warnings or ["the service did not take it"])[
                        0
                    ]
            except Exception as error:  # noqa: BLE001 - a failed send never breaks the caller
                result["error"] = f"{type(error).__name__}: {error}"

        with _SENDING:
            _RELAY.warnings = []
            thread = threading.Thread(target=work, name="omi-batch-notify", daemon=True)
            thread.start()
            thread.join(max(limit, 0.1))
            alive = thread.is_alive()
        if alive:
            return f"no answer within {max(limit, 0.1):.0f} s"
        return _RELAY.scrub(result["error"]) if "error" in result else None

    def _read(self) -> list[_Entry]:
        if self.outbox is None or not self.outbox.exists():
            return []
        entries = []
        names = set(_Entry.__dataclass_fields__)
        for number, line in enumerate(self.outbox.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                entries.append(_Entry(**{k: v for k, v in data.items() if k in names}))
            except (ValueError, TypeError):
                log.error("notification outbox %s: line %d is not an entry; skipped",
                          self.outbox, number)  # fmt: skip
        return entries

    def _write(self, entries: list[_Entry]) -> None:
        """Rewrite the outbox through a temporary file, so a crash leaves the old or the new."""
        assert self.outbox is not None
        self.outbox.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{self.outbox.name}.", suffix=".tmp",
                                             dir=self.outbox.parent)  # fmt: skip
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                for entry in entries:
                    out.write(json.dumps(asdict(entry), ensure_ascii=False) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.outbox)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _scheme(url: str) -> str:
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else "?"


def _schemas() -> set[str]:
    """Every URL scheme apprise's services answer to."""
    _apprise()
    from apprise.manager_plugins import NotificationManager

    return {s.lower() for s in NotificationManager().schemas()}


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


__all__ = [
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

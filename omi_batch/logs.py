"""Logging on stderr: plain text (the default) or one JSON object a line, never a secret.

``setup_logging(verbose, fmt)`` installs one stderr handler on the root logger (again on each
call, replacing only its own). ``--log-format json`` gives log shippers a line per record:
``time, level, logger, event, batch, row, request_id, message`` (and ``error`` with the
traceback when there is one). ``event``, ``batch``, ``row`` and ``request_id`` come from the
record's ``extra`` when the caller gave them, else from the ``batch=…``/``row=…`` words of the
message, else they are null.

Every line, in both formats, is scrubbed before it is written: the values given to
:func:`add_secret` (``setup_logging`` adds ``OMI_API_KEY`` and ``OMI_WEBHOOK_SECRET`` from the
environment; a job adds the variables it names), the value after a credential header or
parameter name (``X-Omi-Batch-Token: …``, ``x-api-key=…``, ``Authorization: Bearer …``,
``token=…``), and a transfer's callback token, derived from the webhook secret, wherever
the record names its batch and row.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import IO, Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SECRET_VARIABLES = ("OMI_API_KEY", "OMI_WEBHOOK_SECRET")
FIELDS = ("time", "level", "logger", "event", "batch", "row", "request_id", "message")
_MIN_SECRET = 6  # shorter values would scrub ordinary words
_CREDENTIAL = re.compile(
    r"(?i)((?:x-omi-batch-token|x-api-key|api[_-]?key|authorization|proxy-authorization|"
    r"cookie|token|secret|password|passwd)[\"']?\s*[:=]\s*[\"']?(?:bearer\s+|basic\s+)?)"
    r"([^\s\"',;&}]+)"
)
_BATCH = re.compile(r"\bbatch[= ](\d{8}-\d{6}-[0-9a-f]{4})\b")
_ROW = re.compile(r"\brow[= ](\d{1,9})\b")
_REQUEST_ID = re.compile(r"\b(?:request_id|requestId)[= ]([A-Za-z0-9_.:-]{1,128})")
_EVENT = re.compile(r"^([a-z][a-z0-9_]{1,40})(?= [a-z_]+=|: )")


class _Secrets:
    """The secret values every line is scrubbed of (this process's, shared by every handler)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: tuple[str, ...] = ()
        self.webhook_secret: str | None = None

    def add(self, value: Any) -> None:
        text = getattr(value, "value", value)
        if not isinstance(text, str) or len(text.strip()) < _MIN_SECRET:
            return
        from omi_batch.config import spellings

        with self._lock:
            if text not in self.values:
                self.values = tuple(sorted({*self.values, *spellings(text)}, key=len, reverse=True))

    def scrub(self, text: str, batch: str | None = None, row: Any = None) -> str:
        for value in self.values:
            if value in text:
                text = text.replace(value, "***")
        if self.webhook_secret and batch and row is not None:
            from omi_batch import callbacks
            from omi_batch.config import Secret

            secret = Secret(self.webhook_secret)
            for phase in callbacks.PHASES:
                try:
                    derived = callbacks.token(secret, batch, int(row), phase)
                except (TypeError, ValueError):
                    break
                text = text.replace(derived, "***")
        return _CREDENTIAL.sub(lambda m: m.group(1) + "***", text)


SECRETS = _Secrets()


def add_secret(value: Any) -> None:
    """Scrub ``value`` (a str or a Secret) from every log line from now on."""
    SECRETS.add(value)


def add_webhook_secret(value: Any) -> None:
    """Scrub the webhook secret and every callback token derived from it."""
    SECRETS.add(value)
    text = getattr(value, "value", value)
    if isinstance(text, str) and text:
        SECRETS.webhook_secret = text


def add_secrets_from(env: Mapping[str, str], names: Iterable[str] = SECRET_VARIABLES) -> None:
    """Scrub the values of the variables ``names`` (the webhook secret's by its own rule)."""
    for name in names:
        value = env.get(name)
        if not value:
            continue
        if "WEBHOOK_SECRET" in name:
            add_webhook_secret(value)
        else:
            add_secret(value)


def _context(record: logging.LogRecord, message: str) -> dict[str, Any]:
    """``event``, ``batch``, ``row``, ``request_id`` of a record: its extra, else its words."""

    def pick(*names: str) -> Any:
        for name in names:
            value = record.__dict__.get(name)
            if value is not None:
                return value
        return None

    batch = pick("batch", "batch_id")
    if batch is None and (match := _BATCH.search(message)):
        batch = match.group(1)
    row = pick("row")
    if row is None and (match := _ROW.search(message)):
        row = int(match.group(1))
    request_id = pick("request_id")
    if request_id is None and (match := _REQUEST_ID.search(message)):
        request_id = match.group(1)
    event = pick("event")
    if event is None and (match := _EVENT.match(message)):
        event = match.group(1)
    return {"event": event, "batch": batch, "row": row, "request_id": request_id}


class TextFormatter(logging.Formatter):
    """The plain text line, scrubbed."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = _context(record, record.getMessage())
        return SECRETS.scrub(text, context["batch"], context["row"])


class JsonFormatter(logging.Formatter):
    """One JSON object a line, scrubbed: see the module's docstring for the keys."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        context = _context(record, message)
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            **context,
            "message": message,
        }  # fmt: skip
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["error"] = record.exc_text
        batch, row = context["batch"], context["row"]
        for key in ("message", "error", "event", "request_id"):
            if isinstance(line.get(key), str):
                line[key] = SECRETS.scrub(line[key], batch, row)
        if isinstance(batch, str):
            line["batch"] = SECRETS.scrub(batch)
        return json.dumps(line, ensure_ascii=False, default=str)


class StderrHandler(logging.StreamHandler):
    """Our stderr handler (so a second ``setup_logging`` replaces it and nothing else).
    Without a stream of its own it writes to whatever ``sys.stderr`` is at the time."""

    def __init__(self, stream: IO[str] | None = None):
        self._own = stream
        super().__init__(stream)

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return self._own if self._own is not None else sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        self._own = value if getattr(self, "_own", None) is not None else None


def level_for(verbose: int) -> int:
    """WARNING by default, INFO with -v, DEBUG with -vv."""
    return logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG


def setup_logging(
    verbose: int = 0,
    fmt: str = "text",
    *,
    stream: IO[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Log to ``stream`` (stderr) at the level ``verbose`` asks for, as ``fmt`` ("text" or
    "json"), scrubbing the secrets of ``env`` (the environment) from every line."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    add_secrets_from(os.environ if env is None else env)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(handler)
    handler = StderrHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level_for(verbose))
    return handler


__all__ = [
    "FORMATS",
    "JsonFormatter",
    "StderrHandler",
    "TextFormatter",
    "add_secret",
    "add_secrets_from",
    "add_webhook_secret",
    "level_for",
    "setup_logging",
]

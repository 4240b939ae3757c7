"""Reading a callback body that may be hostile: bounded nesting and text that always stores
(issue 12); the count rule is ``verdicts.whole_count``.

A sender holding a row's credential can still send anything. Python's ``json`` recurses once per
nesting level (30,000 levels: ``RecursionError``), turns ``\\ud800`` into a lone surrogate that
SQLite cannot encode, and reads ``1e400``-digit integers that SQLite cannot store. So the depth is
checked on the bytes before parsing, lone surrogates are escaped after it, and a count that is
not one is stored as ``count_text`` spells it.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32  # nesting levels of arrays and objects; OMI's bodies have 2
_BRACKETS = re.compile(rb"[\[\]{}]")
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class BodyError(ValueError):
    """A body refused before it reaches the ledger; ``reason`` is the refusal's name."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """True when arrays and objects in ``raw`` nest deeper than ``limit``, brackets inside
    strings not counted. Cheap for a normal body: fewer brackets than the limit cannot nest."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for match in _BRACKETS.finditer(_STRINGS.sub(b"", raw)):
        if match.group() in b"[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def safe_text(text: str) -> str:
    """``text`` with every lone surrogate written as its ``\\udXXX`` escape: stores as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _escape_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, list):
        return [_escape_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {safe_text(key): _escape_surrogates(item) for key, item in value.items()}
    return value


# A callback's fields by their spelling folded (case, ``_`` and ``-`` dropped): OMI documents
# ``requestId``, ``status``, ``payload.updatedRecords``; the 202 is read as ``request_id`` too,
# so a callback spelled ``request_id`` / ``RequestId`` / ``Payload.UpdatedRecords`` is read.
FIELDS = {f.lower(): f for f in ("requestId", "requestTimeMs", "action", "status",
                                 "responseTimeMs", "payload")}  # fmt: skip
PAYLOAD_FIELDS = {"updatedrecords": "updatedRecords"}


def canonical_fields(fields: dict, names: dict[str, str]) -> dict:
    """``fields`` with each known field under its documented name too, when only another
    spelling of it was sent (the documented one wins when both are)."""
    found = dict(fields)
    for key, value in fields.items():
        name = (
            names.get(key.replace("_", "").replace("-", "").lower())
            if isinstance(key, str)
            else None
        )
        if name is not None and name not in fields:
            found[name] = value
    return found


def parse_body(raw: bytes, *, max_depth: int = MAX_DEPTH) -> dict:
    """A callback body as a dict with a non-blank string ``requestId`` (other spellings of the
    documented fields read as them, see :data:`FIELDS`); BodyError otherwise (``too_deep``,
    ``bad_json``, ``no_request_id``). Its text is safe to store as UTF-8."""
    if too_deep(raw, max_depth):
        raise BodyError("too_deep")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BodyError("bad_json") from None
    if not isinstance(body, dict):
        raise BodyError("bad_json")
    if _SURROGATE_ESCAPE.search(raw):
        body = _escape_surrogates(body)
    body = canonical_fields(body, FIELDS)
    if isinstance(body.get("payload"), dict):
        body["payload"] = canonical_fields(body["payload"], PAYLOAD_FIELDS)
    request_id = body.get("requestId")
    if not isinstance(request_id, str) or not request_id.strip():
        raise BodyError("no_request_id")
    return body


def count_text(value: Any, limit: int = 80) -> str:
    """A short, storable spelling of a refused count, for the row's review note."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > limit:
        text = f"{text[: limit - 20]}… ({len(text)} characters)"
    return safe_text(text)

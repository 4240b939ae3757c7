"""OMI's wire format: paths, vendor codes, reading the envelope of an answer into a result or
an error, and the payload readers (rooms, messages, tokens, directory pages)."""

from __future__ import annotations

import email.utils
import functools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from omi_batch.bodies import FIELDS, canonical_fields
from omi_batch.client.errors import ApiError, AuthError, RateLimited, ServerError
from omi_batch.client.values import Agent, TransferResult
from omi_batch.config import Secret, scrub
from omi_batch.errors import UsageError
from omi_batch.verdicts import whole_count

TRANSFER_PATH = "/api/v3/agent/conversation/transfer"
TICKET_PATH = "/api/v3/agent/ticket/transfer"
AUTH_PATH = "/api/auth"
AGENTS_PATH = "/api/agent/list"
SUCCESS = 9999

# Vendor codes that mean "your key, its rights or the account": an operator has to act, retrying
# is useless (tenant_disabled and individual_package_expired are account problems).
AUTH_CODES = frozenset(
    {
        "api_key_invalid",
        "api_key_is_required",
        "token_expired",
        "auth_invalid",
        "permission_denied",
        "tenant_disabled",
        "individual_package_expired",
    }
)

# A Bearer token refused with one of these (or HTTP 401) is fetched again, once per request.
REFRESH_CODES = frozenset({"token_expired", "auth_invalid"})
TICKETS_DENIED = "your key lacks the permission to assign other agents' tickets"
RATE_LIMIT_CODES = frozenset({"rate_limit_exceeded"})
# Where a preview may carry its count (see docs/design.md, "client"); first match wins.

_EXCERPT = 160  # characters of a non-JSON answer quoted in an error
_CHANNEL = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


def _excerpt(content: bytes, secrets: Sequence[str]) -> str:
    """A short, printable, secret-free quote of an answer body."""
    text = content[: _EXCERPT * 4].decode("utf-8", errors="replace")
    text = scrub(text, list(secrets))
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    if len(text) > _EXCERPT:
        text = text[: _EXCERPT - 1] + "…"
    return text or "(empty body)"


def _short(value: Any, secrets: Sequence[str], limit: int = 300) -> str | None:
    if value is None or value == "":
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(scrub(text, list(secrets)).split())
    return text[: limit - 1] + "…" if len(text) > limit else text


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date. None if absent
    or unreadable; never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def check_envelope(
    http_status: int,
    content: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    endpoint: str | None = None,
    secrets: Sequence[str] = (),
) -> dict:
    """The parsed envelope of a successful answer, or the matching ApiError raised.

    Success is HTTP 2xx with ``status_code == 9999``. The vendor code is the top-level
    ``message``, else ``payload.error`` / ``payload.message``.
    """
    headers = headers or {}
    retry_after = parse_retry_after(headers.get("Retry-After"))
    try:
        envelope = json.loads(content) if content else None
    except (ValueError, UnicodeDecodeError):
        envelope = None
        parsed = False
    else:
        parsed = isinstance(envelope, dict)

    code: str | None = None
    text = ""
    if parsed:
        payload = envelope.get("payload")
        inner = payload if isinstance(payload, dict) else {}
        candidates = [
            _short(envelope.get("message"), secrets, 100),
            _short(inner.get("error"), secrets),
            _short(inner.get("message"), secrets),
        ]
        found = [c for c in candidates if c]
        code = found[0] if found else None
        text = "; ".join(c for c in found[1:] if c != code)
        ok_envelope = envelope.get("status_code") == SUCCESS
    elif content and envelope is not None:
        text = f"not an OMI envelope: {_excerpt(content, secrets)}"
        ok_envelope = False
    else:
        text = f"answer is not JSON: {_excerpt(content, secrets)}"
        ok_envelope = False

    if 200 <= http_status < 300 and ok_envelope:
        return envelope

    if not parsed:
        code = "not_json" if envelope is None else "bad_envelope"
    elif code is None:
        code = "bad_envelope" if "status_code" not in envelope else None
        if code is None and 200 <= http_status < 300:
            code = f"status_code_{envelope.get('status_code')}"

    kwargs = {"endpoint": endpoint, "retry_after": retry_after}
    if http_status == 429 or code in RATE_LIMIT_CODES:
        raise RateLimited(http_status, code, text, **kwargs)
    if http_status in (401, 403) or code in AUTH_CODES:
        raise AuthError(http_status, code, text or _auth_hint(code), **kwargs)
    if http_status >= 500:
        raise ServerError(http_status, code, text, **kwargs)
    if 300 <= http_status < 400 and not text:
        location = headers.get("Location")
        text = f"redirected to {scrub(location, list(secrets))}" if location else "redirected"
    raise ApiError(http_status, code, text, **kwargs)


def _auth_hint(code: str | None) -> str:
    if code == "api_key_is_required":
        return "no API key was sent (set OMI_API_KEY)"
    if code == "api_key_invalid":
        return "the API key was refused (check OMI_API_KEY and OMI_BASE_URL)"
    if code == "token_expired":
        return "the credential has expired"
    if code == "auth_invalid":
        return "the credential was not accepted"
    return "the API key may not do this (check its rights in the OMI web app)"


# Where a preview answer may put its count (OMI's field is not confirmed).
COUNT_FIELDS = ("updatedRecords", "totalRecords", "total", "count")


def read_count(payload: Any) -> int | None:
    """The preview count in a transfer's payload by the one count rule (``whole_count``), or
    None when there is none (it will come by callback). Raises ApiError("bad_count") for a
    negative or non-integer count when no field holds a good one. When several of
    :data:`COUNT_FIELDS` hold a good count and they differ (``updatedRecords: 0`` beside
    ``totalRecords: 5``), the largest is the count: a preview must never say less is left than
    OMI said, or reconcile would call a row done that is not."""
    if isinstance(payload, dict):
        values = [payload[k] for k in COUNT_FIELDS if payload.get(k) is not None]
    else:
        values = [] if payload is None else [payload]
    counts = [c for c in map(whole_count, values) if c is not None]
    if values and not counts:
        shown = json.dumps(values[0], ensure_ascii=False)[:40]
        raise ApiError(None, "bad_count", f"the count is not a whole number >= 0: {shown}")
    return max(counts) if counts else None


def transfer_parser(endpoint: str, *, preview: bool) -> Callable[..., TransferResult]:
    """How the answer of a transfer to ``endpoint`` is read (``parse`` of ``Transport.post``):
    see :func:`_transfer_result`."""
    return functools.partial(_transfer_result, endpoint=endpoint, preview=preview)


def _transfer_result(
    http_status: int, envelope: dict, secrets: Sequence[str], *, endpoint: str, preview: bool
) -> TransferResult:
    """A transfer's answer. A preview's count must be readable (``bad_count`` otherwise); an
    execute's answer is read for its ``requestId`` only: OMI accepted the transfer, its result
    comes by callback, and a count-like field there (``"count": "n/a"``) is no reason to call
    the row failed."""
    payload = envelope.get("payload")
    count = None
    if preview:
        try:
            count = read_count(payload)
        except ApiError as exc:
            text = scrub(exc.text, list(secrets))
            raise ApiError(http_status, exc.code, text, endpoint=endpoint) from None
    request_id = _request_id(payload)
    if request_id is not None:  # an id is taken from the answer too: never let it carry a secret
        request_id = scrub(request_id, list(secrets))
    return TransferResult(request_id, count, http_status, envelope)


def _request_id(payload: Any) -> str | None:
    """The answer's ``requestId``, under any spelling a callback's is read (``request_id``,
    ``RequestId``, ``requestID``: ``bodies.FIELDS``)."""
    if isinstance(payload, dict):
        value = canonical_fields(payload, FIELDS).get("requestId")
        if value is not None and value != "":
            return str(value)
    return None


def _longest_first(values: Sequence[str]) -> list[str]:
    """Distinct non-empty secrets, the longest first, so one containing another goes whole."""
    return sorted({v for v in values if v}, key=len, reverse=True)


def _url_secrets(url: str) -> list[str]:
    """Credential-like parts of a callback URL: its password and its query values."""
    from urllib.parse import parse_qsl, urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [parts.password] if parts.password else []
    found.extend(value for _, value in parse_qsl(parts.query) if value)
    return found


def _channel(channel: str) -> str:
    if not _CHANNEL.match(channel or ""):
        raise UsageError(f"not a channel name: {channel!r}")
    return channel


def _dict_payload(http_status: int, envelope: dict, secrets: Sequence[str]) -> dict:
    payload = envelope.get("payload")
    if not isinstance(payload, dict):
        raise ApiError(http_status, "bad_payload", "the answer's payload is not an object")
    return payload


def _list_payload(http_status: int, envelope: dict, secrets: Sequence[str]) -> list:
    """A message list: the payload itself, or the list inside it (shapes vary by channel)."""
    payload = envelope.get("payload")
    if payload is None:
        return []
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        for key in ("items", "messages", "data", "docs"):
            if isinstance(payload.get(key), list):
                return payload[key]
    raise ApiError(http_status, "bad_payload", "the message list is not a list")


def _token_payload(http_status: int, envelope: dict, secrets: Sequence[str]) -> Secret:
    """The Bearer token in ``/api/auth``'s payload (``access_token``; ``accessToken`` or
    ``token`` too, as other spellings of this API vary), as a Secret."""
    payload = envelope.get("payload")
    token = None
    if isinstance(payload, dict):
        token = next((payload[k] for k in ("access_token", "accessToken", "token")
                      if isinstance(payload.get(k), str) and payload[k].strip()), None)  # fmt: skip
    if token is None:
        raise ApiError(http_status, "bad_token", "the answer has no access_token")
    return Secret(token.strip())


AGENT_LIST_KEYS = ("items", "data", "content", "docs", "rows", "list", "agents", "records")


def _agents_page(
    http_status: int, envelope: dict, secrets: Sequence[str]
) -> list[tuple[str, Agent | None]]:
    """One directory page, read tolerantly, as ``(fingerprint, agent)`` for each of its items:
    the items are the payload itself or the first list under a usual key (one level deeper
    too, e.g. ``payload.data.items``; a key that is null is passed over); an item's email is
    the first of ``identify_info``, ``email``, ``identifyInfo`` that looks like one (agent None
    when none does). The fingerprint (the item's JSON) tells a page OMI repeats from a new one,
    also for items without an email."""
    items = _find_list(envelope.get("payload"))
    if items is None:
        raise ApiError(http_status, "bad_payload", "the agent list is not a list")
    page: list[tuple[str, Agent | None]] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        fingerprint = json.dumps(item, sort_keys=True, default=str)
        email = next(
            (
                item[k].strip()
                for k in ("identify_info", "email", "identifyInfo")
                if isinstance(item.get(k), str) and "@" in item[k]
            ),
            None,
        )
        if not email:
            page.append((fingerprint, None))
            continue
        name = next(
            (item[k] for k in ("name", "full_name", "fullname", "fullName") if item.get(k)), None
        )
        status = str(item.get("status") or "").strip().lower()
        is_active = _flag(item, "is_active", "isActive", "active")
        if is_active is None and status in _INACTIVE_STATUSES:
            is_active = False
        elif is_active is None and status in ("active", "enabled"):
            is_active = True
        is_deleted = _flag(item, "is_deleted", "isDeleted", "deleted")
        if is_deleted is None and status in ("deleted", "removed"):
            is_deleted = True
        page.append((fingerprint, Agent(
            email=email.lower(),
            is_active=is_active,
            is_deleted=is_deleted,
            name=scrub(str(name), list(secrets)) if name else None,
        )))  # fmt: skip
    return page


# An agent's ``status`` that says it cannot take customers (when no is_active flag says so).
_INACTIVE_STATUSES = ("inactive", "disabled", "deactivated", "suspended", "locked", "blocked")
_YES = ("true", "1", "yes", "y")
_NO = ("false", "0", "no", "n")


def _find_list(payload: Any, depth: int = 0) -> list | None:
    if payload is None:
        return []
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict) and depth < 2:
        empty = False
        for key in AGENT_LIST_KEYS:
            if payload.get(key) is None:
                empty = empty or key in payload  # ``"data": null``: look at the other keys
                continue
            found = _find_list(payload[key], depth + 1)
            if found is not None:
                return found
        if empty:
            return []
    return None


def _flag(item: dict, *names: str) -> bool | None:
    """A yes/no field, tolerant of 0/1, "true"/"false" and "yes"/"no"; None when absent or
    unreadable."""
    for name in names:
        value = item.get(name)
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in (*_YES, *_NO):
            return value.strip().lower() in _YES
    return None

"""Configuration from the environment (a job file may set the same names).

Secrets are wrapped in :class:`Secret` so that no ``repr``, log line or exception shows them.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus, urlsplit

from omi_batch.errors import ConfigError

PRODUCTION_URL = "https://public-v1.omicall.com"
STAGING_URL = "https://public-v1-stg.omicall.com"
# How requests authenticate (OMI_AUTH): "api-key" sends the key in an x-api-key header, as the
# vendor's doc page says; "bearer" trades it once for a 24-hour token (GET /api/auth?apiKey=),
# as the vendor's own client does, and sends ``Authorization: Bearer``.
AUTH_MODES = ("api-key", "bearer")
DEFAULT_AUTH = "api-key"


class Secret:
    """A string that never shows itself: ``repr``/``str`` give ``'***'``; ``.value`` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    @property
    def value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):  # never pickled or copied into another process by accident
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True)
class Settings:
    base_url: str | None = None
    api_key: Secret | None = field(default=None, repr=False)
    webhook_url: str | None = None
    webhook_secret: Secret | None = field(default=None, repr=False)
    auth: str = DEFAULT_AUTH

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = (env.get(name) or "").strip()
            return value or None

        key = get("OMI_API_KEY")
        secret = get("OMI_WEBHOOK_SECRET")
        base = get("OMI_BASE_URL")
        return cls(
            auth=parse_auth(get("OMI_AUTH")),
            base_url=base.rstrip("/") if base else None,
            api_key=Secret(key) if key else None,
            webhook_url=(get("OMI_WEBHOOK_URL") or "").rstrip("/") or None,
            webhook_secret=Secret(secret) if secret else None,
        )

    def require_api(self) -> None:
        """Raise ConfigError naming the first missing variable needed to call OMI."""
        if not self.base_url:
            raise ConfigError(
                f"OMI_BASE_URL is not set: use {PRODUCTION_URL} (or {STAGING_URL} for staging)"
            )
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"OMI_BASE_URL must start with http:// or https://: {self.base_url!r}"
            )
        parts = urlsplit(self.base_url)
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ConfigError("OMI_BASE_URL must be a plain address such as "
                              f"{PRODUCTION_URL}: no user, password or query in it "
                              "(the API key goes in OMI_API_KEY)")  # fmt: skip
        if not self.api_key:
            raise ConfigError(
                "OMI_API_KEY is not set: create a key in the OMI web app "
                "(Account > Settings > API management)"
            )

    def require_webhook_secret(self) -> Secret:
        if not self.webhook_secret:
            raise ConfigError(
                "OMI_WEBHOOK_SECRET is not set: the receiver needs it to check "
                "callbacks (any long random string, the same for runner and receiver)"
            )
        return self.webhook_secret


def parse_auth(value: str | None) -> str:
    """The auth mode named by OMI_AUTH (or a job file): ``api-key`` (default) or ``bearer``;
    ConfigError (exit 3) for anything else. Case and ``_`` for ``-`` do not matter."""
    if value is None or not value.strip():
        return DEFAULT_AUTH
    mode = value.strip().lower().replace("_", "-")
    if mode == "apikey":
        mode = "api-key"
    if mode not in AUTH_MODES:
        raise ConfigError(
            f"OMI_AUTH must be {' or '.join(AUTH_MODES)}, not {value.strip()!r} "
            "(api-key: the x-api-key header; bearer: a token from GET /api/auth)"
        )
    return mode


def scrub(text: str, secrets: list[str]) -> str:
    """Replace every secret value in ``text`` with ``***``, also as a URL would spell it
    (the key travels in ``/api/auth``'s query string, and OMI may echo the request)."""
    for value in secrets:
        if value:
            for spelling in spellings(value):
                text = text.replace(spelling, "***")
    return text


_PERCENT = re.compile(r"%[0-9A-F]{2}")


@functools.lru_cache(maxsize=256)  # scrubbed on every answer: the same few values each time
def spellings(value: str) -> tuple[str, ...]:
    """``value`` and its URL-encoded spellings (``quote``, ``quote_plus``, lower-case hex),
    the longest first: every way a secret may come back in an echoed URL."""
    found = {value}
    for encoded in (quote(value, safe=""), quote(value), quote_plus(value)):
        found.update((encoded, _PERCENT.sub(lambda m: m.group(0).lower(), encoded)))
    return tuple(sorted(found, key=len, reverse=True))

"""Notification URLs in apprise's syntax, as templates: ``${NAME}`` stands for the value of the
environment variable ``NAME``, filled in only at the moment of sending; a URL is only ever shown
redacted (its scheme and host)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl

from omi_batch.errors import ConfigError, UsageError

_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CREDENTIAL_WORDS = ("key", "secret", "token", "pass", "credential", "auth", "sig", "code")


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
    """The URL as it may be shown: its scheme and host, every other part left out; a
    ``${…}`` reference in the host is not shown either (a token pasted there, as a Slack or
    Discord URL puts its token where a host goes, would be the secret itself)."""
    match = _SCHEME.match(url)
    if not match:
        return "'<not a URL>'"
    netloc = re.split(r"[/?#]", url[match.end() :], maxsplit=1)[0]
    host = re.sub(r"\$\{[^}]*\}?", "${…}", netloc.rpartition("@")[2])
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


def expand(url: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
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


def with_timeouts(url: str, timeout: float) -> str:
    """Add apprise's connect and read timeouts (``cto``, ``rto``) unless the URL sets them."""
    query = url.split("?", 1)[1] if "?" in url else ""
    names = {name for name, _ in parse_qsl(query, keep_blank_values=True)}
    extra = [f"{name}={timeout:g}" for name in ("cto", "rto") if name not in names]
    if not extra:
        return url
    return url + ("&" if "?" in url else "?") + "&".join(extra)


def scheme(url: str) -> str:
    """The URL's scheme in lower case (``?`` when it has none)."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else "?"

"""Sending one notification with apprise, within a time limit, its log scrubbed of every secret
value filled into a URL."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omi_batch.errors import ConfigError
from omi_batch.notify.urls import expand, scheme, with_timeouts

log = logging.getLogger("omi_batch.notify")

_APPRISE_TYPES = {"review_waiting": "info", "batch_finished": "success",
                  "needs_attention": "warning"}  # fmt: skip


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


def schemas() -> set[str]:
    """Every URL scheme apprise's services answer to."""
    _apprise()
    from apprise.manager_plugins import NotificationManager

    return {s.lower() for s in NotificationManager().schemas()}


def send(
    template: str,
    env: Mapping[str, str],
    *,
    kind: str,
    title: str,
    body: str,
    attach: str | None,
    timeout: float,
    limit: float,
) -> str | None:
    """Send one notification to the URL ``template`` (filled from ``env``) within ``limit``
    seconds, each connection within ``timeout``: None when sent, else why not (scrubbed)."""
    try:
        url, secrets = expand(template, env)
    except ConfigError as error:
        return str(error)
    _RELAY.secrets.update(secrets)
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            apprise = _apprise()
            asset = apprise.AppriseAsset(storage_mode="memory", async_mode=False)
            sender = apprise.Apprise(asset=asset)
            if not sender.add(with_timeouts(url, timeout)):
                result["error"] = (f"apprise cannot use this URL ({scheme(template)}:// "
                                   "service unknown or its parts malformed)")  # fmt: skip
                return
            file = attach if attach and Path(attach).is_file() else None
            if not sender.notify(body=body, title=title, attach=file,
                                 notify_type=_APPRISE_TYPES[kind]):  # fmt: skip
                said = [w for w in _RELAY.warnings if "notification" in w.lower()]
                result["error"] = (said or _RELAY.warnings or ["the service did not take it"])[0]
        except Exception as error:  # noqa: BLE001 - a failed send never breaks the caller
            result["error"] = f"{type(error).__name__}: {error}"

    wait = max(limit, 0.1)
    with _SENDING:
        _RELAY.warnings = []
        thread = threading.Thread(target=work, name="omi-batch-notify", daemon=True)
        thread.start()
        thread.join(wait)
        alive = thread.is_alive()
    if alive:
        return f"no answer within {wait:.0f} s"
    return _RELAY.scrub(result["error"]) if "error" in result else None

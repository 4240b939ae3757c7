"""Serving the simulator's WSGI app through ``omi_batch.serving``: in a daemon thread (tests,
demos) or until SIGTERM or Ctrl-C (the CLI). A port already taken is a usage error (exit 2)."""

from __future__ import annotations

from collections.abc import Callable

from omi_batch import serving
from omi_batch.errors import UsageError

GRACE = 5.0  # seconds a stop waits for answers in flight (sleeping ones are woken first)


def _server(
    app: Callable, on_stop: Callable[[], None], host: str, port: int, threads: int
) -> serving.Server:
    return serving.create_server(
        app, host, port, threads=max(32, threads), ident="omi-simulator",
        log_name="omi_batch.simulator", refuse=UsageError, on_stop=on_stop,
    )  # fmt: skip


def start(
    app: Callable, on_stop: Callable[[], None], host: str, port: int, *, threads: int
) -> serving.Running:
    """Serve ``app`` in a daemon thread; returns once the port is listening. ``stop()`` calls
    ``on_stop`` once the requests in flight are answered."""
    return serving.start(_server(app, on_stop, host, port, threads), grace=GRACE)


def serve(
    app: Callable,
    on_stop: Callable[[], None],
    host: str,
    port: int,
    *,
    ready: Callable[[str], None] | None,
    threads: int,
) -> None:
    """Serve ``app`` until SIGTERM or Ctrl-C; calls ``ready(url)`` once listening."""
    serving.serve(_server(app, on_stop, host, port, threads), ready=ready, grace=GRACE)

"""Serving the simulator through ``omi_batch.serving``: in a daemon thread (tests, demos) or
until SIGTERM or Ctrl-C (the CLI). A port already taken is a usage error (exit 2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from omi_batch import serving
from omi_batch.errors import UsageError
from omi_batch.simulator.app import make_app

if TYPE_CHECKING:
    from omi_batch.simulator.core import Simulator

GRACE = 5.0  # seconds a stop waits for answers in flight (sleeping ones are woken first)


def _server(sim: Simulator, host: str, port: int, threads: int) -> serving.Server:
    sim._stopping.clear()  # a simulator stopped before may serve again
    return serving.create_server(
        make_app(sim), host, port, threads=max(32, threads), ident="omi-simulator",
        log_name="omi_batch.simulator", refuse=UsageError, on_stop=sim.close,
    )  # fmt: skip


def start(
    sim: Simulator, host: str = "127.0.0.1", port: int = 0, *, threads: int = 32
) -> serving.Running:
    """Serve ``sim`` in a daemon thread; returns once the port is listening. ``stop()`` also
    ends the callback worker (``sim.close()``)."""
    return serving.start(_server(sim, host, port, threads), grace=GRACE)


def serve(
    sim: Simulator,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ready: Callable[[str], None] | None = None,
    threads: int = 32,
) -> None:
    """Serve ``sim`` until SIGTERM or Ctrl-C; calls ``ready(url)`` once listening."""
    serving.serve(_server(sim, host, port, threads), ready=ready, grace=GRACE)

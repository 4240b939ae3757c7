"""A built-in stand-in for OMICall's API, for demos, tests and benchmarks. Never talks to OMI.

It plays the endpoints omi-batch knows (``new_room``, ``guest_send_message``, message
``list``, the conversation and ticket ``transfer``, ``GET /api/auth`` and the agent directory
``GET /api/agent/list``) over a fixture of agents, conversations and tickets, with the vendor's
envelope, the 6-month window, preview and execute, result callbacks from a worker thread, every
assumed variant (preview answer, auth mode, directory shape, ticket callbacks or none), a hidden
rate limit, and fault knobs (latency, 5xx, 429, slow answers, connection resets, dropped /
duplicated / late / reordered / failed callbacks, a directory or tickets refused).
It shares nothing with ``omi_batch.client`` but the wire format.

Example::

    sim = Simulator(api_key="sim-key", faults=Faults(rate_limit_rate=0.1), seed=1)
    running = sim.start()          # http://127.0.0.1:PORT, waitress in a daemon thread
    ...                            # POST to running.url + "/api/v3/agent/conversation/transfer"
    sim.wait_idle()
    running.stop()

The sample fixture (15 agents, 3 of them no longer working; 300 conversations and 90 tickets
over 12 months) is ``fixture.json`` beside this file; ``make_fixture.py`` rebuilds it. Every
option is described on ``Simulator`` and ``Faults``.
"""

from __future__ import annotations

from collections.abc import Callable

from omi_batch.serving import Running
from omi_batch.simulator.app import envelope, make_app
from omi_batch.simulator.core import Simulator
from omi_batch.simulator.model import FIXTURE_PATH, PREVIEW_FIELDS, PREVIEW_MODES, Faults

__all__ = [
    "FIXTURE_PATH",
    "PREVIEW_FIELDS",
    "PREVIEW_MODES",
    "Faults",
    "Running",
    "Simulator",
    "envelope",
    "make_app",
    "serve",
]


def serve(
    sim: Simulator,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ready: Callable[[str], None] | None = None,
    threads: int = 32,
) -> None:
    """Serve ``sim`` until SIGTERM or Ctrl-C (``Simulator.serve``); ``ready(url)`` once listening."""
    sim.serve(host, port, ready=ready, threads=threads)

"""The webhook receiver: where OMI reports each transfer's result.

``make_app`` builds a small WSGI app; ``serve`` runs it until SIGTERM or Ctrl-C (the CLI),
``start`` in a background thread (``--listen`` and tests), both through ``omi_batch.serving``. The app checks each
callback's per-transfer credential (see ``omi_batch.callbacks``), writes the raw callback to the
ledger and only then answers 2xx, so a callback is never acknowledged and lost. Checks run in a
fixed order: path (not a callback path: 404), method (405), size (413), credential (401), JSON
(400), then the ledger's verdict (unknown transfer: 404). Every refusal that names a transfer
is recorded in the ledger too, and no refusal changes a row.

waitress reads each request in full on its I/O thread before a worker thread sees it, so a
slow client costs a socket, not a worker. Ledger writes go through one thread in arrival
order and are given ``answer_within`` seconds (1.5): past that the answer is 503, so OMI
always has its answer inside its 2 seconds, even while a runner holds the ledger. That thread
stores every callback waiting at that moment in one transaction (``Ledger.receive_callbacks``,
a group commit: one fsync for the group instead of one per callback, issue 6), and each is
answered only once that transaction is committed.

The package: ``app`` (``WebhookApp``, ``make_app``: the checks and the answers), ``writer``
(``Writer``: the one ledger writer thread and the spool); ``start``/``serve`` here, through
``omi_batch.serving``.
"""

from __future__ import annotations

from collections.abc import Callable

from omi_batch import serving
from omi_batch.webhook.app import LOGGER_NAME, make_app

__all__ = ["LOGGER_NAME", "make_app", "serve", "start"]


def start(
    app: Callable, host: str = "127.0.0.1", port: int = 0, *, threads: int = 16, grace: float = 10.0
) -> serving.Running:
    """Serve ``app`` in a background thread (``--listen``, tests); the port is bound when this
    returns. A port that cannot be had is a ConfigError (exit 3)."""
    server = serving.create_server(app, host, port, threads=threads, log_name=LOGGER_NAME)
    return serving.start(server, grace=grace)


def serve(
    app: Callable,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    threads: int = 16,
    ready: Callable[[str], None] | None = None,
    grace: float = 10.0,
) -> None:
    """Serve ``app`` until SIGTERM or Ctrl-C, then finish requests in flight and return;
    ``ready(url)`` is called once the port is bound. A second signal stops at once."""
    server = serving.create_server(app, host, port, threads=threads, log_name=LOGGER_NAME)
    serving.serve(server, ready=ready, grace=grace)

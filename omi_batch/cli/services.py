"""The services: the webhook receiver and the OMI simulator, each run until a signal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from omi_batch.cli.options import (
    SIMULATOR_FAULTS,
    host_option,
    ledger_option,
    log_format,
    log_format_option,
    port_option,
    simulator_options,
    verbosity,
)


@click.group()
def webhook() -> None:
    """The webhook receiver: where OMI reports each transfer's result.

    \b
    Example:
        OMI_WEBHOOK_SECRET=... omi-batch webhook serve --port 8080
    """


@webhook.command("serve")
@host_option
@port_option(8080)
@click.option(
    "--threads", type=click.IntRange(1, 256), default=16, show_default=True, help="Worker threads."
)
@click.option(
    "--metrics",
    "with_metrics",
    is_flag=True,
    help="Also answer GET /metrics in the Prometheus format: callbacks by verdict, refusals "
    "by reason, answer and ledger-write latency, rows by state of each open batch.",
)
@ledger_option
@log_format_option
def webhook_serve(host: str, port: int, threads: int, with_metrics: bool, ledger_path: str) -> None:
    """Run the webhook receiver until SIGTERM or Ctrl-C. Needs OMI_WEBHOOK_SECRET.

    \b
    Example:
        OMI_WEBHOOK_SECRET=... omi-batch webhook serve --port 8080
        OMI_WEBHOOK_SECRET=... omi-batch webhook serve --metrics --log-format json
    """
    from omi_batch.config import Settings
    from omi_batch.ledger import Ledger
    from omi_batch.webhook import LOGGER_NAME, make_app, serve

    secret = Settings.from_env().require_webhook_secret()
    verbose = verbosity()
    # One line per callback is the service's log, so it shows without -v.
    logging.getLogger(LOGGER_NAME).setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    ledger = Ledger(ledger_path)
    metrics = None
    if with_metrics:
        from omi_batch.metrics import make_metrics

        metrics = make_metrics(ledger)
    app = make_app(ledger, secret, metrics=metrics)

    def say(text: str, event: str) -> None:
        """Talk on stderr: a log record when the log is JSON, so every line stays JSON."""
        if log_format() == "json":
            logging.getLogger(LOGGER_NAME).info(text, extra={"event": event})
        else:
            click.echo(text, err=True)

    def ready(url: str) -> None:
        click.echo(f"Webhook receiver listening on {url}")
        if metrics is not None:
            say(f"Metrics at {url}/metrics", "metrics")

    serve(metrics.wrap(app) if metrics else app, host, port, threads=threads, ready=ready)
    say("Webhook receiver stopped.", "stopped")


@click.group()
def simulator() -> None:
    """The built-in OMI simulator, for demos and tests. Never talks to the real OMI.

    \b
    Example:
        omi-batch simulator serve --port 0
    """


@simulator.command("serve")
@host_option
@port_option(0)
@simulator_options
@click.option("-v", "--verbose", count=True, help="Log one line per request on stderr.")
def simulator_serve(host: str, port: int, verbose: int, **knobs: Any) -> None:
    """Run the OMI simulator until Ctrl-C or SIGTERM; print the address it listens on.

    It answers OMI's endpoints (conversation and ticket transfer, new_room,
    guest_send_message, message list, GET /api/auth, the agent directory GET /api/agent/list)
    over a fixture of agents, conversations and tickets, and POSTs each transfer's callback
    like OMI does. Point OMI_BASE_URL at the printed address.

    \b
    Example:
        omi-batch simulator serve --port 0
        omi-batch simulator serve --port 9000 --rate-limit-rate 0.1 --drop-callbacks 0.05 -v
        omi-batch simulator serve --rate-limit 20:5 --auth bearer --token-lifetime 60
        omi-batch simulator serve --no-ticket-callbacks --directory-fault permission_denied
    """
    from omi_batch.simulator import Faults, Simulator, serve

    faults = Faults(**{name: knobs.pop(name) for name in SIMULATOR_FAULTS})
    sim = Simulator(faults=faults, **knobs)
    if verbose:
        logging.getLogger("omi_batch.simulator").setLevel(logging.INFO)

    def ready(url: str) -> None:
        click.echo(f"OMI simulator listening on {url}")
        sys.stdout.flush()

    serve(sim, host, port, ready=ready)  # until SIGTERM or Ctrl-C
    click.echo("OMI simulator stopped.", err=True)

"""The services: the webhook receiver and the OMI simulator, each run until a signal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from omi_batch.cli.options import ledger_option, verbosity
from omi_batch.cli.output import handle_errors


@click.group()
def webhook() -> None:
    """The webhook receiver: where OMI reports each transfer's result."""


@webhook.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port to listen on (0 picks a free one).",
)
@click.option(
    "--threads", type=click.IntRange(1, 256), default=16, show_default=True, help="Worker threads."
)
@ledger_option
@handle_errors
def webhook_serve(host: str, port: int, threads: int, ledger_path: str) -> None:
    """Run the webhook receiver until SIGTERM or Ctrl-C. Needs OMI_WEBHOOK_SECRET.

    \b
    Example:
        OMI_WEBHOOK_SECRET=... omi-batch webhook serve --port 8080
    """
    from omi_batch.config import Settings
    from omi_batch.ledger import Ledger
    from omi_batch.webhook import LOGGER_NAME, make_app, serve

    secret = Settings.from_env().require_webhook_secret()
    verbose = verbosity()
    # One line per callback is the service's log, so it shows without -v.
    logging.getLogger(LOGGER_NAME).setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    ledger = Ledger(ledger_path)
    serve(
        make_app(ledger, secret),
        host,
        port,
        threads=threads,
        ready=lambda url: click.echo(f"Webhook receiver listening on {url}"),
    )
    click.echo("Webhook receiver stopped.", err=True)


@click.group()
def simulator() -> None:
    """The built-in OMI simulator, for demos and tests. Never talks to the real OMI."""


@simulator.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port to listen on (0 picks a free one).",
)
@click.option(
    "--fixture",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Agents and conversations (default: the built-in sample fixture).",
)
@click.option(
    "--api-key",
    envvar="OMI_API_KEY",
    default="sim-key",
    show_default=False,
    help="The only x-api-key accepted (default: sim-key, or OMI_API_KEY). Never printed.",
)
@click.option(
    "--preview-mode",
    type=click.Choice(["sync", "async"]),
    default="sync",
    show_default=True,
    help="sync: a preview's count is in the answer; async: 202, the count comes in a callback.",
)
@click.option(
    "--preview-field",
    type=click.Choice(["updatedRecords", "totalRecords", "total", "count", "number"]),
    default="updatedRecords",
    show_default=True,
    help="Where a sync preview puts its count (number: the payload is the count itself).",
)
@click.option(
    "--latency-ms", type=click.FloatRange(min=0), default=0, help="Added before every answer."
)
@click.option(
    "--error-rate",
    type=click.FloatRange(0, 1),
    default=0,
    help="Fraction of requests answered 500 or 503 (nothing applied).",
)
@click.option(
    "--rate-limit-rate",
    type=click.FloatRange(0, 1),
    default=0,
    help="Fraction of requests answered 429 with Retry-After (nothing applied).",
)
@click.option(
    "--retry-after",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds put in Retry-After.",
)
@click.option(
    "--slow-rate",
    type=click.FloatRange(0, 1),
    default=0,
    help="Fraction answered only after --slow-seconds (the transfer is applied first).",
)
@click.option(
    "--slow-seconds",
    type=click.FloatRange(min=0),
    default=35.0,
    show_default=True,
    help="How late a slow answer is.",
)
@click.option(
    "--reset-rate",
    type=click.FloatRange(0, 1),
    default=0,
    help="Fraction of connections closed with no answer (nothing applied).",
)
@click.option(
    "--drop-callbacks",
    type=click.FloatRange(0, 1),
    default=0,
    help="Fraction of callbacks never sent.",
)
@click.option(
    "--duplicate-callbacks",
    type=click.FloatRange(0, 1),
    default=0,
    help="Fraction of callbacks sent twice.",
)
@click.option(
    "--callback-delay",
    type=click.FloatRange(min=0),
    default=0,
    help="Seconds before each callback is sent.",
)
@click.option(
    "--reorder-callbacks", is_flag=True, help="Hold callbacks back and send them shuffled."
)
@click.option(
    "--callback-error-rate",
    type=click.FloatRange(0, 1),
    default=0,
    help="Fraction of executes whose callback says ERROR (nothing moved).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the random faults (repeatable)."
)
@click.option("-v", "--verbose", count=True, help="Log one line per request on stderr.")
@handle_errors
def simulator_serve(
    host: str,
    port: int,
    fixture: str | None,
    api_key: str,
    preview_mode: str,
    preview_field: str,
    latency_ms: float,
    error_rate: float,
    rate_limit_rate: float,
    retry_after: float,
    slow_rate: float,
    slow_seconds: float,
    reset_rate: float,
    drop_callbacks: float,
    duplicate_callbacks: float,
    callback_delay: float,
    reorder_callbacks: bool,
    callback_error_rate: float,
    seed: int,
    verbose: int,
) -> None:
    """Run the OMI simulator until Ctrl-C or SIGTERM; print the address it listens on.

    It answers OMI's endpoints (transfer, new_room, guest_send_message, message list) over a
    fixture of agents and conversations, and POSTs each transfer's callback like OMI does.
    Point OMI_BASE_URL at the printed address.

    \b
    Example:
        omi-batch simulator serve --port 0
        omi-batch simulator serve --port 9000 --rate-limit-rate 0.1 --drop-callbacks 0.05 -v
    """
    import signal

    from omi_batch.simulator import Faults, Simulator, serve

    faults = Faults(
        latency_ms=latency_ms,
        error_rate=error_rate,
        rate_limit_rate=rate_limit_rate,
        retry_after=retry_after,
        slow_rate=slow_rate,
        slow_seconds=slow_seconds,
        reset_rate=reset_rate,
        drop_callbacks=drop_callbacks,
        duplicate_callbacks=duplicate_callbacks,
        callback_delay=callback_delay,
        reorder_callbacks=reorder_callbacks,
        callback_error_rate=callback_error_rate,
    )
    sim = Simulator(
        fixture=fixture,
        api_key=api_key,
        preview_mode=preview_mode,
        preview_field=preview_field,
        faults=faults,
        seed=seed,
    )
    if verbose:
        logging.getLogger("omi_batch.simulator").setLevel(logging.INFO)

    def ready(url: str) -> None:
        click.echo(f"OMI simulator listening on {url}")
        sys.stdout.flush()

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        serve(sim, host, port, ready=ready)
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo("OMI simulator stopped.", err=True)

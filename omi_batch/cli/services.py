"""The services: the webhook receiver and the OMI simulator, each run until a signal."""

from __future__ import annotations

import logging
import sys

import click

from omi_batch.cli.options import ledger_option, log_format, log_format_option, verbosity


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


def _check_rate_limit(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse a malformed --rate-limit before anything starts."""
    from omi_batch.errors import UsageError
    from omi_batch.simulator.gate import parse_rate_limit

    try:
        parse_rate_limit(value)
    except UsageError as error:
        raise click.BadParameter(str(error).replace("rate_limit", "--rate-limit", 1)) from None
    return value


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
    help="The only API key accepted, as x-api-key or by GET /api/auth (default: sim-key, or "
    "OMI_API_KEY). Never printed.",
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
    "--rate-limit",
    metavar="RPS[:BURST]",
    default=None,
    callback=_check_rate_limit,
    help="A hidden token bucket over every request of every endpoint: RPS a second, bursts of "
    "BURST (default: one second's worth). Off by default.",
)
@click.option(
    "--rate-limit-retry-after",
    type=click.Choice(["header", "none", "envelope"]),
    default="header",
    show_default=True,
    help="How --rate-limit refuses: 429 with Retry-After (whole seconds), 429 without it, or "
    "HTTP 200 with a -9999 rate_limit_exceeded envelope.",
)
@click.option(
    "--auth",
    type=click.Choice(["api-key", "bearer", "both"]),
    default="api-key",
    show_default=True,
    help="What the transfer and chat endpoints accept: x-api-key, Authorization: Bearer with a "
    "token from GET /api/auth, or either.",
)
@click.option(
    "--directory-auth",
    type=click.Choice(["api-key", "bearer", "both"]),
    default="bearer",
    show_default=True,
    help="The same for the agent directory (GET /api/agent/list); the vendor documents Bearer.",
)
@click.option(
    "--token-lifetime",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    default=86400.0,
    show_default=True,
    help="Seconds a token lives; then requests with it get 401 token_expired.",
)
@click.option(
    "--token-expires-in/--no-token-expires-in",
    default=True,
    show_default=True,
    help="Whether GET /api/auth says expires_in.",
)
@click.option(
    "--refuse-token-after",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Issue N tokens, then refuse every other GET /api/auth with 401 api_key_invalid "
    "(a refresh that fails).",
)
@click.option(
    "--directory-shape",
    type=click.Choice(["items", "data", "list"]),
    default="items",
    show_default=True,
    help="Where the directory puts its agents: payload.items, payload.data (with total), or "
    "payload as a bare list.",
)
@click.option(
    "--directory-fault",
    type=click.Choice(["permission_denied", "forbidden", "not_found", "unavailable", "error"]),
    default=None,
    help="The directory refuses: permission_denied (200, -9999), forbidden (403), or is "
    "unreachable: not_found (404), unavailable (503), error (500).",
)
@click.option(
    "--ticket-callbacks/--no-ticket-callbacks",
    default=True,
    show_default=True,
    help="Whether ticket transfers call back (TICKET_AGENT_TRANSFER); OMI may send none.",
)
@click.option(
    "--ticket-preview-mode",
    type=click.Choice(["sync", "async"]),
    default=None,
    help="Like --preview-mode, for ticket previews only (default: as --preview-mode).",
)
@click.option(
    "--ticket-window-days",
    type=click.IntRange(min=1),
    default=None,
    metavar="DAYS",
    help="Move only tickets created in the last DAYS days (default: every open ticket).",
)
@click.option(
    "--ticket-fault",
    type=click.Choice(["permission_denied", "forbidden"]),
    default=None,
    help="The key lacks the permission to assign others' tickets: ticket transfers answer "
    "permission_denied (200, -9999, or 403 for forbidden); conversations still work.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the random faults (repeatable)."
)
@click.option("-v", "--verbose", count=True, help="Log one line per request on stderr.")
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
    rate_limit: str | None,
    rate_limit_retry_after: str,
    auth: str,
    directory_auth: str,
    token_lifetime: float,
    token_expires_in: bool,
    refuse_token_after: int | None,
    directory_shape: str,
    directory_fault: str | None,
    ticket_callbacks: bool,
    ticket_preview_mode: str | None,
    ticket_window_days: int | None,
    ticket_fault: str | None,
    seed: int,
    verbose: int,
) -> None:
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
        directory_fault=directory_fault,
        ticket_fault=ticket_fault,
    )
    sim = Simulator(
        fixture=fixture,
        api_key=api_key,
        preview_mode=preview_mode,
        preview_field=preview_field,
        faults=faults,
        seed=seed,
        rate_limit=rate_limit,
        rate_limit_retry_after=rate_limit_retry_after,
        auth=auth,
        directory_auth=directory_auth,
        token_lifetime=token_lifetime,
        token_expires_in=token_expires_in,
        refuse_token_after=refuse_token_after,
        directory_shape=directory_shape,
        ticket_callbacks=ticket_callbacks,
        ticket_preview_mode=ticket_preview_mode,
        ticket_window_days=ticket_window_days,
    )
    if verbose:
        logging.getLogger("omi_batch.simulator").setLevel(logging.INFO)

    def ready(url: str) -> None:
        click.echo(f"OMI simulator listening on {url}")
        sys.stdout.flush()

    serve(sim, host, port, ready=ready)  # until SIGTERM or Ctrl-C
    click.echo("OMI simulator stopped.", err=True)

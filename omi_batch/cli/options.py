"""Every option shared by several commands, defined once, and the -v counter."""

from __future__ import annotations

import logging
from collections.abc import Callable

import click

DEFAULT_LEDGER = "data/ledger.db"
DEFAULT_REPORTS = "data/reports"


def ledger_option(f: Callable) -> Callable:
    return click.option(
        "--ledger",
        "ledger_path",
        default=DEFAULT_LEDGER,
        show_default=True,
        type=click.Path(dir_okay=False),
        envvar="OMI_BATCH_LEDGER",
        help="SQLite ledger file.",
    )(f)


def reports_option(f: Callable) -> Callable:
    return click.option(
        "--reports",
        "reports_dir",
        default=DEFAULT_REPORTS,
        show_default=True,
        type=click.Path(file_okay=False),
        help="Folder the reports are written to.",
    )(f)


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")(f)


def limit_option(f: Callable) -> Callable:
    return click.option(
        "--limit",
        type=click.IntRange(min=1),
        default=None,
        help="Only the first N rows of the plan: try a batch small first.",
    )(f)


def scope_option(f: Callable) -> Callable:
    return click.option(
        "--scope",
        default=None,
        metavar="SCOPE",
        help="What a row with no scope cell moves: conversations (default), tickets or both.",
    )(f)


PIPELINE_OPTIONS = "omi_batch.pipeline_options"  # ctx.meta key: the dict built once


def _keep(ctx: click.Context, param: click.Parameter, value: object) -> object:
    """Put a pipeline option into the command's one options dict (see :func:`pipeline_options`)."""
    ctx.meta.setdefault(PIPELINE_OPTIONS, {})[param.name] = value
    return value


def http_options(f: Callable) -> Callable:
    """--concurrency, --rate and --timeout: how hard we talk to OMI (see :func:`pipeline_options`)."""
    f = click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=30.0,
        show_default=True,
        expose_value=False,
        callback=_keep,
        help="Seconds to wait for each HTTP answer.",
    )(f)
    f = click.option(
        "--rate",
        type=click.FloatRange(min=0.01),
        default=20.0,
        show_default=True,
        expose_value=False,
        callback=_keep,
        help="Ceiling of requests per second. The rate starts at 5 (or this, if lower), "
        "rises while OMI accepts and slows down at once when OMI says too many.",
    )(f)
    f = click.option(
        "--concurrency",
        type=click.IntRange(1, 64),
        default=4,
        show_default=True,
        expose_value=False,
        callback=_keep,
        help="Transfers in flight at once.",
    )(f)
    return f


def pipeline_options() -> dict:
    """The command's --concurrency, --rate, --timeout and --wait as one dict, built once from
    the options themselves: what ``Session`` takes and what a batch records as its options."""
    chosen = click.get_current_context().meta.get(PIPELINE_OPTIONS, {})
    return {
        name: chosen[name] for name in ("concurrency", "rate", "timeout", "wait") if name in chosen
    }


def check_agents_option(f: Callable) -> Callable:
    """--check-agents/--no-check-agents: look every source and target up in OMI's directory."""
    return click.option(
        "--check-agents/--no-check-agents",
        default=True,
        show_default=True,
        help="Before anything else, look every source and target up in OMI's agent directory: "
        "a target missing, deactivated or deleted, or a source missing, stops with exit 2.",
    )(f)


def listen_option(f: Callable) -> Callable:
    return click.option(
        "--listen",
        metavar="HOST:PORT",
        default=None,
        help="Run the webhook receiver inside this command (port 0 picks a free one).",
    )(f)


def wait_option(default: float) -> Callable:
    """--wait: seconds a row's callback is waited for (into :func:`pipeline_options`)."""
    return click.option(
        "--wait",
        type=click.FloatRange(min=0),
        default=default,
        show_default=True,
        expose_value=False,
        callback=_keep,
        help="Seconds to wait for callbacks before calling a row unconfirmed.",
    )


def verbosity() -> int:
    """How many -v were given, before the command (``omi-batch -v run``) or after it."""
    ctx = click.get_current_context()
    return max(ctx.find_root().params.get("verbose") or 0, ctx.meta.get("omi_batch.verbose", 0))


def _verbose_callback(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    if value:
        ctx.meta["omi_batch.verbose"] = value
        setup_logging(max(value, ctx.find_root().params.get("verbose") or 0))


def add_verbose_option(group: click.Group) -> None:
    """Every command takes -v too, as PRODUCT.md lists it among the common options."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            add_verbose_option(command)
        elif not any(p.name == "verbose" for p in command.params):
            command.params.append(click.Option(
                ["-v", "--verbose"], count=True, expose_value=False, is_eager=True,
                callback=_verbose_callback, help="More detail on stderr (-vv for debug).",
            ))  # fmt: skip


def notify_option(f: Callable) -> Callable:
    return click.option(
        "--notify",
        "notify_urls",
        multiple=True,
        metavar="URL",
        help="Say when the batch finished, or needs attention, at this apprise URL (mailto://, "
        "slack://, json://, ...; write a secret as ${NAME}: it is read from the environment "
        "variable NAME). Repeatable.",
    )(f)


def log_format() -> str | None:
    """The --log-format given on this command line, if any."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("omi_batch.log_format") if ctx is not None else None


def use_log_format(value: str, ctx: click.Context | None = None) -> None:
    """Log as ``value`` ("text" or "json") from now on in this command, errors included."""
    ctx = ctx or click.get_current_context()
    ctx.meta["omi_batch.log_format"] = value
    verbose = max(ctx.find_root().params.get("verbose") or 0,
                  ctx.meta.get("omi_batch.verbose", 0))  # fmt: skip
    setup_logging(verbose, value)


def _log_format_callback(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        use_log_format(value, ctx)


def log_format_option(f: Callable) -> Callable:
    return click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default=None,
        expose_value=False,
        is_eager=True,
        callback=_log_format_callback,
        help="How stderr logs: text (default) or json, one object a line (time, level, event, "
        "batch, row, request_id, message). Never a secret.",
    )(f)


def setup_logging(verbose: int, fmt: str | None = None) -> None:
    """Log on stderr at the level -v asks for, as text or JSON (omi_batch.logs), scrubbed of
    secrets. When something else already logs (a test harness) and no format was asked for,
    leave it be, as logging.basicConfig would."""
    from omi_batch import logs

    fmt = fmt or log_format()
    root = logging.getLogger()
    if fmt is None and any(not isinstance(h, logs.StderrHandler) for h in root.handlers):
        return
    logs.setup_logging(verbose, fmt or "text")


def _check_rate_limit(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse a malformed --rate-limit before anything starts."""
    from omi_batch.errors import UsageError
    from omi_batch.simulator.gate import parse_rate_limit

    try:
        parse_rate_limit(value)
    except UsageError as error:
        raise click.BadParameter(str(error).replace("rate_limit", "--rate-limit", 1)) from None
    return value


def _knob(*decls: str, **attrs: object) -> tuple[tuple[str, ...], dict]:
    return decls, attrs


# `simulator serve`'s knobs, one table: each is a click option; the ones named in
# SIMULATOR_FAULTS go to simulator.Faults, the others to Simulator (same names).
SIMULATOR_KNOBS = (
    _knob(
        "--fixture",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="Agents and conversations (default: the built-in sample fixture).",
    ),
    _knob(
        "--api-key",
        envvar="OMI_API_KEY",
        default="sim-key",
        show_default=False,
        help="The only API key accepted, as x-api-key or by GET /api/auth (default: sim-key, or "
        "OMI_API_KEY). Never printed.",
    ),
    _knob(
        "--preview-mode",
        type=click.Choice(["sync", "async"]),
        default="sync",
        show_default=True,
        help="sync: a preview's count is in the answer; async: 202, the count comes in a callback.",
    ),
    _knob(
        "--preview-field",
        type=click.Choice(["updatedRecords", "totalRecords", "total", "count", "number"]),
        default="updatedRecords",
        show_default=True,
        help="Where a sync preview puts its count (number: the payload is the count itself).",
    ),
    _knob(
        "--latency-ms", type=click.FloatRange(min=0), default=0, help="Added before every answer."
    ),
    _knob(
        "--error-rate",
        type=click.FloatRange(0, 1),
        default=0,
        help="Fraction of requests answered 500 or 503 (nothing applied).",
    ),
    _knob(
        "--rate-limit-rate",
        type=click.FloatRange(0, 1),
        default=0,
        help="Fraction of requests answered 429 with Retry-After (nothing applied).",
    ),
    _knob(
        "--retry-after",
        type=click.FloatRange(min=0),
        default=1.0,
        show_default=True,
        help="Seconds put in Retry-After.",
    ),
    _knob(
        "--slow-rate",
        type=click.FloatRange(0, 1),
        default=0,
        help="Fraction answered only after --slow-seconds (the transfer is applied first).",
    ),
    _knob(
        "--slow-seconds",
        type=click.FloatRange(min=0),
        default=35.0,
        show_default=True,
        help="How late a slow answer is.",
    ),
    _knob(
        "--reset-rate",
        type=click.FloatRange(0, 1),
        default=0,
        help="Fraction of connections closed with no answer (nothing applied).",
    ),
    _knob(
        "--drop-callbacks",
        type=click.FloatRange(0, 1),
        default=0,
        help="Fraction of callbacks never sent.",
    ),
    _knob(
        "--duplicate-callbacks",
        type=click.FloatRange(0, 1),
        default=0,
        help="Fraction of callbacks sent twice.",
    ),
    _knob(
        "--callback-delay",
        type=click.FloatRange(min=0),
        default=0,
        help="Seconds before each callback is sent.",
    ),
    _knob("--reorder-callbacks", is_flag=True, help="Hold callbacks back and send them shuffled."),
    _knob(
        "--callback-error-rate",
        type=click.FloatRange(0, 1),
        default=0,
        help="Fraction of executes whose callback says ERROR (nothing moved).",
    ),
    _knob(
        "--rate-limit",
        metavar="RPS[:BURST]",
        default=None,
        callback=_check_rate_limit,
        help="A hidden token bucket over every request of every endpoint: RPS a second, bursts of "
        "BURST (default: one second's worth). Off by default.",
    ),
    _knob(
        "--rate-limit-retry-after",
        type=click.Choice(["header", "none", "envelope"]),
        default="header",
        show_default=True,
        help="How --rate-limit refuses: 429 with Retry-After (whole seconds), 429 without it, or "
        "HTTP 200 with a -9999 rate_limit_exceeded envelope.",
    ),
    _knob(
        "--auth",
        type=click.Choice(["api-key", "bearer", "both"]),
        default="api-key",
        show_default=True,
        help="What the transfer and chat endpoints accept: x-api-key, Authorization: Bearer with a "
        "token from GET /api/auth, or either.",
    ),
    _knob(
        "--directory-auth",
        type=click.Choice(["api-key", "bearer", "both"]),
        default="bearer",
        show_default=True,
        help="The same for the agent directory (GET /api/agent/list); the vendor documents Bearer.",
    ),
    _knob(
        "--token-lifetime",
        type=click.FloatRange(min=0, min_open=True),
        metavar="SECONDS",
        default=86400.0,
        show_default=True,
        help="Seconds a token lives; then requests with it get 401 token_expired.",
    ),
    _knob(
        "--token-expires-in/--no-token-expires-in",
        default=True,
        show_default=True,
        help="Whether GET /api/auth says expires_in.",
    ),
    _knob(
        "--refuse-token-after",
        type=click.IntRange(min=0),
        default=None,
        metavar="N",
        help="Issue N tokens, then refuse every other GET /api/auth with 401 api_key_invalid "
        "(a refresh that fails).",
    ),
    _knob(
        "--directory-shape",
        type=click.Choice(["items", "data", "list"]),
        default="items",
        show_default=True,
        help="Where the directory puts its agents: payload.items, payload.data (with total), or "
        "payload as a bare list.",
    ),
    _knob(
        "--directory-fault",
        type=click.Choice(["permission_denied", "forbidden", "not_found", "unavailable", "error"]),
        default=None,
        help="The directory refuses: permission_denied (200, -9999), forbidden (403), or is "
        "unreachable: not_found (404), unavailable (503), error (500).",
    ),
    _knob(
        "--ticket-callbacks/--no-ticket-callbacks",
        default=True,
        show_default=True,
        help="Whether ticket transfers call back (TICKET_AGENT_TRANSFER); OMI may send none.",
    ),
    _knob(
        "--ticket-preview-mode",
        type=click.Choice(["sync", "async"]),
        default=None,
        help="Like --preview-mode, for ticket previews only (default: as --preview-mode).",
    ),
    _knob(
        "--ticket-window-days",
        type=click.IntRange(min=1),
        default=None,
        metavar="DAYS",
        help="Move only tickets created in the last DAYS days (default: every open ticket).",
    ),
    _knob(
        "--ticket-fault",
        type=click.Choice(["permission_denied", "forbidden"]),
        default=None,
        help="The key lacks the permission to assign others' tickets: ticket transfers answer "
        "permission_denied (200, -9999, or 403 for forbidden); conversations still work.",
    ),
    _knob(
        "--seed",
        type=int,
        default=0,
        show_default=True,
        help="Seed of the random faults (repeatable).",
    ),
)
SIMULATOR_FAULTS = (
    "latency_ms", "error_rate", "rate_limit_rate", "retry_after", "slow_rate", "slow_seconds",
    "reset_rate", "drop_callbacks", "duplicate_callbacks", "callback_delay", "reorder_callbacks",
    "callback_error_rate", "directory_fault", "ticket_fault",
)  # fmt: skip


def simulator_options(f: Callable) -> Callable:
    """Every knob of :data:`SIMULATOR_KNOBS` as an option of ``f``, in the table's order."""
    for decls, attrs in reversed(SIMULATOR_KNOBS):
        f = click.option(*decls, **attrs)(f)
    return f

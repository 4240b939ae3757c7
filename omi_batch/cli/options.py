"""Every option shared by several commands, defined once, and the -v counter."""

from __future__ import annotations

import logging
from collections.abc import Callable

import click

DEFAULT_LEDGER = "data/ledger.db"
DEFAULT_REPORTS = "data/reports"


def _path_option(flag: str, name: str, default: str, kind: click.Path, text: str,
                 **more: object) -> Callable:  # fmt: skip
    """A file or folder option whose default is shown."""
    return click.option(flag, name, default=default, show_default=True, type=kind, help=text,
                        **more)  # fmt: skip


PIPELINE_OPTIONS = "omi_batch.pipeline_options"  # ctx.meta keys: the dicts built once
PLAN_OPTIONS = "omi_batch.plan_options"


def _kept_in(key: str) -> Callable:
    """The callback of an option read from ``ctx.meta[key]`` (a dict by option name) rather than
    passed to the command as a parameter."""

    def keep(ctx: click.Context, param: click.Parameter, value: object) -> object:
        ctx.meta.setdefault(key, {})[param.name] = value
        return value

    return keep


# Each shared option is one click decorator, reused by every command that takes it.
ledger_option = _path_option("--ledger", "ledger_path", DEFAULT_LEDGER,
                             click.Path(dir_okay=False), "SQLite ledger file.",
                             envvar="OMI_BATCH_LEDGER")  # fmt: skip
reports_option = _path_option("--reports", "reports_dir", DEFAULT_REPORTS,
                              click.Path(file_okay=False),
                              "Folder the reports are written to.")  # fmt: skip
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


def _plan_option(name: str, text: str, **more: object) -> Callable:
    """An option saying how the file is read, off by default, read through :func:`plan_choice`."""
    return click.option(name, default=None, expose_value=False, callback=_kept_in(PLAN_OPTIONS),
                        help=text, **more)  # fmt: skip


limit_option = _plan_option("--limit", "Only the first N rows of the plan: try a batch small "
                            "first.", type=click.IntRange(min=1))  # fmt: skip
scope_option = _plan_option("--scope", "What a row with no scope cell moves: conversations "
                            "(default), tickets or both.", metavar="SCOPE")  # fmt: skip
check_agents_option = click.option(
    "--check-agents/--no-check-agents",
    default=True,
    show_default=True,
    help="Before anything else, look every source and target up in OMI's agent directory: "
    "a target missing, deactivated or deleted, or a source missing, stops with exit 2.",
)
listen_option = click.option(
    "--listen",
    metavar="HOST:PORT",
    default=None,
    help="Run the webhook receiver inside this command (port 0 picks a free one).",
)
notify_option = click.option(
    "--notify",
    "notify_urls",
    multiple=True,
    metavar="URL",
    help="Say when the batch finished, or needs attention, at this apprise URL (mailto://, "
    "slack://, json://, ...; write a secret as ${NAME}: it is read from the environment "
    "variable NAME). Repeatable.",
)
host_option = click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on."
)


def port_option(default: int) -> Callable:
    """--port of a service, 0 (a free port) allowed."""
    return click.option(
        "--port",
        type=click.IntRange(0, 65535),
        default=default,
        show_default=True,
        help="Port to listen on (0 picks a free one).",
    )


def max_age_option(text: str) -> Callable:
    """--max-age: hours a preview counts as fresh (preview --batch, approve)."""
    return click.option("--max-age", type=click.FloatRange(min=0), default=24.0,
                        show_default=True, help=text)  # fmt: skip


def _pipeline_option(name: str, kind: click.ParamType, default: float, text: str) -> Callable:
    """An option the pipeline reads through :func:`pipeline_options`, not a command parameter."""
    return click.option(name, type=kind, default=default, show_default=True, expose_value=False,
                        callback=_kept_in(PIPELINE_OPTIONS), help=text)  # fmt: skip


_HTTP_OPTIONS = (  # outermost first, as --help lists them
    _pipeline_option("--concurrency", click.IntRange(1, 64), 4, "Transfers in flight at once."),
    _pipeline_option(
        "--rate",
        click.FloatRange(min=0.01),
        20.0,
        "Ceiling of requests per second. The rate starts at 5 (or this, if lower), "
        "rises while OMI accepts and slows down at once when OMI says too many.",
    ),
    _pipeline_option(
        "--timeout", click.FloatRange(min=0.1), 30.0, "Seconds to wait for each HTTP answer."
    ),
)


def stacked(*decorators: Callable) -> Callable:
    """One decorator applying ``decorators`` as if written one above the other, in that order."""

    def apply(f: Callable) -> Callable:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


# --concurrency, --rate and --timeout: how hard we talk to OMI (see pipeline_options).
http_options = stacked(*_HTTP_OPTIONS)


def wait_option(default: float) -> Callable:
    """--wait: seconds a row's callback is waited for (into :func:`pipeline_options`)."""
    return _pipeline_option(
        "--wait",
        click.FloatRange(min=0),
        default,
        "Seconds to wait for callbacks before calling a row unconfirmed.",
    )


def session_options(wait: float, *, check_agents: bool = False) -> Callable:
    """What a command that opens the runtime takes: --ledger, --reports, --concurrency, --rate,
    --timeout, (--check-agents), --listen and --wait (defaulting to ``wait``), in that order."""
    return stacked(ledger_option, reports_option, http_options,
                   *([check_agents_option] if check_agents else []), listen_option,
                   wait_option(wait))  # fmt: skip


plan_options = stacked(limit_option, scope_option)  # a command reading a file of rows


def plan_choice() -> dict:
    """The command's --limit and --scope, as ``read_plan`` takes them."""
    return dict(click.get_current_context().meta.get(PLAN_OPTIONS, {}))


def pipeline_options() -> dict:
    """The command's --concurrency, --rate, --timeout and --wait as one dict, built once from
    the options themselves: what ``Session`` takes and what a batch records as its options."""
    chosen = click.get_current_context().meta.get(PIPELINE_OPTIONS, {})
    return {
        name: chosen[name] for name in ("concurrency", "rate", "timeout", "wait") if name in chosen
    }


def verbosity(ctx: click.Context | None = None) -> int:
    """How many -v were given, before the command (``omi-batch -v run``) or after it."""
    ctx = ctx or click.get_current_context()
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


def log_format() -> str | None:
    """The --log-format given on this command line, if any."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("omi_batch.log_format") if ctx is not None else None


def use_log_format(value: str, ctx: click.Context | None = None) -> None:
    """Log as ``value`` ("text" or "json") from now on in this command, errors included."""
    ctx = ctx or click.get_current_context()
    ctx.meta["omi_batch.log_format"] = value
    setup_logging(verbosity(ctx), value)


def _log_format_callback(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        use_log_format(value, ctx)


log_format_option = click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    expose_value=False,
    is_eager=True,
    callback=_log_format_callback,
    help="How stderr logs: text (default) or json, one object a line (time, level, event, "
    "batch, row, request_id, message). Never a secret.",
)


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


def _fraction(name: str, text: str) -> tuple[tuple[str, ...], dict]:
    """A fault that hits this fraction (0 to 1, off by default) of what the simulator sees."""
    return _knob(name, type=click.FloatRange(0, 1), default=0, help=text)


def _seconds(name: str, default: float, text: str) -> tuple[tuple[str, ...], dict]:
    """A delay in seconds (0 or more); its default is shown unless it is 0."""
    return _knob(name, type=click.FloatRange(min=0), default=default, show_default=bool(default),
                 help=text)  # fmt: skip


def _choice(name: str, words: tuple[str, ...], default: str | None, text: str) -> tuple:
    """One of ``words``; a default is shown, no default means the knob is off."""
    return _knob(name, type=click.Choice(words), default=default,
                 show_default=default is not None, help=text)  # fmt: skip


def _switch(name: str, text: str) -> tuple[tuple[str, ...], dict]:
    """An on/off pair (``--x/--no-x``), on by default."""
    return _knob(name, default=True, show_default=True, help=text)


AUTHS = ("api-key", "bearer", "both")

# `simulator serve`'s knobs, one table: each is a click option; the ones named in
# SIMULATOR_FAULTS go to simulator.Faults, the others to Simulator (same names).
SIMULATOR_KNOBS = (
    _knob("--fixture", type=click.Path(exists=True, dir_okay=False), default=None,
          help="Agents and conversations (default: the built-in sample fixture)."),
    _knob("--api-key", envvar="OMI_API_KEY", default="sim-key", show_default=False,
          help="The only API key accepted, as x-api-key or by GET /api/auth (default: sim-key, or "
          "OMI_API_KEY). Never printed."),
    _choice("--preview-mode", ("sync", "async"), "sync",
            "sync: a preview's count is in the answer; async: 202, the count comes in a callback."),
    _choice("--preview-field", ("updatedRecords", "totalRecords", "total", "count", "number"),
            "updatedRecords",
            "Where a sync preview puts its count (number: the payload is the count itself)."),
    _seconds("--latency-ms", 0, "Added before every answer."),
    _fraction("--error-rate", "Fraction of requests answered 500 or 503 (nothing applied)."),
    _fraction("--rate-limit-rate",
              "Fraction of requests answered 429 with Retry-After (nothing applied)."),
    _seconds("--retry-after", 1.0, "Seconds put in Retry-After."),
    _fraction("--slow-rate",
              "Fraction answered only after --slow-seconds (the transfer is applied first)."),
    _seconds("--slow-seconds", 35.0, "How late a slow answer is."),
    _fraction("--reset-rate", "Fraction of connections closed with no answer (nothing applied)."),
    _fraction("--drop-callbacks", "Fraction of callbacks never sent."),
    _fraction("--duplicate-callbacks", "Fraction of callbacks sent twice."),
    _seconds("--callback-delay", 0, "Seconds before each callback is sent."),
    _knob("--reorder-callbacks", is_flag=True, help="Hold callbacks back and send them shuffled."),
    _fraction("--callback-error-rate",
              "Fraction of executes whose callback says ERROR (nothing moved)."),
    _knob("--rate-limit", metavar="RPS[:BURST]", default=None, callback=_check_rate_limit,
          help="A hidden token bucket over every request of every endpoint: RPS a second, bursts "
          "of BURST (default: one second's worth). Off by default."),
    _choice("--rate-limit-retry-after", ("header", "none", "envelope"), "header",
            "How --rate-limit refuses: 429 with Retry-After (whole seconds), 429 without it, or "
            "HTTP 200 with a -9999 rate_limit_exceeded envelope."),
    _choice("--auth", AUTHS, "api-key",
            "What the transfer and chat endpoints accept: x-api-key, Authorization: Bearer with "
            "a token from GET /api/auth, or either."),
    _choice("--directory-auth", AUTHS, "bearer",
            "The same for the agent directory (GET /api/agent/list); the vendor documents "
            "Bearer."),
    _knob("--token-lifetime", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
          default=86400.0, show_default=True,
          help="Seconds a token lives; then requests with it get 401 token_expired."),
    _switch("--token-expires-in/--no-token-expires-in", "Whether GET /api/auth says expires_in."),
    _knob("--refuse-token-after", type=click.IntRange(min=0), default=None, metavar="N",
          help="Issue N tokens, then refuse every other GET /api/auth with 401 api_key_invalid "
          "(a refresh that fails)."),
    _choice("--directory-shape", ("items", "data", "list"), "items",
            "Where the directory puts its agents: payload.items, payload.data (with total), or "
            "payload as a bare list."),
    _choice("--directory-fault",
            ("permission_denied", "forbidden", "not_found", "unavailable", "error"), None,
            "The directory refuses: permission_denied (200, -9999), forbidden (403), or is "
            "unreachable: not_found (404), unavailable (503), error (500)."),
    _switch("--ticket-callbacks/--no-ticket-callbacks",
            "Whether ticket transfers call back (TICKET_AGENT_TRANSFER); OMI may send none."),
    _choice("--ticket-preview-mode", ("sync", "async"), None,
            "Like --preview-mode, for ticket previews only (default: as --preview-mode)."),
    _knob("--ticket-window-days", type=click.IntRange(min=1), default=None, metavar="DAYS",
          help="Move only tickets created in the last DAYS days (default: every open ticket)."),
    _choice("--ticket-fault", ("permission_denied", "forbidden"), None,
            "The key lacks the permission to assign others' tickets: ticket transfers answer "
            "permission_denied (200, -9999, or 403 for forbidden); conversations still work."),
    _knob("--seed", type=int, default=0, show_default=True,
          help="Seed of the random faults (repeatable)."),
)  # fmt: skip
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

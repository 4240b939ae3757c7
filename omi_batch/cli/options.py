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


def http_options(f: Callable) -> Callable:
    """--concurrency, --rate and --timeout: how hard we talk to OMI."""
    f = click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=30.0,
        show_default=True,
        help="Seconds to wait for each HTTP answer.",
    )(f)
    f = click.option(
        "--rate",
        type=click.FloatRange(min=0.01),
        default=20.0,
        show_default=True,
        help="Ceiling of requests per second. The rate starts at 5 (or this, if lower), "
        "rises while OMI accepts and slows down at once when OMI says too many.",
    )(f)
    f = click.option(
        "--concurrency",
        type=click.IntRange(1, 64),
        default=4,
        show_default=True,
        help="Transfers in flight at once.",
    )(f)
    return f


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
    return click.option(
        "--wait",
        type=click.FloatRange(min=0),
        default=default,
        show_default=True,
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

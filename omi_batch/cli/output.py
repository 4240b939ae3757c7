"""What commands print and how they end: one error line and its exit code, tables, JSON,
progress bars (stdout is data, stderr is talk)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shlex
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from omi_batch.cli.options import verbosity
from omi_batch.errors import EXIT_INTERRUPTED, OmiBatchError, StorageError

log = logging.getLogger("omi_batch")


@contextlib.contextmanager
def errors_to_exit() -> Iterator[None]:
    """Turn library errors into one line on stderr and the exit code they carry."""
    try:
        yield
    except click.Abort:  # Ctrl-C or end of input at a prompt
        click.echo("\nInterrupted: nothing more was done.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except OmiBatchError as error:
        if verbosity():
            log.exception("traceback")
        click.echo(f"Error: {error}", err=True)
        problems = getattr(error, "problems", [])
        for problem in problems:
            click.echo(f"  {problem}", err=True)
        more = getattr(error, "total", len(problems)) - len(problems)
        if more > 0:
            click.echo(f"  and {more:,} more", err=True)
        if getattr(error, "errors_csv", None):
            click.echo(f"Every problem is listed in {error.errors_csv}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        ctx = click.get_current_context(silent=True)
        command = ctx.meta.get(RESUME) if ctx is not None else None
        if command:
            click.echo(f"Interrupted: state is saved; resume with: {command}", err=True)
        else:
            click.echo("Interrupted: state is saved; run the same command again to resume.",
                       err=True)  # fmt: skip
        sys.exit(EXIT_INTERRUPTED)
    except OSError as error:  # a full disk, a read-only folder, a file where a folder is
        if verbosity():
            log.exception("traceback")
        click.echo(f"Error: {storage_message(error)}", err=True)
        sys.exit(StorageError.exit_code)


class Group(click.Group):
    """The root group: every command's errors become one line and an exit code, once."""

    def invoke(self, ctx: click.Context) -> Any:
        with errors_to_exit():
            return super().invoke(ctx)


def handle_errors(f: Callable) -> Callable:
    """:func:`errors_to_exit` for one function run outside the root group."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with errors_to_exit():
            return f(*args, **kwargs)

    return wrapper


def storage_message(error: OSError) -> str:
    """One line for a file that could not be written: which, why, what to do, how to resume."""
    import errno

    where = error.filename or "a file"
    why = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space on the disk holding {where}"
    elif error.errno in (errno.EEXIST, errno.ENOTDIR):
        fix = f"{where} (or a folder above it) is not a folder: name a folder"
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "name a folder this user can write"
    else:
        fix = "fix that"
    return (f"cannot write {where}: {why}. Nothing is lost: the ledger holds every row's "
            f"state; {fix}, then run the same command again to resume (omi-batch report "
            "BATCH writes the reports alone)")  # fmt: skip


RESUME = "omi_batch.resume"  # ctx.meta key: the command that resumes what this one started


def resume_with(*words: object, ledger_path: str | None = None, reports_dir: str | None = None,
                listen: str | None = None) -> None:  # fmt: skip
    """Say which command resumes this one if it is interrupted from now on (``omi-batch``
    WORDS, with the ledger, reports folder and receiver this one uses)."""
    from omi_batch.cli.options import DEFAULT_LEDGER, DEFAULT_REPORTS

    args = [str(w) for w in words]
    if ledger_path and ledger_path != DEFAULT_LEDGER:
        args += ["--ledger", str(ledger_path)]
    if reports_dir and reports_dir != DEFAULT_REPORTS:
        args += ["--reports", str(reports_dir)]
    if listen:
        args += ["--listen", listen]
    click.get_current_context().meta[RESUME] = shlex.join(["omi-batch", *args])


def plural(count: int, word: str) -> str:
    """``1 row``, ``2 rows``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


class RichProgress:
    """Progress bars on stderr, only when stderr is a terminal (a job's log stays clean);
    each shows the rate limiter's current requests per second (``rate``, set by the pipeline)."""

    rate: Callable[[], float] | None = None

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._bars = Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), "{task.fields[rate]}", console=Console(stderr=True),
            transient=False,
        )  # fmt: skip
        self._tasks: dict[str, Any] = {}

    def start(self, phase: str, total: int) -> None:
        if not self._tasks:
            self._bars.start()
        self._tasks[phase] = self._bars.add_task(phase, total=total, rate=self._rate())

    def advance(self, phase: str, n: int = 1) -> None:
        if phase in self._tasks:
            self._bars.update(self._tasks[phase], advance=n, rate=self._rate())

    def _rate(self) -> str:
        return f"{self.rate():.1f} req/s" if self.rate is not None else ""

    def done(self, phase: str) -> None:
        self._tasks.pop(phase, None)
        if not self._tasks:
            self._bars.stop()


def progress():
    return RichProgress() if sys.stderr.isatty() else None


def print_plan_summary(rows: list[dict]) -> None:
    previewed = [r for r in rows if r["conversations_previewed"] is not None]
    targets = {r["target_email"] for r in previewed}
    total = sum(r["conversations_previewed"] for r in previewed)
    failed = [r for r in rows if r["state"] == "preview_failed"]
    click.echo(f"{len(previewed)} row(s) previewed: {total} conversation(s) to "
               f"{len(targets)} target agent(s); {len(failed)} failed their preview.", err=True)  # fmt: skip
    for row in failed:
        click.echo(f"  row {row['row']}: {row['source_email']} → {row['target_email']}: "
                   f"{row['preview_error']}", err=True)  # fmt: skip


def print_results(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    from omi_batch.states import result_status

    table = Table(title=None, show_edge=False)
    for column in ("row", "source", "target", "previewed", "status", "updated", "error"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(
            str(r["row"]), r["source_email"], r["target_email"],
            "" if r["conversations_previewed"] is None else str(r["conversations_previewed"]),
            result_status(r), "" if r["updated_records"] is None else str(r["updated_records"]),
            r["error"] or r["preview_error"] or "",
        )  # fmt: skip
    Console(width=160 if not sys.stdout.isatty() else None).print(table)


def print_reports(written: dict) -> None:
    for kind, path in written.items():
        click.echo(f"{kind} report: {path}", err=True)


def exit_for(rows: list[dict], approved_only: bool = True) -> None:
    from omi_batch.states import result_status

    relevant = [r for r in rows if r["approved_at"]] if approved_only else rows
    if any(result_status(r) in ("failed", "unconfirmed", "preview_failed") or
           r["state"] == "approved" for r in relevant):  # fmt: skip
        sys.exit(1)
    if any(r.get("needs_review") for r in rows):  # conflicting callbacks: a person must look
        sys.exit(1)


def batch_json(ledger: Any, batch_id: str, rows: list[dict]) -> dict:
    """One batch as `status BATCH --json` prints it (PRODUCT.md's shape)."""
    from omi_batch.states import batch_state, result_status

    info = ledger.batch(batch_id)
    word = {"planned", "previewed", "approved"}  # before a row has a results status
    return {
        "batch": info["id"], "created_at": info["created_at"], "row_count": info["row_count"],
        "state": batch_state(info["states"]),
        "rows": [
            {"row": r["row"], "source_email": r["source_email"],
             "target_email": r["target_email"],
             "state": r["state"] if r["state"] in word else result_status(r),
             "request_id": r["request_id"],
             "conversations_previewed": r["conversations_previewed"],
             "updated_records": r["updated_records"]}
            for r in rows
        ],
    }  # fmt: skip


def table(headers: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_edge=False)
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    Console(width=160 if not sys.stdout.isatty() else None).print(table)


PLAN_COLUMNS = (
    "row", "source_email", "target_email", "via", "scope", "conversations", "replace", "note",
)  # fmt: skip
RICH_TABLE_MAX = 2000  # rich takes ~0.5 ms a row: past this, plain columns print at once


def plan_rows(plan: Any) -> list[tuple[str, ...]]:
    """The cells of the plan table, one tuple of PLAN_COLUMNS per transfer."""

    def cut(text: str, most: int = 40) -> str:
        text = " ".join(text.split())
        return text if len(text) <= most else text[: most - 1] + "…"

    splitting = {t.source_email for t in plan.transfers if t.conv_ids}
    rows = []
    for t in plan.transfers:
        if t.conv_ids:
            more = len(t.conv_ids) - 3
            conversations = ", ".join(t.conv_ids[:3]) + (f" (+{more})" if more > 0 else "")
        else:
            conversations = "all the others" if t.source_email in splitting else "all"
        rows.append(
            (
                str(t.row),
                t.source_email,
                t.target_email,
                ", ".join(t.via),
                getattr(t, "scope", "conversations"),
                cut(conversations) if getattr(t, "scope", "") != "tickets" else "",
                "yes" if t.replace_existing_members else "no",
                cut(t.note),
            )
        )
    return rows


def print_plan(plan: Any) -> None:
    """A roster Plan as a table on stdout, then one summary line. rich draws it on a terminal;
    elsewhere (a pipe, a log) and for big plans it is plain aligned columns."""
    rows = plan_rows(plan)
    stdout = sys.stdout
    if stdout.isatty() and len(rows) <= RICH_TABLE_MAX:
        from rich import box
        from rich.console import Console
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for name in PLAN_COLUMNS:
            if name in ("source_email", "target_email", "via"):  # an email is never cut short
                table.add_column(name, overflow="fold", min_width=12)
            else:
                short = name in ("row", "replace")
                table.add_column(
                    name,
                    justify="right" if name == "row" else "left",
                    no_wrap=True,
                    min_width=len(name) if short else None,
                )
        for row in rows:
            table.add_row(*row)
        Console(file=stdout, highlight=False).print(table)
    else:
        widths = [
            max([len(name), *(len(row[i]) for row in rows)]) for i, name in enumerate(PLAN_COLUMNS)
        ]

        def line(cells: tuple[str, ...]) -> str:
            padded = [
                c.rjust(w) if i == 0 else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ]
            return "  ".join(padded).rstrip()

        lines = [line(PLAN_COLUMNS), "  ".join("-" * w for w in widths)]
        lines.extend(line(row) for row in rows)
        click.echo("\n".join(lines))
    total = plan.to_dict_head()["total_transfers"]
    shown = len(plan.transfers)
    counted = (
        f"the first {shown} of {plural(total, 'transfer')} (--limit)"
        if shown < total
        else plural(total, "transfer")
    )
    click.echo(
        f"{counted} from {plural(len(plan.sources()), 'source')} to "
        f"{plural(len(plan.targets()), 'target')}; {plural(plan.input_rows, 'row')} read, "
        f"{plural(len(plan.warnings), 'warning')}. Nothing was sent."
    )

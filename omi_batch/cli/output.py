"""What commands print and how they end: one error line and its exit code, tables, JSON,
progress bars (stdout is data, stderr is talk)."""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

import click

from omi_batch.cli.options import log_format, verbosity
from omi_batch.errors import EXIT_INTERRUPTED, OmiBatchError, StorageError

log = logging.getLogger("omi_batch")


def tell(lines: list[str], event: str, level: int = logging.ERROR) -> None:
    """How a command ends, on stderr: in the log's own format, so with ``--log-format json``
    (or a job file's ``log_format = "json"``) every line stays a JSON object (one record a
    line, ``Error: `` left to the level); otherwise the lines as they are."""
    if log_format() != "json":
        for line in lines:
            click.echo(line, err=True)
        return
    for line in lines:
        text = line.strip()
        log.log(level, text.removeprefix("Error: "), extra={"event": event})


@contextlib.contextmanager
def errors_to_exit() -> Iterator[None]:
    """Turn library errors into one line on stderr and the exit code they carry."""
    try:
        yield
    except click.Abort:  # Ctrl-C or end of input at a prompt
        tell(["\nInterrupted: nothing more was done."], "interrupted", logging.WARNING)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as error:  # click's own: a usage error, a bad value
        if log_format() != "json":
            raise  # click prints its usage and "Error:" lines itself
        ctx = getattr(error, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        tell([error.format_message() + hint], "usage_error")
        sys.exit(error.exit_code)
    except OmiBatchError as error:
        if verbosity():
            log.exception("traceback")
        lines = [f"Error: {error}"]
        problems = getattr(error, "problems", [])
        lines += [f"  {problem}" for problem in problems]
        more = getattr(error, "total", len(problems)) - len(problems)
        if more > 0:
            lines.append(f"  and {more:,} more")
        if getattr(error, "errors_csv", None):
            lines.append(f"Every problem is listed in {error.errors_csv}")
        tell(lines, "error")
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        ctx = click.get_current_context(silent=True)
        command = ctx.meta.get(RESUME) if ctx is not None else None
        if command:
            line = f"Interrupted: state is saved; resume with: {command}"
        else:
            line = "Interrupted: state is saved; run the same command again to resume."
        tell([line], "interrupted", logging.WARNING)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as error:  # a full disk, a read-only folder, a file where a folder is
        if verbosity():
            log.exception("traceback")
        tell([f"Error: {storage_message(error)}"], "error")
        sys.exit(StorageError.exit_code)


class Group(click.Group):
    """The root group: every command's errors become one line and an exit code, once."""

    def invoke(self, ctx: click.Context) -> Any:
        with errors_to_exit():
            return super().invoke(ctx)


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
    """Progress bars on stderr, only when stderr is a terminal (a job's log stays clean): rows
    done of all, rows per second, time left (ETA) and the rate limiter's current requests per
    second (``rate``, set by the pipeline)."""

    rate: Callable[[], float] | None = None

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RowsPerSecond(ProgressColumn):
            """``12.5 rows/s`` once two rows are done (rich's estimate over the last 30 s);
            ``agents/s`` for the directory check."""

            def render(self, task: Any) -> Text:
                speed, unit = task.finished_speed or task.speed, task.fields["unit"]
                return Text(f"– {unit}/s" if speed is None else f"{speed:.1f} {unit}/s",
                            style="progress.data.speed")  # fmt: skip

        self._bars = Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            RowsPerSecond(), "eta", TimeRemainingColumn(), TimeElapsedColumn(),
            "{task.fields[rate]}", console=Console(stderr=True), transient=False,
        )  # fmt: skip
        self._tasks: dict[str, Any] = {}

    def start(self, phase: str, total: int | None) -> None:
        from omi_batch.directory import PHASE

        if not self._tasks:
            self._bars.start()
        unit = "agents" if phase == PHASE else "rows"
        self._tasks[phase] = self._bars.add_task(phase, total=total, rate=self._rate(),
                                                 unit=unit)  # fmt: skip

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
    total = sum(r["conversations_previewed"] for r in previewed if r["kind"] != "tickets")
    tickets = [r for r in previewed if r["kind"] == "tickets"]
    what = f"{total} conversation(s)"
    if tickets:
        what += f" and {sum(r['conversations_previewed'] for r in tickets)} ticket(s)"
    failed = [r for r in rows if r["state"] == "preview_failed"]
    click.echo(f"{len({r['row'] for r in previewed})} row(s) previewed: {what} to "
               f"{len(targets)} target agent(s); {len(failed)} failed their preview.", err=True)  # fmt: skip
    for row in failed:
        click.echo(f"  {row_label(row)}: {row['source_email']} → {row['target_email']}: "
                   f"{row['preview_error']}", err=True)  # fmt: skip


def row_label(row: dict) -> str:
    """``row 5``, or ``row 5 (tickets)`` for a ticket transfer."""
    return f"row {row['row']}" + (" (tickets)" if row.get("kind") == "tickets" else "")


def print_results(rows: list[dict]) -> None:
    """The results of a batch's rows, as a table on stdout."""
    from omi_batch.states import result_status, shown_error

    table(["row", "source", "target", "previewed", "status", "updated", "error"],
          [[row_label(r)[4:], r["source_email"], r["target_email"], r["conversations_previewed"],
            result_status(r), r["updated_records"], shown_error(r)]
           for r in rows], right=("row", "previewed", "updated"))  # fmt: skip


PRINTED = "omi_batch.printed"  # ctx.meta key: the report paths this command has told already
REPORT_NAMES = {"review_xlsx": "review workbook", "results_xlsx": "results workbook"}


def print_reports(written: dict) -> None:
    """Each report's path on stderr, once per command: a report written again later (run
    rewrites the preview's) is not told twice."""
    ctx = click.get_current_context(silent=True)
    told: set[str] = ctx.meta.setdefault(PRINTED, set()) if ctx is not None else set()
    for kind, path in written.items():
        if str(path) in told:
            continue
        told.add(str(path))
        click.echo(f"{REPORT_NAMES.get(kind, f'{kind} report')}: {path}", err=True)


def print_summary(batch_id: str, rows: list[dict]) -> None:
    """The end of a run for a manager, on stderr: one line of outcomes and conversations
    moved, then what each target agent received (reports.summary_line, received_by_target)."""
    from omi_batch.reports import received_by_target, summary_line

    click.echo(summary_line(batch_id, rows), err=True)
    received = received_by_target(rows)
    if not received:
        return
    click.echo("Conversations received, per target agent:", err=True)
    width = max(len(target) for target, _, _ in received)
    digits = max(len(str(moved)) for _, moved, _ in received)
    for target, moved, _ in received:
        click.echo(f"  {target.ljust(width)}  {str(moved).rjust(digits)}", err=True)


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
    from omi_batch.batches import counts, state_of
    from omi_batch.states import row_word, shown_error

    info = ledger.batch(batch_id)
    return {
        "batch": info["id"], "created_at": info["created_at"], "row_count": info["row_count"],
        "state": state_of(ledger.path, info), "counts": counts(info["states"]),
        "previewed_at": info.get("previewed_at"),
        "rows": [
            {"row": r["row"], "source_email": r["source_email"],
             "target_email": r["target_email"], "state": row_word(r),
             "request_id": r["request_id"],
             "conversations_previewed": r["conversations_previewed"],
             "updated_records": r["updated_records"],
             **({"kind": r["kind"]} if r["kind"] != "conversations" else {}),
             **({"needs_review": True, "error": shown_error(r)} if r.get("needs_review")
                else {})}
            for r in rows
        ],
    }  # fmt: skip


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
          right: Collection[str] = ()) -> None:  # fmt: skip
    """A table on stdout: rich draws it on a terminal; in a pipe or a file it is plain
    aligned columns (no borders for a script to strip). ``right``: columns aligned right."""
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    if not sys.stdout.isatty():
        click.echo(plain_columns(headers, cells, right))
        return
    from rich.console import Console
    from rich.table import Table

    drawn = Table(show_edge=False)
    for i, header in enumerate(headers):
        # Wrapped between words, never inside one: an id, a time, an email stays whole.
        word = max((len(w) for text in [header, *(row[i] for row in cells)] for w in text.split()),
                   default=1)  # fmt: skip
        drawn.add_column(header, overflow="fold", min_width=word,
                         justify="right" if header in right else "left")  # fmt: skip
    for row in cells:
        drawn.add_row(*row)
    Console().print(drawn)


def plain_columns(headers: Sequence[str], rows: Sequence[Sequence[str]],
                  right: Collection[str] = ()) -> str:  # fmt: skip
    """Headers, a dashed line and the rows, in columns two spaces apart."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if h in right else c.ljust(w)
                         for c, w, h in zip(cells, widths, headers, strict=True)).rstrip()  # fmt: skip

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, rows)])


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

        console = Console(file=stdout, highlight=False)
        widths = {name: max([len(name), *(len(row[i]) for row in rows)])
                  for i, name in enumerate(PLAN_COLUMNS)}  # fmt: skip
        # Every column but the two free texts is shown whole (an email is never cut short);
        # conversations and note share what is left of the terminal, cut with an ellipsis,
        # and the note, then the conversations, are left out when less than 12 is left.
        shown = list(PLAN_COLUMNS)
        room = 0
        for dropped in ("note", "conversations"):
            free = [n for n in shown if n in ("conversations", "note")]
            fixed = sum(widths[n] + 3 for n in shown if n not in free)
            room = (console.width - fixed) // len(free) - 3
            if room >= 12:
                break
            shown.remove(dropped)
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for name in shown:
            whole = name not in ("conversations", "note")
            table.add_column(name, justify="right" if name == "row" else "left", no_wrap=True,
                             min_width=widths[name] if whole else None,
                             max_width=None if whole else room, overflow="ellipsis")  # fmt: skip
        for row in rows:
            table.add_row(*(cell for cell, name in zip(row, PLAN_COLUMNS, strict=True)
                            if name in shown))  # fmt: skip
        console.print(table)
        left_out = [n for n in PLAN_COLUMNS if n not in shown]
        if left_out:
            click.echo(f"({' and '.join(left_out)} left out: the terminal is too narrow; "
                       "piped, e.g. into `| cat`, every column is printed)", err=True)  # fmt: skip
    else:
        click.echo(plain_columns(PLAN_COLUMNS, rows, right=("row",)))
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

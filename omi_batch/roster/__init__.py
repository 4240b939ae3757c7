"""Read the offboarding CSV (or .xlsx), validate every row and resolve it into a plan.

Pure: no network, no ledger. A file with any problem raises :class:`InputError` with every
problem counted and the first ones listed (all of them in an errors CSV on request), each with
the row number as Excel shows it (header = row 1; a quoted newline inside a cell does not shift
the rows after it). Warnings (duplicate rows, chains) go into the plan and the run goes on.

The file is read by :mod:`omi_batch.tables` one row at a time, and each row is checked as it
comes: only what the checks between rows need is kept (one string per distinct address, each
normalized once by email-validator, so one mailbox written two ways is one agent).

Problem codes. The file: ``too_big``, ``empty_file``, ``binary_file``, ``bad_encoding``,
``bad_xlsx``, ``bad_quotes``, ``missing_column``, ``duplicate_column``, ``no_rows``. A row:
``extra_fields``, ``missing_fields``, ``too_long``, ``missing_value``, ``bad_email``,
``source_is_target``, ``bad_boolean``, ``bad_scope``, ``scientific_conv_id``,
``tickets_with_conv_ids``. Between rows: ``duplicate_conversation``, ``two_catch_alls``,
``two_ticket_rows``, ``split_chain``, ``cycle``. Warning codes: ``duplicate_row``, ``chain``, ``shared_split``, ``unknown_column``,
``extra_sheets``, ``hidden_rows``.

In an .xlsx, a hidden sheet is not read while a visible one has the columns, and rows Excel hides
(hidden or filtered out) are read like the others and named in a warning (see :mod:`.sheets`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from omi_batch.errors import InputError, UsageError
from omi_batch.roster.between import _resolve
from omi_batch.roster.checks import (
    _FAST_EMAIL,
    _blank,
    _fast_valid,
    _has_roster_columns,
    _map_columns,
    _Problems,
    _RowChecker,
    _scope_of,
    escape,
    normalized_email,
)
from omi_batch.roster.plan import (
    ALIASES,
    BOOLEANS,
    FIELDS,
    MAX_CELL,
    MAX_CONV_IDS_CELL,
    MAX_NOTE,
    MAX_PROBLEMS,
    REQUIRED,
    SCOPE_ALIASES,
    SCOPES,
    Plan,
    Transfer,
)
from omi_batch.roster.sheets import hidden_rows_warning, look_into
from omi_batch.tables import Problem, TableError, open_table

__all__ = [
    "ALIASES", "BOOLEANS", "FIELDS", "MAX_CELL", "MAX_CONV_IDS_CELL", "MAX_NOTE", "MAX_PROBLEMS",
    "REQUIRED", "SCOPE_ALIASES", "SCOPES", "_FAST_EMAIL", "Plan", "Problem", "Transfer",
    "_fast_valid", "escape", "normalized_email", "read_plan",
]  # fmt: skip


def read_plan(
    path: str | os.PathLike[str],
    *,
    limit: int | None = None,
    scope: str | None = None,
    errors_csv: str | os.PathLike[str] | None = None,
    max_problems: int = MAX_PROBLEMS,
) -> Plan:
    """Read, validate and resolve the file at ``path`` into a plan; ``limit`` keeps the first
    N transfers of the plan (the whole file is still validated); ``scope`` is what a row with no
    ``scope`` cell moves (``conversations`` when not given).

    The rows are checked as they are read. Raises ``InputError`` when the file cannot be used
    as it is: its ``problems`` are the first ``max_problems`` (by row) and ``total`` counts them
    all; with ``errors_csv``, every problem is written to that file (row, code, message) as it
    is found.
    """
    path = Path(path)
    name = path.name
    default_scope = _scope_of(scope or "conversations")
    if default_scope is None:
        raise UsageError(f"scope {scope!r} is not one of: {', '.join(SCOPES)}")
    problems = _Problems(max_problems, errors_csv)
    try:
        return _read_plan(path, limit, default_scope, problems)
    except TableError as error:
        problems.add(error.problem)
        raise _refuse(name, problems) from None
    finally:
        problems.close()


def _refuse(name: str, problems: _Problems | Sequence[Problem]) -> InputError:
    if not isinstance(problems, _Problems):
        found, total = list(problems), len(problems)
    else:
        found, total = problems.first(), problems.total
    noun = "problem" if total == 1 else "problems"
    return InputError(f"{name}: {total:,} {noun} found; nothing was sent", found, total=total)


def _read_plan(path: Path, limit: int | None, default_scope: str, problems: _Problems) -> Plan:
    name = path.name
    workbook = look_into(path)
    sheet_name = workbook.choose(_has_roster_columns) if workbook else None
    with open_table(path, sheet_name=sheet_name, wanted=_has_roster_columns) as table:
        columns, header_problems, warnings = _map_columns(table)
        warnings = table.warnings + warnings
        hidden: frozenset[int] = frozenset()
        if workbook is not None:
            warnings = workbook.sheet_warnings(warnings, table.sheet)
            hidden = workbook.hidden_rows(table.sheet)
        if header_problems:
            for problem in header_problems:
                problems.add(problem)
            raise _refuse(name, problems)
        checker = _RowChecker(columns, table, problems, default_scope)
        hidden_read: list[int] = []
        for number, cells in table.rows:
            checker.check(number, cells)
            if hidden and number in hidden and not _blank(cells):
                hidden_read.append(number)
        sha256 = table.sha256
    if hidden_read:
        warnings.append(hidden_rows_warning(hidden_read))
    if checker.input_rows == 0:
        problems.add(Problem(None, "no_rows", "the file has a header but no rows"))
        raise _refuse(name, problems)
    input_rows = checker.input_rows
    transfers = _resolve(checker.rows, problems, warnings)
    del checker  # its rows and caches: the plan is all that is left
    if problems.total:
        raise _refuse(name, problems)
    warnings.sort(key=lambda p: p.row if p.row is not None else 0)
    total = len(transfers)
    if limit is not None:
        transfers = transfers[:limit]
    return Plan(
        source_file=str(path),
        sha256=sha256,
        input_rows=input_rows,
        transfers=transfers,
        warnings=warnings,
        total_transfers=total,
    )

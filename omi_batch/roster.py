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
``extra_sheets``.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

from omi_batch.errors import InputError, UsageError
from omi_batch.tables import (
    SCIENTIFIC_ADVICE,
    Problem,
    TableError,
    is_scientific,
    open_table,
    unescape,
)

MAX_CELL = 1_000  # an email, a boolean, one conversation id
MAX_CONV_IDS_CELL = 100_000  # a whole conv_ids cell (many ids)
MAX_NOTE = 10_000

EMAIL_CACHE = 200_000  # distinct address cells normalized once each (then the cache starts over)
MAX_PROBLEMS = 100  # problems an InputError carries (all are counted, and written on request)

FIELDS = ("source_email", "target_email", "replace_existing_members", "conv_ids", "note", "scope")
SCOPES = ("conversations", "tickets", "both")
# What a row moves, compared like header names (lower-case, no spaces, "_" or "-").
SCOPE_ALIASES = {
    **dict.fromkeys(
        ("conversations", "conversation", "convs", "conv", "chats", "chat"), "conversations"
    ),
    **dict.fromkeys(("tickets", "ticket"), "tickets"),
    **dict.fromkeys(("both", "all"), "both"),
}
REQUIRED = ("source_email", "target_email")
# Header names are compared lower-cased with spaces, "_" and "-" removed.
ALIASES = {
    "sourceemail": "source_email",
    "source": "source_email",
    "targetemail": "target_email",
    "target": "target_email",
    "replaceexistingmembers": "replace_existing_members",
    "convids": "conv_ids",
    "convid": "conv_ids",
    "note": "note",
    "scope": "scope",
}
BOOLEANS = {
    "": False,
    "false": False,
    "no": False,
    "0": False,
    "true": True,
    "yes": True,
    "1": True,
}
CONV_ID_SEPARATORS = re.compile(r"[;|\s]+")


@dataclass(frozen=True, slots=True)
class Transfer:
    """One transfer of the plan: the conversations of ``source_email`` go to ``target_email``.

    ``target_email`` is the target after chain resolution; ``requested_target`` is what the
    row says, and ``via`` the leaving agents the chain went through. No ``conv_ids`` means a
    catch-all: every conversation of the source not routed by its other rows.
    """

    row: int
    source_email: str
    target_email: str
    requested_target: str
    via: tuple[str, ...]
    conv_ids: tuple[str, ...]
    replace_existing_members: bool
    note: str
    scope: str = "conversations"  # conversations, tickets or both

    @property
    def catch_all(self) -> bool:
        """Takes every conversation of its source not routed by another row."""
        return not self.conv_ids and self.scope != "tickets"

    @property
    def moves_conversations(self) -> bool:
        return self.scope != "tickets"

    @property
    def moves_tickets(self) -> bool:
        return self.scope != "conversations"

    def to_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "source_email": self.source_email,
            "target_email": self.target_email,
            "requested_target": self.requested_target,
            "via": list(self.via),
            "conv_ids": list(self.conv_ids),
            "replace_existing_members": self.replace_existing_members,
            "note": self.note,
            "scope": self.scope,
        }


@dataclass
class Plan:
    """The validated input: transfers in the order they run, and the warnings to show."""

    source_file: str
    sha256: str
    input_rows: int
    transfers: list[Transfer]
    warnings: list[Problem]
    total_transfers: int | None = None  # before --limit; None means len(transfers)

    def sources(self) -> list[str]:
        """Distinct source agents, in plan order."""
        return list(dict.fromkeys(t.source_email for t in self.transfers))

    def targets(self) -> list[str]:
        """Distinct (resolved) target agents, in plan order."""
        return list(dict.fromkeys(t.target_email for t in self.transfers))

    def warnings_by_row(self) -> dict[int, list[str]]:
        """Each row's warnings (``code: message``), for the report line of that row; warnings
        about the whole file (no row) are not in it."""
        by_row: dict[int, list[str]] = {}
        for warning in self.warnings:
            if warning.row is not None:
                by_row.setdefault(warning.row, []).append(f"{warning.code}: {warning.message}")
        return by_row

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-ready data (what ``validate --json`` prints)."""
        return {
            **self.to_dict_head(),
            "transfers": [t.to_dict() for t in self.transfers],
            "warnings": [w.to_dict() for w in self.warnings],
        }

    def iter_json(self, batch: int = 1000) -> Iterator[str]:
        """``to_dict()`` as JSON text in pieces, one transfer a line: a plan of 100,000
        transfers is written without building it all in memory first."""
        head = self.to_dict_head()
        yield "{\n"
        for key, value in head.items():
            yield f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},\n"
        for key, items in (("transfers", self.transfers), ("warnings", self.warnings)):
            yield f'  "{key}": ['
            for start in range(0, len(items), batch):
                lines = (
                    ("\n    " if start + i == 0 else ",\n    ")
                    + json.dumps(item.to_dict(), ensure_ascii=False)
                    for i, item in enumerate(items[start : start + batch])
                )
                yield "".join(lines)
            yield ("\n  ]" if items else "]") + (",\n" if key == "transfers" else "\n")
        yield "}\n"

    def to_dict_head(self) -> dict[str, Any]:
        """Everything in ``to_dict()`` but the transfers and warnings lists."""
        total = len(self.transfers) if self.total_transfers is None else self.total_transfers
        return {
            "source_file": self.source_file,
            "sha256": self.sha256,
            "input_rows": self.input_rows,
            "total_transfers": total,
            "sources": len(self.sources()),
            "targets": len(self.targets()),
        }


# --------------------------------------------------------------------------- reading


def _has_roster_columns(header: list[str]) -> bool:
    names = {ALIASES.get(_header_key(h)) for h in header}
    return all(f in names for f in REQUIRED)


def _cells(count: int) -> str:
    return "1 cell" if count == 1 else f"{count} cells"


def _blank(cells: Iterable[str]) -> bool:
    return all(not c.strip() for c in cells)


# --------------------------------------------------------------------------- the header


def _header_key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().lstrip("\ufeff").lower())


def _map_columns(sheet: Any) -> tuple[dict[str, int], list[Problem], list[Problem]]:
    """Which column holds each field; problems (missing/duplicate) and warnings (unknown)."""
    columns: dict[str, int] = {}
    problems: list[Problem] = []
    warnings: list[Problem] = []
    row = sheet.header_row
    for index, raw in enumerate(sheet.header):
        name = raw.strip()
        if not name:
            continue
        field_name = ALIASES.get(_header_key(name))
        if field_name is None:
            warnings.append(Problem(row, "unknown_column", f"column {name!r} is not used"))
        elif field_name in columns:
            first = sheet.header[columns[field_name]].strip()
            problems.append(
                Problem(
                    row,
                    "duplicate_column",
                    f"columns {first!r} and {name!r} both mean {field_name}",
                )
            )
        else:
            columns[field_name] = index
    for field_name in REQUIRED:
        if field_name not in columns:
            aliases = " or ".join(
                repr(a) for a in (field_name, _camel(field_name), field_name.split("_")[0])
            )
            found = ", ".join(repr(h.strip()) for h in sheet.header if h.strip())
            problems.append(
                Problem(
                    row,
                    "missing_column",
                    f"no {field_name} column (name it {aliases}); the header has {found}",
                )
            )
    return columns, problems, warnings


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# --------------------------------------------------------------------------- validation


class _Problems:
    """Every problem found: all counted, each written to the errors CSV (if asked) as it is found,
    and only the first ``keep`` by row held in memory — a file of a million bad rows costs no
    more than a good one."""

    def __init__(self, keep: int, errors_csv: str | os.PathLike[str] | None):
        self.keep = keep
        self.total = 0
        self._items: list[tuple[int, int, Problem]] = []
        self._handle: IO[str] | None = None
        self._writer: Any = None
        if errors_csv is not None:
            self._handle = Path(errors_csv).open(  # noqa: SIM115 - closed by close()
                "w", encoding="utf-8-sig", newline=""
            )
            self._writer = csv.writer(self._handle, lineterminator="\r\n")
            self._writer.writerow(["row", "code", "message"])

    def add(self, problem: Problem) -> None:
        self.total += 1
        self._items.append((problem.row or 0, self.total, problem))
        if len(self._items) >= 4 * self.keep + 64:
            self._trim()
        if self._writer is not None:
            self._writer.writerow(
                ["" if problem.row is None else problem.row, problem.code, escape(problem.message)]
            )

    def _trim(self) -> None:
        self._items.sort(key=lambda item: (item[0], item[1]))
        del self._items[self.keep :]

    def first(self) -> list[Problem]:
        """The first ``keep`` problems, by row (a row's own problems before those between rows)."""
        self._trim()
        return [p for _, _, p in self._items]

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def escape(text: str) -> str:
    """A cell of the errors CSV, safe to open in Excel (never read as a formula)."""
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


def _scope_of(text: str) -> str | None:
    return SCOPE_ALIASES.get(_header_key(text)) if text else None


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
    with open_table(path, wanted=_has_roster_columns) as table:
        columns, header_problems, warnings = _map_columns(table)
        warnings = table.warnings + warnings
        if header_problems:
            for problem in header_problems:
                problems.add(problem)
            raise _refuse(name, problems)
        checker = _RowChecker(columns, table, problems, default_scope)
        for number, cells in table.rows:
            checker.check(number, cells)
        sha256 = table.sha256
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


class _Row(NamedTuple):
    row: int
    source: str
    target: str
    replace: bool
    conv_ids: tuple[str, ...]
    note: str
    scope: str


_LIMITS = (
    ("source_email", MAX_CELL),
    ("target_email", MAX_CELL),
    ("replace_existing_members", MAX_CELL),
    ("conv_ids", MAX_CONV_IDS_CELL),
    ("note", MAX_NOTE),
    ("scope", MAX_CELL),
)


class _RowChecker:
    """Checks each row as it is read, keeping only what the checks between rows need."""

    def __init__(self, columns: dict[str, int], table: Any, problems: _Problems, scope: str):
        self.columns = columns
        self.index = [columns.get(f) for f, _ in _LIMITS]
        self.padded = table.padded
        self.width = max(i for i, h in enumerate(table.header) if h.strip()) + 1
        self.problems = problems
        self.scope = scope
        self.input_rows = 0
        self.rows: list[_Row] = []
        self.emails: dict[str, tuple[str, bool]] = {}  # cell → (normalized address, valid)
        self.texts: dict[str, str] = {}  # one str per distinct short cell (notes, flags)

    def email(self, cell: str) -> tuple[str, bool]:
        """The address as email-validator normalizes it (NFC, one domain spelling), once per
        distinct cell: one mailbox written two ways is one agent."""
        found = self.emails.get(cell)
        if found is None:
            if len(self.emails) >= EMAIL_CACHE:  # a file of distinct addresses: keep it bounded
                self.emails.clear()
            text = unescape(cell.strip()).lower()
            found = self.emails[cell] = _normalized_email(text) if text else ("", True)
        return found

    def check(self, number: int, cells: list[str]) -> None:
        if _blank(cells):
            return
        self.input_rows += 1
        add = self.problems.add
        width = self.width
        if len(cells) < width and not self.padded:
            add(Problem(number, "missing_fields",
                        f"{_cells(len(cells))} but the header has {width} columns"))  # fmt: skip
            return
        if len(cells) > width and not _blank(cells[width:]):
            add(Problem(number, "extra_fields",
                        f"{_cells(len(cells))} but the header has {width} columns "
                        "(a cell with a delimiter in it must be quoted)"))  # fmt: skip
            return
        raw = [cells[i] if i is not None and i < len(cells) else "" for i in self.index]
        unusable = False
        for position, (field_name, most) in enumerate(
            _LIMITS if sum(map(len, raw)) > MAX_CELL else ()
        ):
            if len(raw[position]) > most:
                size = len(unescape(raw[position].strip()))
                if size > most:
                    add(Problem(number, "too_long",
                                f"{field_name} is {size:,} characters long (at most {most:,})"))  # fmt: skip
                    raw[position] = ""
                    unusable = unusable or field_name in REQUIRED
        source_cell, target_cell, flag_cell, ids_cell, note_cell, scope_cell = raw
        source, source_ok = self.email(source_cell)
        target, target_ok = self.email(target_cell)
        if not unusable and not source:
            add(Problem(number, "missing_value", "source_email is empty"))
            unusable = True
        if not unusable and not target:
            add(Problem(number, "missing_value", "target_email is empty"))
            unusable = True
        if source and not source_ok:
            add(Problem(number, "bad_email", f"{source!r} is not a valid email address"))
            unusable = True
        if target and not target_ok:
            add(Problem(number, "bad_email", f"{target!r} is not a valid email address"))
            unusable = True
        if not unusable and source == target:
            add(Problem(number, "source_is_target", f"source and target are both {source!r}"))
            unusable = True
        word = unescape(flag_cell.strip()).lower()
        replace = BOOLEANS.get(word)
        if replace is None:
            add(Problem(number, "bad_boolean",
                        f"replace_existing_members is {unescape(flag_cell.strip())!r}: "
                        "use true/false, yes/no or 1/0 (blank = false)"))  # fmt: skip
            replace = False
        scope_text = unescape(scope_cell.strip())
        scope = _scope_of(scope_text) if scope_text else self.scope
        if scope is None:
            add(Problem(number, "bad_scope",
                        f"scope is {scope_text!r}: use conversations, tickets or both "
                        f"(blank = {self.scope})"))  # fmt: skip
            unusable = True
        conv_ids = _split_conv_ids(unescape(ids_cell.strip()))
        if conv_ids:
            if any(len(i) > MAX_CELL for i in conv_ids):
                add(Problem(number, "too_long",
                            f"a conversation id is longer than {MAX_CELL:,} characters"))  # fmt: skip
            scientific = next((i for i in conv_ids if is_scientific(i)), None)
            if scientific is not None:
                add(Problem(number, "scientific_conv_id",
                            f"conv_ids has {scientific!r}; {SCIENTIFIC_ADVICE}"))  # fmt: skip
            if scope is not None and scope != "conversations":
                add(Problem(number, "tickets_with_conv_ids",
                            f"scope is {scope} but the row has conv_ids: conv_ids pick "
                            "conversations, and tickets move from a source as a whole; use scope "
                            "conversations here and a row without conv_ids for the tickets"))  # fmt: skip
                unusable = True
        if unusable:
            return
        note = unescape(note_cell.strip()).replace("\r\n", "\n")
        if note:
            note = self.texts.setdefault(note, note) if len(note) < 200 else note
        self.rows.append(_Row(number, source, target, replace, conv_ids, note, scope))


def _split_conv_ids(cell: str) -> tuple[str, ...]:
    """Conversation ids separated by ; | or spaces, each once, in the order given."""
    if not cell:
        return ()
    return tuple(dict.fromkeys(i for i in CONV_ID_SEPARATORS.split(cell) if i))


_FAST_EMAIL = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
)
_SPECIAL_DOMAINS = ("arpa", "invalid", "local", "localhost", "onion", "test")


def _normalized_email(email: str) -> tuple[str, bool]:
    """``(address, valid)``: a valid address as email-validator normalizes it (NFC local part,
    the domain in one spelling, so ``xn--cng-ty-ixa.vn`` is ``công-ty.vn``), with no DNS."""
    if _fast_valid(email):
        return email, True
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(email, check_deliverability=False).normalized.lower(), True
    except EmailNotValidError:
        return email, False


def _valid_email(email: str) -> bool:
    """Email syntax as email-validator sees it, with no DNS. Plain ASCII addresses that are
    surely valid skip email-validator (it costs ~20 µs each; a big file has many)."""
    if _fast_valid(email):
        return True
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def _fast_valid(email: str) -> bool:
    """True only for addresses email-validator certainly accepts (tested against it)."""
    if len(email) > 254 or not _FAST_EMAIL.fullmatch(email):
        return False
    local, _, domain = email.rpartition("@")
    if len(local) > 64 or "--" in domain:
        return False
    return domain.rsplit(".", 1)[-1] not in _SPECIAL_DOMAINS


# --------------------------------------------------------------------------- between rows


class _Cycle:
    """Marks a leaving agent whose chain of catch-all rows loops back on itself."""

    def __init__(self, agents: tuple[str, ...]):
        self.agents = agents  # the loop, first agent not repeated


_End = tuple[str, tuple[str, ...]] | _Cycle


def _chains(moves: dict[str, _Row]) -> Any:
    """``end_of(agent)``: where the chain of ``moves`` (leaving agent → its row) starting at
    ``agent`` ends, and the leaving agents it passes (or a :class:`_Cycle`)."""
    ends: dict[str, _End] = {}

    def end_of(agent: str) -> _End:
        if agent in ends:
            return ends[agent]
        path: list[str] = []
        on_path: set[str] = set()
        current = agent
        tail: _End
        while True:  # bounded: each turn adds a new agent to on_path, or stops
            if current in ends:
                tail = ends[current]
                break
            if current in on_path:
                tail = _Cycle(tuple(path[path.index(current) :]))
                break
            if current not in moves:
                tail = (current, ())
                break
            on_path.add(current)
            path.append(current)
            current = moves[current].target
        # Memoise every agent on the path: each one's chain is the rest of this one.
        for index, member in enumerate(path):
            if isinstance(tail, _Cycle):
                ends[member] = tail
            else:
                ends[member] = (tail[0], tuple(path[index:]) + tail[1])
        return ends[agent]

    return end_of


def _same_row(r: _Row, before: Sequence[_Row], seen: dict[str, dict[tuple, int]]) -> int | None:
    """The row of ``r``'s source saying exactly what ``r`` says, if any (then ``r`` is kept once).
    A source's few rows are compared one by one; one with many gets an index."""
    key = (r.target, r.conv_ids, r.replace, r.scope)
    if len(before) < 16:
        return next(
            (b.row for b in before if (b.target, b.conv_ids, b.replace, b.scope) == key), None
        )
    index = seen.get(r.source)
    if index is None:
        index = seen[r.source] = {}
        for b in before:
            index.setdefault((b.target, b.conv_ids, b.replace, b.scope), b.row)
    first = index.setdefault(key, r.row)
    return None if first == r.row else first


def _resolve(rows: list[_Row], problems: _Problems, warnings: list[Problem]) -> list[Transfer]:
    """Drop duplicate rows, check conflicts between rows, follow chains, order the plan.

    A row without ``conv_ids`` whose scope has conversations is its source's catch-all (one per
    source); a row whose scope has tickets moves all its source's tickets (one per source).
    Conversations follow the chain of catch-all rows, tickets the chain of ticket rows."""
    add = problems.add
    seen: dict[str, dict[tuple, int]] = {}  # per source with many rows: its rows by content
    catch_all: dict[str, _Row] = {}
    tickets: dict[str, _Row] = {}
    routed: dict[tuple[str, str], int] = {}
    by_source: dict[str, list[_Row]] = {}
    for r in rows:
        first_row = _same_row(r, by_source.get(r.source, ()), seen)
        if first_row is not None:
            warnings.append(
                Problem(r.row, "duplicate_row", f"same transfer as row {first_row}: kept once")
            )
            continue
        if r.scope != "conversations":
            other = tickets.get(r.source)
            if other is not None:
                add(Problem(r.row, "two_ticket_rows",
                            f"the tickets of {r.source} already go to {other.target} in row "
                            f"{other.row}; tickets move from a source as a whole, so only one "
                            "row of a source may have scope tickets or both"))  # fmt: skip
                continue
        if r.conv_ids:
            clash = [(c, routed[(r.source, c)]) for c in r.conv_ids if (r.source, c) in routed]
            for conv_id, other_row in clash:
                add(Problem(r.row, "duplicate_conversation",
                            f"conversation {conv_id!r} of {r.source} is already in row {other_row}"))  # fmt: skip
            if clash:
                continue
            for conv_id in r.conv_ids:
                routed[(r.source, conv_id)] = r.row
        elif r.scope != "tickets":
            first = catch_all.get(r.source)
            if first is not None:
                what = (
                    f"this row sends them to {r.target}"
                    if first.target != r.target
                    else "this row has another replace_existing_members"
                )
                add(Problem(r.row, "two_catch_alls",
                            f"{r.source} already goes to {first.target} in row {first.row} "
                            f"(a row without conv_ids); {what}"))  # fmt: skip
                continue
            catch_all[r.source] = r
        if r.scope != "conversations":
            tickets[r.source] = r
        by_source.setdefault(r.source, []).append(r)
    del seen, routed

    kinds = {"conversations": (catch_all,), "tickets": (tickets,), "both": (catch_all, tickets)}
    end_of = {id(catch_all): _chains(catch_all), id(tickets): _chains(tickets)}
    cycles: dict[tuple[str, ...], set[int]] = {}

    def add_cycle(agents: Sequence[str], rows_in: Iterable[int]) -> None:
        turn = min(range(len(agents)), key=lambda i: agents[i])
        key = tuple(agents[turn:]) + tuple(agents[:turn])
        cycles.setdefault(key, set()).update(rows_in)

    def follow(r: _Row, source: str, moves: dict[str, _Row]) -> tuple[str, tuple[str, ...]] | None:
        """Where row ``r``'s kind of work ends along ``moves``; None (a cycle noted) if it loops."""
        if r.target not in moves:
            return r.target, ()
        end = end_of[id(moves)](r.target)
        if isinstance(end, _Cycle):
            add_cycle(end.agents, (moves[a].row for a in end.agents))
            return None
        final, via = end
        if final == source or source in via:
            # the chain comes back to the agent who is leaving: a cycle through this row
            loop = via[: via.index(source)] if source in via else via
            add_cycle((source, *loop), [r.row, *(moves[a].row for a in loop)])
            return None
        return end

    def run_order(r: _Row) -> int:
        return 0 if r.conv_ids else (2 if r.scope == "tickets" else 1)

    transfers: list[Transfer] = []
    for source, source_rows in by_source.items():
        for r in sorted(source_rows, key=run_order) if len(source_rows) > 1 else source_rows:
            ends = [(moves, follow(r, source, moves)) for moves in kinds[r.scope]]
            if any(end is None for _, end in ends):
                continue
            (moves, (final, via)), *more = ends  # type: ignore[misc]
            if more and more[0][1][0] != final:  # type: ignore[index]
                add(Problem(r.row, "split_chain",
                            f"{r.target} is leaving too: its conversations go on to {final} but "
                            f"its tickets to {more[0][1][0]}; give this row's conversations "  # type: ignore[index]
                            "and tickets one row each"))  # fmt: skip
                continue
            if r.conv_ids and not r.replace and source in catch_all:
                # OMI cannot exclude conversations from a transfer: the source stays a member of
                # these, so its catch-all row will add its own target to them as well.
                warnings.append(
                    Problem(
                        r.row,
                        "shared_split",
                        f"replace_existing_members is false, so {source} stays in these "
                        f"{len(r.conv_ids)} conversation(s) and the catch-all row "
                        f"{catch_all[source].row} will also add {catch_all[source].target} to "
                        "them; set it to true to hand them to this target alone",
                    )
                )
            if via:
                warnings.append(
                    Problem(
                        r.row,
                        "chain",
                        f"{r.target} is leaving too (row {moves[r.target].row}), so this "
                        f"transfer goes to {final} via {', '.join(via)}",
                    )
                )
            transfers.append(
                Transfer(
                    row=r.row,
                    source_email=source,
                    target_email=final,
                    requested_target=r.target,
                    via=via,
                    conv_ids=r.conv_ids,
                    replace_existing_members=r.replace,
                    note=r.note,
                    scope=r.scope,
                )
            )

    for agents, cycle_rows in cycles.items():
        first = min(cycle_rows)
        # Name the loop starting from the agent whose row comes first in the file.
        starts = [a for a in agents if a in by_source and any(x.row == first for x in by_source[a])]
        start = agents.index(starts[0]) if starts else 0
        loop = agents[start:] + agents[:start] + (agents[start],)
        rows_text = ", ".join(str(n) for n in sorted(cycle_rows))
        add(
            Problem(
                first,
                "cycle",
                f"{' → '.join(loop)} (rows {rows_text}): someone in the loop must go to an agent who stays",
            )
        )
    return transfers

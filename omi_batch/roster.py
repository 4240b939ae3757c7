"""Read the offboarding CSV (or .xlsx), validate every row and resolve it into a plan.

Pure: no network, no ledger. A file with any problem raises :class:`InputError` listing every
problem at once, each with the row number as Excel shows it (header = row 1; a quoted newline
inside a cell does not shift the rows after it). Warnings (duplicate rows, chains) go into the
plan and the run goes on.

The file's structure (rows, cells per row) is read with the ``csv`` module, so row numbers and
extra or missing cells are exact; the cells then go into a pandas frame of text for the checks
that run over every row. ``.xlsx`` is read with openpyxl.

Problem codes. The file: ``too_big``, ``empty_file``, ``binary_file``, ``bad_encoding``,
``bad_xlsx``, ``bad_quotes``, ``missing_column``, ``duplicate_column``, ``no_rows``. A row:
``extra_fields``, ``missing_fields``, ``too_long``, ``missing_value``, ``bad_email``,
``source_is_target``, ``bad_boolean``, ``scientific_conv_id``. Between rows: ``duplicate_conversation``,
``two_catch_alls``, ``cycle``. Warning codes: ``duplicate_row``, ``chain``, ``shared_split``, ``unknown_column``,
``extra_sheets``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omi_batch.errors import InputError
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

FIELDS = ("source_email", "target_email", "replace_existing_members", "conv_ids", "note")
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

    @property
    def catch_all(self) -> bool:
        return not self.conv_ids

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


@dataclass
class _Sheet:
    """The raw cells of a file: the header and every data row, with Excel row numbers."""

    header_row: int
    header: list[str]
    rows: list[tuple[int, list[str]]] = field(default_factory=list)
    padded: bool = False  # a workbook row has every cell, even the empty ones
    warnings: list[Problem] = field(default_factory=list)


def _refuse(name: str, problems: Sequence[Problem]) -> InputError:
    count = len(problems)
    noun = "problem" if count == 1 else "problems"
    return InputError(f"{name}: {count} {noun} found; nothing was sent", list(problems))


def _has_roster_columns(header: list[str]) -> bool:
    names = {ALIASES.get(_header_key(h)) for h in header}
    return all(f in names for f in REQUIRED)


def _read_sheet(path: Path) -> tuple[_Sheet, str]:
    """Read a CSV or .xlsx file into raw cells (and its SHA-256); refuse unreadable files."""
    try:
        with open_table(path, wanted=_has_roster_columns) as table:
            sheet = _Sheet(table.header_row, table.header, padded=table.padded,
                           warnings=list(table.warnings))  # fmt: skip
            same: dict[str, str] = {}  # one str object per distinct cell: agents repeat a lot
            for number, cells in table.rows:
                sheet.rows.append((number, [same.setdefault(c, c) for c in cells]))
            return sheet, table.sha256
    except TableError as error:
        raise _refuse(path.name, [error.problem]) from None


def _cells(count: int) -> str:
    return "1 cell" if count == 1 else f"{count} cells"


def _blank(cells: Iterable[str]) -> bool:
    return all(not c.strip() for c in cells)


# --------------------------------------------------------------------------- the header


def _header_key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().lstrip("\ufeff").lower())


def _map_columns(sheet: _Sheet) -> tuple[dict[str, int], list[Problem], list[Problem]]:
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


def read_plan(path: str | os.PathLike[str], *, limit: int | None = None) -> Plan:
    """Read, validate and resolve the file at ``path`` into a plan; ``limit`` keeps the first
    N transfers of the plan (the whole file is still validated).

    Raises ``InputError`` listing every problem when the file cannot be used as it is.
    """
    path = Path(path)
    name = path.name
    sheet, sha256 = _read_sheet(path)
    columns, problems, warnings = _map_columns(sheet)
    warnings = sheet.warnings + warnings
    if problems:
        raise _refuse(name, problems)

    # Structure: every row has as many cells as the header has columns (empty cells past the
    # last named column, as Excel writes them, are fine). Broken rows get no further checks.
    width = max(i for i, h in enumerate(sheet.header) if h.strip()) + 1
    good: list[tuple[int, list[str]]] = []
    input_rows = 0
    for number, cells in sheet.rows:
        if _blank(cells):
            continue
        input_rows += 1
        if len(cells) < width and not sheet.padded:
            problems.append(
                Problem(
                    number,
                    "missing_fields",
                    f"{_cells(len(cells))} but the header has {width} columns",
                )
            )
        elif len(cells) > width and not _blank(cells[width:]):
            problems.append(
                Problem(
                    number,
                    "extra_fields",
                    f"{_cells(len(cells))} but the header has {width} columns "
                    "(a cell with a delimiter in it must be quoted)",
                )
            )
        else:
            good.append((number, cells))
    if input_rows == 0:
        raise _refuse(name, [Problem(None, "no_rows", "the file has a header but no rows")])

    rows = _check_rows(good, columns, problems)
    transfers = _resolve(rows, problems, warnings)
    if problems:
        problems.sort(key=lambda p: p.row if p.row is not None else 0)
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


@dataclass(frozen=True, slots=True)
class _Row:
    row: int
    source: str
    target: str
    replace: bool
    conv_ids: tuple[str, ...]
    note: str


def _check_rows(
    good: list[tuple[int, list[str]]], columns: dict[str, int], problems: list[Problem]
) -> list[_Row]:
    """Check every cell (over the whole column at once); return the rows usable between rows."""
    import pandas as pd

    numbers = [number for number, _ in good]

    def column(index: int, normalise: Any) -> list[str]:
        # Normalised once per distinct cell; the same agent on many rows shares one string.
        done: dict[str, str] = {}
        values = []
        for _, cells in good:
            raw = cells[index] if index < len(cells) else ""
            value = done.get(raw)
            if value is None:
                value = done[raw] = normalise(raw)
            values.append(value)
        return values

    def trim_lower(cell: str) -> str:
        return unescape(cell.strip()).lower()

    def trim_lines(cell: str) -> str:  # a note written on Windows keeps plain newlines
        return unescape(cell.strip()).replace("\r\n", "\n")

    def trim(cell: str) -> str:
        return unescape(cell.strip())

    normalise = {"source_email": trim_lower, "target_email": trim_lower, "note": trim_lines}
    data = {name: column(index, normalise.get(name, trim)) for name, index in columns.items()}
    for name in FIELDS:
        data.setdefault(name, [""] * len(good))
    frame = pd.DataFrame(data, index=numbers, dtype=str)
    del data
    found: list[tuple[int, int, Problem]] = []  # (row, order, problem): sorted afterwards

    def report(mask: pd.Series, code: str, message: Any, order: int) -> None:
        for number in mask.index[mask.to_numpy()]:
            found.append((number, order, Problem(int(number), code, message(number))))

    limits = {
        "source_email": MAX_CELL,
        "target_email": MAX_CELL,
        "replace_existing_members": MAX_CELL,
        "conv_ids": MAX_CONV_IDS_CELL,
        "note": MAX_NOTE,
    }
    unusable = pd.Series(False, index=frame.index)
    for order, (name, most) in enumerate(limits.items()):
        lengths = frame[name].str.len()
        long = lengths > most
        report(
            long,
            "too_long",
            lambda n, c=name, s=lengths, m=most: f"{c} is {s[n]:,} characters long (at most {m:,})",
            order,
        )
        frame.loc[long, name] = ""
        if name in REQUIRED:
            unusable |= long
    for order, name in enumerate(REQUIRED, start=10):
        empty = (frame[name] == "") & ~unusable
        report(empty, "missing_value", lambda n, c=name: f"{c} is empty", order)
        unusable |= empty

    # email-validator once per distinct address: a big file names the same agents many times.
    emails = pd.unique(pd.concat([frame["source_email"], frame["target_email"]]))
    invalid = [email for email in emails if email and not _valid_email(email)]
    for order, name in enumerate(REQUIRED, start=20):
        bad = frame[name].isin(invalid)
        report(
            bad,
            "bad_email",
            lambda n, c=name: f"{frame.at[n, c]!r} is not a valid email address",
            order,
        )
    same = (frame["source_email"] == frame["target_email"]) & ~unusable
    report(
        same,
        "source_is_target",
        lambda n: f"source and target are both {frame.at[n, 'source_email']!r}",
        30,
    )
    unusable |= same

    words = frame["replace_existing_members"].str.lower()
    bad_flag = ~words.isin(list(BOOLEANS))
    report(
        bad_flag,
        "bad_boolean",
        lambda n: (
            f"replace_existing_members is {frame.at[n, 'replace_existing_members']!r}: "
            "use true/false, yes/no or 1/0 (blank = false)"
        ),
        40,
    )
    flags = words.isin([word for word, value in BOOLEANS.items() if value])

    conv_ids = pd.Series(
        [_split_conv_ids(cell) for cell in frame["conv_ids"].tolist()], index=frame.index
    )
    long_id = pd.Series(
        [any(len(i) > MAX_CELL for i in ids) for ids in conv_ids], index=frame.index
    )
    report(
        long_id,
        "too_long",
        lambda n: f"a conversation id is longer than {MAX_CELL:,} characters",
        50,
    )

    scientific = pd.Series(
        [next((i for i in ids if is_scientific(i)), None) for ids in conv_ids], index=frame.index
    )
    report(
        scientific.notna(),
        "scientific_conv_id",
        lambda n: f"conv_ids has {scientific[n]!r}; {SCIENTIFIC_ADVICE}",
        51,
    )

    found.sort(key=lambda item: (item[0], item[1]))
    problems.extend(p for _, _, p in found)
    keep = ~unusable.to_numpy()
    return [
        _Row(n, s, t, f, c, note)
        for n, s, t, f, c, note, k in zip(
            numbers,
            frame["source_email"].tolist(),
            frame["target_email"].tolist(),
            flags.tolist(),
            conv_ids.tolist(),
            frame["note"].tolist(),
            keep.tolist(),
            strict=True,
        )
        if k
    ]


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


def _resolve(rows: list[_Row], problems: list[Problem], warnings: list[Problem]) -> list[Transfer]:
    """Drop duplicate rows, check conflicts between rows, follow chains, order the plan."""
    seen: dict[tuple, int] = {}
    catch_all: dict[str, _Row] = {}
    routed: dict[tuple[str, str], int] = {}
    by_source: dict[str, list[_Row]] = {}
    for r in rows:
        key = (r.source, r.target, r.conv_ids, r.replace)
        if key in seen:
            warnings.append(
                Problem(r.row, "duplicate_row", f"same transfer as row {seen[key]}: kept once")
            )
            continue
        seen[key] = r.row
        if not r.conv_ids:
            first = catch_all.get(r.source)
            if first is not None:
                what = (
                    f"this row sends them to {r.target}"
                    if first.target != r.target
                    else "this row has another replace_existing_members"
                )
                problems.append(
                    Problem(
                        r.row,
                        "two_catch_alls",
                        f"{r.source} already goes to {first.target} in row {first.row} "
                        f"(a row without conv_ids); {what}",
                    )
                )
                continue
            catch_all[r.source] = r
        else:
            clash = [(c, routed[(r.source, c)]) for c in r.conv_ids if (r.source, c) in routed]
            for conv_id, other in clash:
                problems.append(
                    Problem(
                        r.row,
                        "duplicate_conversation",
                        f"conversation {conv_id!r} of {r.source} is already in row {other}",
                    )
                )
            if clash:
                continue
            for conv_id in r.conv_ids:
                routed[(r.source, conv_id)] = r.row
        by_source.setdefault(r.source, []).append(r)

    ends: dict[str, tuple[str, tuple[str, ...]] | _Cycle] = {}

    def end_of(agent: str) -> tuple[str, tuple[str, ...]] | _Cycle:
        """Where the chain starting at leaving ``agent`` ends, and the agents it passes."""
        if agent in ends:
            return ends[agent]
        path: list[str] = []
        on_path: set[str] = set()
        current = agent
        tail: tuple[str, tuple[str, ...]] | _Cycle
        while True:  # bounded: each turn adds a new agent to on_path, or stops
            if current in ends:
                tail = ends[current]
                break
            if current in on_path:
                tail = _Cycle(tuple(path[path.index(current) :]))
                break
            if current not in catch_all:
                tail = (current, ())
                break
            on_path.add(current)
            path.append(current)
            current = catch_all[current].target
        # Memoise every agent on the path: each one's chain is the rest of this one.
        for index, member in enumerate(path):
            if isinstance(tail, _Cycle):
                ends[member] = tail
            else:
                ends[member] = (tail[0], tuple(path[index:]) + tail[1])
        return ends[agent]

    cycles: dict[tuple[str, ...], set[int]] = {}

    def add_cycle(agents: Sequence[str], rows_in: Iterable[int]) -> None:
        turn = min(range(len(agents)), key=lambda i: agents[i])
        key = tuple(agents[turn:]) + tuple(agents[:turn])
        cycles.setdefault(key, set()).update(rows_in)

    transfers: list[Transfer] = []
    for source, source_rows in by_source.items():
        ordered = [r for r in source_rows if r.conv_ids] + [
            r for r in source_rows if not r.conv_ids
        ]
        for r in ordered:
            if r.target not in catch_all:
                final, via = r.target, ()
            else:
                end = end_of(r.target)
                if isinstance(end, _Cycle):
                    add_cycle(end.agents, (catch_all[a].row for a in end.agents))
                    continue
                final, via = end
                if final == source or source in via:
                    # the chain comes back to the agent who is leaving: a cycle through this row
                    loop = via[: via.index(source)] if source in via else via
                    add_cycle((source, *loop), [r.row, *(catch_all[a].row for a in loop)])
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
                        f"{r.target} is leaving too (row {catch_all[r.target].row}), so this "
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
                )
            )

    for agents, cycle_rows in cycles.items():
        first = min(cycle_rows)
        # Name the loop starting from the agent whose row comes first in the file.
        starts = [a for a in agents if a in by_source and any(x.row == first for x in by_source[a])]
        start = agents.index(starts[0]) if starts else 0
        loop = agents[start:] + agents[:start] + (agents[start],)
        rows_text = ", ".join(str(n) for n in sorted(cycle_rows))
        problems.append(
            Problem(
                first,
                "cycle",
                f"{' → '.join(loop)} (rows {rows_text}): someone in the loop must go to an agent who stays",
            )
        )
    return transfers

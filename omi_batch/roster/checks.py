"""Checking the file as it is read: the header's columns, each row's cells (emails, booleans,
conv_ids, scope, sizes), and the problems found (counted, the first kept, all written on
request)."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from omi_batch.roster.plan import (
    ALIASES,
    BOOLEANS,
    CONV_ID_SEPARATORS,
    EMAIL_CACHE,
    MAX_CELL,
    MAX_CONV_IDS_CELL,
    MAX_NOTE,
    REQUIRED,
    SCOPE_ALIASES,
    _Row,
)
from omi_batch.tables import (
    SCIENTIFIC_ADVICE,
    Problem,
    is_scientific,
    unescape,
)

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
    """Conversation ids separated by , ; | or spaces, each once, in the order given; empty
    pieces (``a;;b``, ``a,,b``, a trailing comma) are dropped."""
    if not cell:
        return ()
    ids = (
        conv_id
        for piece in CONV_ID_SEPARATORS.split(cell)
        for conv_id in ((piece,) if "," in piece and is_scientific(piece) else piece.split(","))
    )
    return tuple(dict.fromkeys(i for i in ids if i))


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


def normalized_email(text: str) -> str:
    """The form two addresses are compared in: stripped, lower case and, for a valid one, as
    email-validator normalizes it (NFC, one spelling of an internationalized domain), with no
    DNS; an invalid one is only stripped and lowered. The plan's addresses are in this form."""
    return _normalized_email(text.strip().lower())[0]


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

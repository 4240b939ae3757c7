"""Read a table file (CSV as Excel writes it, or .xlsx) as rows of text cells.

The one reader of table files: the offboarding file (``roster.read_plan``) and the preview report a
person edited (``approve``) both come through here, so both accept the same files and refuse the
same ones with the same advice ("save it as CSV UTF-8"), never a codec error.

What is read: CSV in UTF-8 with or without BOM; the plain "CSV (Comma delimited)" of a Vietnamese
Windows (Windows-1258, whose tone marks are separate combining characters: every cell is put in
NFC); "Unicode Text" (UTF-16 with BOM, tab-separated); `,` `;` or tab delimiters, detected (or
named by Excel's ``sep=`` first line); and .xlsx (see :func:`choose_sheet`). Strict UTF-8 is tried
before Windows-1258, so UTF-8 text is never misread. Rows are read one at a time: the file is
never held in memory whole.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from omi_batch.errors import InputError

MAX_FILE_BYTES = 100 * 1024 * 1024
DELIMITERS = (",", ";", "\t")
SAVE_AS = "save it as CSV UTF-8 (in Excel: File > Save As > CSV UTF-8)"
CHUNK = 1 << 20

_ZIP_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # Excel 97-2003 .xls and other old Office files
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

# Excel shows a long number it was given as text like 6.92E+23 and keeps only 15 digits of it.
SCIENTIFIC = re.compile(r"[+-]?\d+(?:[.,]\d+)?E[+-]\d+", re.IGNORECASE)
SCIENTIFIC_ADVICE = (
    "Excel turned a long conversation id into a number and lost its digits: format the "
    "conv_ids column as Text before pasting the ids (or type a ' before each), then paste them "
    "again"
)

# What people type in an `approved` cell, compared after trimming, NFC and casefold.
APPROVED_WORDS = frozenset(
    {"yes", "y", "true", "1", "x", "có", "co", "đồng ý", "dong y", "ok", "✓", "✔"}
)
NOT_APPROVED_WORDS = frozenset({"", "no", "n", "false", "0", "không", "khong"})
APPROVED_HELP = "use yes / có / đồng ý / ok / x / ✓ to approve, no / không or empty to leave it"

_FORMULA_START = "=+-@\t\r"


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem (or warning) in the input: where, a short code, and what to do about it."""

    row: int | None
    code: str
    message: str

    def __str__(self) -> str:
        where = f"row {self.row}: " if self.row is not None else ""
        return f"{where}{self.code}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "code": self.code, "message": self.message}


class TableError(InputError):
    """A file that cannot be read as a table at all; ``problem`` says why and what to do."""

    def __init__(self, name: str, problem: Problem):
        super().__init__(f"{name}: {problem.message}", [problem])
        self.name = name
        self.problem = problem


@dataclass
class Table:
    """An open table file: its header and an iterator over its data rows (Excel row numbers)."""

    name: str
    sha256: str
    encoding: str  # utf-8, utf-16, cp1258 or xlsx
    delimiter: str | None
    sheet: str | None
    header_row: int
    header: list[str]
    rows: Iterator[tuple[int, list[str]]]
    padded: bool = False  # a workbook row has every cell, even the empty ones
    warnings: list[Problem] = field(default_factory=list)

    def columns(self) -> dict[str, int]:
        """Header names, trimmed and lower-cased, to their column index (first one wins)."""
        found: dict[str, int] = {}
        for index, name in enumerate(self.header):
            found.setdefault(name.strip().lower(), index)
        return found


def unescape(cell: str) -> str:
    """Undo our reports' formula escape (``'=x`` → ``=x``), so a report reads back as it was
    written."""
    if cell[:1] == "'" and len(cell) > 1 and cell[1] in _FORMULA_START:
        return cell[1:]
    return cell


def nfc(text: str) -> str:
    """``text`` in NFC (Windows-1258 and macOS write tone marks as separate characters)."""
    if text.isascii() or unicodedata.is_normalized("NFC", text):
        return text
    return unicodedata.normalize("NFC", text)


def approved_word(text: str) -> bool | None:
    """True/False for a word of :data:`APPROVED_WORDS` / :data:`NOT_APPROVED_WORDS`, else None."""
    word = " ".join(nfc(text).replace("\ufe0f", "").casefold().split())
    if word in APPROVED_WORDS:
        return True
    if word in NOT_APPROVED_WORDS:
        return False
    return None


def is_scientific(text: str) -> bool:
    """True for a number Excel wrote in scientific notation (``6.92E+23``)."""
    return SCIENTIFIC.fullmatch(text.strip()) is not None


# --------------------------------------------------------------------------- opening


@contextmanager
def open_table(
    path: str | Path,
    *,
    sheet_name: str | None = None,
    sheet_hints: Sequence[str] = (),
    wanted: Callable[[list[str]], bool] | None = None,
) -> Iterator[Table]:
    """Open ``path`` as a :class:`Table` (rows read lazily while the context is open).

    For an .xlsx, the sheet is chosen by :func:`choose_sheet` with ``sheet_name``,
    ``sheet_hints`` and ``wanted`` (a test on a sheet's header). Raises :class:`TableError` for
    a file that cannot be read, with what to do about it.
    """
    path = Path(path)
    name = path.name
    sha256, kind = _sniff(path)
    if kind == "xlsx":
        with _open_xlsx(path, sha256, sheet_name, sheet_hints, wanted) as table:
            yield table
        return
    try:
        handle = path.open(encoding=kind, newline="", errors="strict")
    except OSError as error:
        raise TableError(
            name, Problem(None, "unreadable", f"cannot read the file: {error.strerror}")
        ) from None
    with handle:
        yield _csv_table(name, sha256, kind, handle)


def _fail(name: str, code: str, message: str, row: int | None = None) -> TableError:
    return TableError(name, Problem(row, code, message))


def _sniff(path: Path) -> tuple[str, str]:
    """The file's SHA-256 and how to read it: ``xlsx``, or the text encoding (read in chunks)."""
    name = path.name
    digest = hashlib.sha256()
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise _fail(name, "too_big", f"the file is {size:,} bytes; at most {MAX_FILE_BYTES:,}")
        with path.open("rb") as handle:
            first = handle.read(CHUNK)
            kind = _kind_of(name, first)
            decoder = codecs.getincrementaldecoder(kind)("strict") if kind != "xlsx" else None
            chunk, offset, line = first, 0, 1
            while chunk:
                digest.update(chunk)
                if decoder is not None:
                    if kind != "utf-16" and b"\x00" in chunk:
                        raise _fail(
                            name,
                            "binary_file",
                            f"the file is not CSV text (it contains NUL bytes): {SAVE_AS}",
                        )
                    try:
                        decoder.decode(chunk)
                    except UnicodeDecodeError as error:
                        if kind == "utf-8-sig":  # not UTF-8: Windows-1258 is checked from the start
                            decoder, kind = None, "cp1258"
                        else:
                            where = line + chunk.count(b"\n", 0, error.start)
                            raise _fail(
                                name,
                                "bad_encoding",
                                _encoding_message(
                                    kind, chunk[error.start], where, offset + error.start
                                ),
                            ) from None
                    line += chunk.count(b"\n")
                offset += len(chunk)
                chunk = handle.read(CHUNK)
            if decoder is not None:
                try:
                    decoder.decode(b"", final=True)
                except UnicodeDecodeError:
                    raise _fail(
                        name,
                        "bad_encoding",
                        f"the file ends in the middle of a character: {SAVE_AS}",
                    ) from None
        if kind == "cp1258":
            _check_cp1258(path)
    except OSError as error:
        raise _fail(name, "unreadable", f"cannot read the file: {error.strerror}") from None
    return digest.hexdigest(), kind


def _kind_of(name: str, first: bytes) -> str:
    if first.startswith(_ZIP_MAGIC):
        return "xlsx"
    if first.startswith(_OLE_MAGIC):
        raise _fail(
            name,
            "binary_file",
            "this is an old Excel (.xls) workbook, not CSV: save it as .xlsx or CSV UTF-8",
        )
    if first.startswith(_UTF16_BOMS):
        return "utf-16"
    return "utf-8-sig"


def _encoding_message(kind: str, byte: int, line: int, offset: int) -> str:
    what = {"utf-16": "UTF-16 (Unicode Text)", "cp1258": "Windows-1258"}.get(kind, kind)
    return f"the file is not readable as {what} text (byte 0x{byte:02x} at offset {offset:,}, line {line}): {SAVE_AS}"


def _check_cp1258(path: Path) -> None:
    """Every byte of a file that is not UTF-8 must be Windows-1258 (Vietnamese Windows' ANSI)."""
    decoder = codecs.getincrementaldecoder("cp1258")("strict")
    offset, line = 0, 1
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                where = line + chunk.count(b"\n", 0, error.start)
                raise _fail(
                    path.name,
                    "bad_encoding",
                    f"the file is neither UTF-8 nor Windows-1258 text (byte "
                    f"0x{chunk[error.start]:02x} on line {where}): {SAVE_AS}",
                ) from None
            line += chunk.count(b"\n")
            offset += len(chunk)


# --------------------------------------------------------------------------- CSV


def _csv_table(name: str, sha256: str, encoding: str, handle: IO[str]) -> Table:
    # Excel's "sep=;" first line names the delimiter and is not shown as a row.
    first = handle.readline()
    match = re.fullmatch(r"\ufeff?sep=(.)\r?\n?", first)
    if match:
        delimiter = match.group(1)
    else:
        handle.seek(0)
        delimiter = _detect_delimiter(handle)
        handle.seek(0)
    reader = csv.reader(handle, delimiter=delimiter, strict=True)
    rows = _csv_rows(name, reader)
    header_row, header = next(rows, (0, []))
    if not header:
        raise _fail(
            name,
            "empty_file",
            "the file is empty: expected a header row with source_email and target_email",
        )
    header = [cell.lstrip("\ufeff") if i == 0 else cell for i, cell in enumerate(header)]
    warnings = []
    if encoding == "cp1258":
        warnings.append(
            Problem(
                None,
                "legacy_encoding",
                f"read as Windows-1258 (Vietnamese Windows) text; if a name looks wrong, {SAVE_AS}",
            )
        )
    shown = "utf-8" if encoding == "utf-8-sig" else encoding
    return Table(name, sha256, shown, delimiter, None, header_row, header, rows, warnings=warnings)


def _csv_rows(name: str, reader: Any) -> Iterator[tuple[int, list[str]]]:
    """(row number, cells) for the header (first non-blank row) and every row after it."""
    number = 0
    seen_header = False
    try:
        for number, cells in enumerate(reader, start=1):
            if not seen_header:
                if _blank(cells):
                    continue
                seen_header = True
            yield number, cells if "".join(cells).isascii() else [nfc(c) for c in cells]
    except csv.Error as error:
        row = number + 1
        if "field larger than field limit" in str(error):
            raise _fail(
                name,
                "too_long",
                f"a cell is longer than {csv.field_size_limit():,} characters",
                row,
            ) from None
        raise _fail(
            name,
            "bad_quotes",
            f"a quoted cell is not closed or has text after its closing quote ({error}): {SAVE_AS}",
            row,
        ) from None
    except UnicodeDecodeError:  # checked before reading: only if the file changed meanwhile
        raise _fail(
            name, "bad_encoding", f"the file changed while it was read: {SAVE_AS}"
        ) from None


def _detect_delimiter(lines: Iterable[str]) -> str:
    """The delimiter used most on the header line: , ; or tab (a one-column file gets ,)."""
    header = next((line for line in lines if line.strip()), "")
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _blank(cells: Iterable[str]) -> bool:
    return all(not c.strip() for c in cells)


# --------------------------------------------------------------------------- .xlsx


def cell_text(value: Any) -> str:
    """An Excel cell as the text a person typed: TRUE → "true", 12345.0 → "12345", empty → "".

    A number too long for Excel's 15 digits comes back as Excel shows it (``6.92E+23``), so the
    lost digits are seen, not replaced by made-up ones."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if abs(value) >= 1e15:
            return format(value, ".15G")
        if value.is_integer():
            return str(int(value))
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return nfc(str(value))


def choose_sheet(
    titles: Sequence[str],
    headers: Callable[[int], list[str]],
    *,
    sheet_name: str | None = None,
    sheet_hints: Sequence[str] = (),
    wanted: Callable[[list[str]], bool] | None = None,
) -> int:
    """Which sheet to read: the one named ``sheet_name`` (case and spaces aside); else the first
    whose name contains one of ``sheet_hints``; else the first whose header row passes
    ``wanted``; else the first sheet."""
    folded = [t.strip().casefold() for t in titles]
    if sheet_name is not None and sheet_name.casefold() in folded:
        return folded.index(sheet_name.casefold())
    for index, title in enumerate(folded):
        if any(hint in title for hint in sheet_hints):
            return index
    if wanted is not None:
        for index in range(len(titles)):
            if wanted(headers(index)):
                return index
    return 0


@contextmanager
def _open_xlsx(
    path: Path,
    sha256: str,
    sheet_name: str | None,
    sheet_hints: Sequence[str],
    wanted: Callable[[list[str]], bool] | None,
) -> Iterator[Table]:
    import openpyxl

    name = path.name
    try:
        handle = path.open("rb")  # a file, not a name: openpyxl would refuse a .csv name
    except OSError as error:
        raise _fail(name, "unreadable", f"cannot read the file: {error.strerror}") from None
    try:
        book = openpyxl.load_workbook(handle, read_only=True, data_only=True)
    except Exception as error:  # a zip that is no workbook: openpyxl raises many kinds
        handle.close()
        raise _fail(
            name,
            "bad_xlsx",
            f"cannot read the file as an Excel workbook ({type(error).__name__}): {SAVE_AS}",
        ) from None
    try:
        sheets = book.worksheets

        def header_of(index: int) -> list[str]:
            for values in sheets[index].iter_rows(min_row=1, max_row=1, values_only=True):
                return [cell_text(v) for v in values]
            return []

        if not sheets:
            raise _fail(name, "empty_file", "the workbook has no sheet")
        index = choose_sheet(
            [s.title for s in sheets],
            header_of,
            sheet_name=sheet_name,
            sheet_hints=sheet_hints,
            wanted=wanted,
        )
        worksheet = sheets[index]
        rows = _xlsx_rows(worksheet)
        header_row, header = next(rows, (0, []))
        if not header:
            raise _fail(name, "empty_file", f"the sheet {worksheet.title!r} is empty")
        warnings = []
        if len(sheets) > 1:
            which = "the first sheet, " if index == 0 else "the sheet "
            warnings.append(
                Problem(
                    None,
                    "extra_sheets",
                    f"only {which}{worksheet.title!r}, was read"
                    if index == 0
                    else f"only {which}{worksheet.title!r} was read",
                )
            )
        yield Table(
            name,
            sha256,
            "xlsx",
            None,
            worksheet.title,
            header_row,
            header,
            rows,
            padded=True,
            warnings=warnings,
        )
    finally:
        book.close()
        handle.close()


def _xlsx_rows(worksheet: Any) -> Iterator[tuple[int, list[str]]]:
    seen_header = False
    for number, values in enumerate(worksheet.iter_rows(min_row=1, values_only=True), start=1):
        cells = [cell_text(v) for v in values]
        while cells and not cells[-1].strip():
            cells.pop()
        if not seen_header:
            if _blank(cells):
                continue
            seen_header = True
        yield number, cells


# --------------------------------------------------------------------------- preview reports

REPORT_COLUMNS = ("row", "source_email", "target_email", "approved")


def read_approvals(path: str | Path, required: Sequence[str] = REPORT_COLUMNS) -> list[dict]:
    """Read a preview report a person edited, as Excel saved it (any format above; in an .xlsx
    the sheet named ``Review``, else one named like a preview/review, else the first with ``row``
    and ``approved`` columns). One dict per report line: ``line``, ``row`` (int), ``approved``
    (bool), ``cells`` (every column, trimmed, formula escape undone), and ``source_email``,
    ``target_email`` (lower-cased) and ``conv_ids`` (list). Raises InputError naming every line
    whose ``row``, ``approved`` or ``conv_ids`` cannot be used."""
    path = Path(path)

    def has_columns(header: list[str]) -> bool:
        names = {h.strip().lower() for h in header}
        return "row" in names and "approved" in names

    try:
        with open_table(
            path, sheet_name="review", sheet_hints=("preview", "review"), wanted=has_columns
        ) as table:
            columns = table.columns()
            missing = [c for c in required if c not in columns]
            if missing:
                raise InputError(
                    f"{path.name} is not a preview report: no column {', '.join(missing)}"
                    + (f" on the sheet {table.sheet!r}" if table.sheet else "")
                )
            lines = list(table.rows)
    except TableError as error:
        raise InputError(
            f"cannot read the report {path.name}; nothing was approved", [error.problem]
        ) from None
    approvals: list[dict] = []
    problems: list[str] = []
    for line, raw in lines:
        if _blank(raw):
            continue
        cells = {
            column: unescape(raw[index].strip()) if index < len(raw) else ""
            for column, index in columns.items()
        }
        approved = approved_word(cells["approved"])
        if approved is None:
            problems.append(
                f"report line {line}: approved is {cells['approved']!r}; {APPROVED_HELP}"
            )
            continue
        try:
            row = int(float(cells["row"].lstrip("'")))
        except ValueError:
            problems.append(f"report line {line}: row {cells['row']!r} is not a row number")
            continue
        conv_ids = [c for c in re.split(r"[;|\s]+", cells.get("conv_ids", "")) if c]
        scientific = [c for c in conv_ids if is_scientific(c)]
        if scientific:
            problems.append(
                f"report line {line} (row {row}): conv_ids has {scientific[0]!r}; "
                f"{SCIENTIFIC_ADVICE}"
            )
            continue
        approvals.append(
            {
                "line": line,
                "row": row,
                "approved": approved,
                "cells": cells,
                "source_email": cells.get("source_email", "").lower(),
                "target_email": cells.get("target_email", "").lower(),
                "conv_ids": conv_ids,
            }
        )
    if problems:
        raise InputError(
            f"{path.name} has {len(problems)} problem(s); nothing was approved", problems
        )
    return approvals

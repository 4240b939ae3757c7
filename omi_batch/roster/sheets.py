"""What Excel hides from the person who prepared an .xlsx: hidden sheets, never read when a
visible sheet has the columns, and hidden rows (hidden or filtered out), read like the others
but named in a warning.

The workbook is looked into once, cheaply, before :mod:`omi_batch.tables` reads it: its sheet
list (names and states) always; each sheet's header only when a sheet is hidden; and the hidden
rows of the sheet read by one stream over that sheet's XML, only when it says ``hidden``. The
read-only reader that reads the rows keeps no row's attributes, and openpyxl's full reader would
read the file a second time as slowly; the stream adds about a tenth to a 10,000-row file with
hidden rows, and about a hundredth to one without.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from xml.parsers import expat

from omi_batch.tables import Problem, cell_text

_ZIP_MAGIC = b"PK\x03\x04"
_CHUNK = 1 << 20
_SHOWN_RANGES = 10  # a filter can hide thousands of rows: the warning names the first ones


@dataclass(frozen=True, slots=True)
class _Sheet:
    title: str
    hidden: bool  # hidden or very hidden: Excel shows no tab for it
    part: str  # the sheet's XML in the workbook's zip


class Workbook:
    """The sheets of an .xlsx as Excel shows them (see :func:`look_into`)."""

    def __init__(self, path: Path, sheets: list[_Sheet]):
        self.path = path
        self.sheets = sheets

    def choose(self, wanted: Callable[[list[str]], bool]) -> str | None:
        """The title of the sheet to read: the first visible one whose header passes
        ``wanted``; else the first hidden one that does (its warning says so); else the first
        visible one. None when no sheet is hidden: the reader's own choice is the same."""
        if not any(s.hidden for s in self.sheets):
            return None
        import openpyxl

        try:
            with self.path.open("rb") as handle:
                book = openpyxl.load_workbook(handle, read_only=True, data_only=True)
                try:
                    headers = {ws.title: _header(ws) for ws in book.worksheets}
                finally:
                    book.close()
        except Exception:  # openpyxl raises many kinds: the reader refuses the file, saying why
            return None
        passing = [s for s in self.sheets if wanted(headers.get(s.title, []))]
        chosen = next((s for s in passing if not s.hidden), None)
        if chosen is None:
            chosen = (passing or [s for s in self.sheets if not s.hidden] or self.sheets)[0]
        return chosen.title.strip()

    def sheet_warnings(self, warnings: Iterable[Problem], title: str | None) -> list[Problem]:
        """``warnings`` with the reader's ``extra_sheets`` one saying which hidden sheets were
        left out, and whether the sheet read (``title``) is itself hidden."""
        read = next((s for s in self.sheets if s.title == title), None)
        left_out = [s.title for s in self.sheets if s.hidden and s is not read]
        found = []
        for warning in warnings:
            if warning.code == "extra_sheets" and (left_out or (read and read.hidden)):
                message = warning.message
                if read is not None and read.hidden:
                    message += ", and it is hidden in Excel: no visible sheet has the columns"
                if left_out:
                    sheets = "sheet" if len(left_out) == 1 else "sheets"
                    were = "was" if len(left_out) == 1 else "were"
                    message += f"; the hidden {sheets} {_names(left_out)} {were} left out"
                warning = Problem(warning.row, warning.code, message)
            found.append(warning)
        return found

    def hidden_rows(self, title: str | None) -> frozenset[int]:
        """The rows (as Excel numbers them) hidden or filtered out in the sheet ``title``."""
        sheet = next((s for s in self.sheets if s.title == title), None)
        if sheet is None:
            return frozenset()
        try:
            with self._part(sheet.part) as source:
                if not _mentions(source, b"hidden"):
                    return frozenset()
            with self._part(sheet.part) as source:
                return frozenset(_hidden_row_numbers(source))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, expat.ExpatError):
            # The reader reads (or refuses) the sheet itself: this warning is not worth a refusal.
            return frozenset()

    @contextmanager
    def _part(self, part: str) -> Iterator[IO[bytes]]:
        with zipfile.ZipFile(self.path) as archive, archive.open(part) as source:
            yield source


def look_into(path: Path) -> Workbook | None:
    """The sheets of the workbook at ``path``, from its sheet list alone; None for a file that
    is not a workbook, or one that cannot be looked into (the reader then says why)."""
    from openpyxl.reader.excel import ExcelReader

    try:
        with path.open("rb") as handle:
            if handle.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
                return None
            handle.seek(0)
            reader = ExcelReader(handle, read_only=True)
            try:
                reader.read_manifest()
                reader.read_workbook()
                sheets = [
                    _Sheet(sheet.name, sheet.state != "visible", rel.target)
                    for sheet, rel in reader.parser.find_sheets()
                    # as openpyxl lists a workbook's worksheets, so both see the same sheets
                    if rel.target in reader.valid_files and "chartsheet" not in rel.Type
                ]
            finally:
                reader.archive.close()
    except Exception:  # a zip that is no workbook: openpyxl raises many kinds
        return None
    return Workbook(path, sheets)


def hidden_rows_warning(rows: list[int]) -> Problem:
    """One warning naming the ``rows`` (in order) that were read though Excel hides them."""
    ranges: list[tuple[int, int]] = []
    for row in rows:
        if ranges and row == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], row)
        else:
            ranges.append((row, row))
    shown = [str(a) if a == b else f"{a}-{b}" for a, b in ranges[:_SHOWN_RANGES]]
    if len(ranges) > _SHOWN_RANGES:
        named = ", ".join(shown) + f", … ({len(rows):,} rows in all)"
    else:
        named = _names(shown, quote=False)
    if len(rows) == 1:
        said = f"row {named} is hidden in Excel (hidden or filtered out) but was read"
    else:
        said = f"rows {named} are hidden in Excel (hidden or filtered out) but were read"
    return Problem(None, "hidden_rows", said + " like the others")


def _header(worksheet: Any) -> list[str]:
    for values in worksheet.iter_rows(min_row=1, max_row=1, values_only=True):
        return [cell_text(v) for v in values]
    return []


def _names(names: list[str], *, quote: bool = True) -> str:
    shown = [repr(n) if quote else n for n in names]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def _mentions(source: IO[bytes], word: bytes) -> bool:
    tail = b""
    while chunk := source.read(_CHUNK):
        if word in tail + chunk[: len(word)] or word in chunk:
            return True
        tail = chunk[-len(word) :]
    return False


def _hidden_row_numbers(source: IO[bytes]) -> list[int]:
    """The numbers of the ``<row hidden="1">`` of a sheet's XML, counted as openpyxl counts
    them (a row without ``r`` follows the one before)."""
    found: list[int] = []
    number = 0

    def start(name: str, attributes: dict[str, str]) -> None:
        nonlocal number
        if name != "row" and not name.endswith(":row"):
            return
        given = attributes.get("r")
        number = int(float(given)) if given else number + 1
        if attributes.get("hidden", "").strip() in ("1", "true"):
            found.append(number)

    parser = expat.ParserCreate()
    parser.StartElementHandler = start
    parser.ParseFile(source)
    return found

"""How the workbooks look, shared by both: an atomically saved write-only book, a styled table
(header notes, filters, frozen header, text cells, sheet protection), the Targets and About
sheets."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omi_batch import reports
from omi_batch.workbook.frames import moved_by_target
from omi_batch.workbook.texts import HEADER_NOTES, TARGET_NOTES

TARGETS_SHEET = "Targets"
ABOUT_SHEET = "About"

_NUMBER_COLUMNS = {"row", "conversations", "sources_count", "conversations_previewed",
                   "updated_records", "difference", "attempts", "moved", "tickets",
                   "tickets_previewed", "tickets_moved"}  # fmt: skip
_WRAP_COLUMNS = {"error", "warnings", "note", "sources", "conv_ids"}
_WIDTH = {"batch": 22, "row": 6, "approved": 11, "preview_status": 16, "status": 14,
          "submitted_at": 25, "completed_at": 25}  # fmt: skip
_WRAP_WIDTH = {"error": 40, "warnings": 46, "note": 34, "sources": 50, "conv_ids": 51}
_MAX_WIDTH = 40
_LINE_HEIGHT = 14.5  # points a line of 11-point text takes
_FONT = "Calibri"

_HEADER_FILL = "FF1F4E78"
FAILED_FILL = "FFF8CBAD"  # rows that cannot be approved / did not succeed
UNCONFIRMED_FILL = "FFFFE699"
APPROVE_FILL = "FFE2EFDA"  # the one column a person fills in
_AUTHOR = "omi-batch"


def review_path(reports_dir: str | Path, batch_id: str) -> Path:
    """Where a batch's review workbook goes: beside its preview report."""
    return Path(reports_dir) / f"{batch_id}-review.xlsx"


def results_path(reports_dir: str | Path, batch_id: str) -> Path:
    """Where a batch's results workbook goes: beside its results report."""
    return Path(reports_dir) / f"{batch_id}-results.xlsx"


class Book:
    """A write-only openpyxl workbook (streams rows: 10,000 rows stay cheap) saved atomically."""

    def __init__(self) -> None:
        from openpyxl import Workbook

        self.book = Workbook(write_only=True)

    def sheet(self, title: str) -> Any:
        return self.book.create_sheet(title)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            self.book.save(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def cell_text(value: object) -> str:
    """A cell's text with the characters an .xlsx file cannot hold replaced."""
    text = str(value)
    if text.isprintable():  # the characters replaced are all control characters
        return text
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    return ILLEGAL_CHARACTERS_RE.sub("\ufffd", text)


class _Styles:
    """The few cell styles a sheet uses, built once (styling each cell anew is slow)."""

    def __init__(self) -> None:
        from openpyxl.styles import Alignment, Border, Font, PatternFill, Protection, Side

        self.PatternFill = PatternFill
        self.font = Font(name=_FONT, size=11)
        self.header_font = Font(name=_FONT, size=11, bold=True, color="FFFFFFFF")
        self.header_fill = PatternFill("solid", fgColor=_HEADER_FILL)
        self.header_align = Alignment(wrap_text=True, vertical="center", indent=1)
        self.border = Border(bottom=Side(style="thin", color="FFBFBFBF"))
        self.top = Alignment(vertical="top", horizontal="left", indent=1)
        self.centre = Alignment(vertical="top", horizontal="center")
        self.number = Alignment(vertical="top", horizontal="right", indent=1)
        self.wrap = Alignment(vertical="top", horizontal="left", indent=1, wrap_text=True)
        self.locked = Protection(locked=True)
        self.unlocked = Protection(locked=False)
        self.fills: dict[str, Any] = {}
        self.templates: dict[tuple, Any] = {}

    def fill(self, color: str) -> Any:
        if color not in self.fills:
            self.fills[color] = self.PatternFill("solid", fgColor=color)
        return self.fills[color]


def _cell(sheet: Any, styles: _Styles, value: object, key: tuple, build: Callable) -> Any:
    """A write-only cell holding ``value`` with the style ``key`` (copied from a template)."""
    from openpyxl.cell import WriteOnlyCell

    template = styles.templates.get(key)
    if template is None:
        template = WriteOnlyCell(sheet)
        build(template)
        styles.templates[key] = template
    cell = WriteOnlyCell(sheet)
    cell._style = template._style  # the same style ids: shared, never mutated after
    if value is None or value == "":
        return cell
    if isinstance(value, bool) or not isinstance(value, int):
        cell.value = cell_text(value)
        cell.data_type = "s"  # text, even when it starts with = (no formula is ever made)
    else:
        cell.value = value
    return cell


def line_count(value: object, width: float) -> int:
    """How many lines ``value`` takes in a wrapped cell ``width`` characters wide."""
    if value is None or value == "":
        return 1
    per_line = max(int(width) - 1, 1)
    return sum(max(-(-len(part) // per_line), 1) for part in str(value).split("\n"))


def table(
    sheet: Any,
    frame: Any,
    notes: Mapping[str, str],
    *,
    style: Callable[[int, str], tuple[str | None, bool]],
    comment: Callable[[int, str], str | None] | None = None,
) -> None:
    """A header (bold, filters, frozen, a Vietnamese note on each cell) and one line a row;
    ids and emails are text cells; the sheet protected, only editable cells unlocked."""
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.comments import Comment
    from openpyxl.utils import get_column_letter

    styles = _Styles()
    columns = list(frame.columns)
    records = frame.astype(object).where(frame.notna(), None).values.tolist()
    widths = [_width(column, [r[i] for r in records]) for i, column in enumerate(columns)]
    for index, width in enumerate(widths, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = width
    sheet.freeze_panes = "A2"
    sheet.auto_filter.ref = f"A1:{get_column_letter(len(columns))}{len(records) + 1}"
    sheet.print_title_rows = "1:1"
    _page(sheet)
    _protect(sheet)

    def header_style(cell: Any) -> None:
        cell.font, cell.fill = styles.header_font, styles.header_fill
        cell.alignment, cell.border = styles.header_align, styles.border
        cell.protection = styles.locked

    header = []
    for column in columns:
        cell = _cell(sheet, styles, column, ("header",), header_style)
        note = notes.get(column)
        if note:
            cell.comment = Comment(f"{note}\n({column})", _AUTHOR, height=110, width=280)
        header.append(cell)
    sheet.row_dimensions[1].height = 2 * _LINE_HEIGHT
    _take_cells_as_they_are(sheet)
    sheet.append(header)

    kinds = ["row" if c == "row" else "number" if c in _NUMBER_COLUMNS
             else "wrap" if c in _WRAP_COLUMNS else "text" for c in columns]  # fmt: skip
    wrapped = [i for i, kind in enumerate(kinds) if kind == "wrap"]

    def build(key: tuple) -> Any:
        kind, fill, editable = key
        template = WriteOnlyCell(sheet)
        number = kind in ("row", "number")
        template.number_format = "0" if number else "@"
        template.alignment = {
            "wrap": styles.wrap,
            "row": styles.centre,
            "number": styles.number,
        }.get(kind, styles.top)
        template.protection = styles.unlocked if editable else styles.locked
        if not number:
            template.quotePrefix = True  # typed text stays text, even "=…" or "0123"
        if fill:
            template.fill = styles.fill(fill)
        styles.templates[key] = template
        return template

    templates = styles.templates
    numeric = ("row", "number")
    # One cell per column, used again on every line: append() writes a line's cells out
    # before it returns, and making 100,000 cells is a good part of a big sheet's cost.
    pool = [WriteOnlyCell(sheet) for _ in columns]
    for index, record in enumerate(records):
        line: list[Any] = []
        for cell, column, kind, value in zip(pool, columns, kinds, record, strict=True):
            fill, editable = style(index, column)
            note = comment(index, column) if comment else None
            empty = value is None or value == ""
            if empty and fill is None and not editable and note is None:
                line.append(None)  # nothing to show, locked like every cell: not written
                continue
            if kind in numeric and not (empty or isinstance(value, int)):
                kind = "text"
            key = (kind, fill, editable)
            template = templates.get(key) or build(key)
            cell._style = template._style  # the same style ids: shared, never mutated after
            # Set directly: openpyxl's setter would turn text starting with "=" into a
            # formula, and it is the hot path of a 10,000-row sheet.
            if empty:
                cell._value, cell.data_type = None, "n"
            elif isinstance(value, int) and not isinstance(value, bool):
                cell._value, cell.data_type = value, "n"
            else:
                cell._value, cell.data_type = cell_text(value), "s"
            if note:
                cell.comment = Comment(cell_text(note), _AUTHOR, height=90, width=280)
            elif cell._comment is not None:
                cell.comment = None
            line.append(cell)
        lines = max((line_count(record[i], widths[i]) for i in wrapped), default=1)
        if lines > 1:  # neither Excel nor LibreOffice grows a row of a streamed sheet itself
            sheet.row_dimensions[index + 2].height = lines * _LINE_HEIGHT
        sheet.append(line)


def _take_cells_as_they_are(sheet: Any) -> None:
    """Let ``sheet.append`` write the cells it is given (each a cell or None) as they are.

    openpyxl's write-only sheet first tries each appended cell as a value (a ValueError whose
    message formats the cell's repr) and makes a new cell after every styled one: about half
    the time of a 10,000-row sheet. Its ``_values_to_row`` hook (openpyxl 3.1) is replaced on
    this sheet only; a version without the hook appends as before."""
    if not callable(getattr(sheet, "_values_to_row", None)):
        return

    def placed(cells: Sequence[Any], row_idx: int) -> Any:
        for column, cell in enumerate(cells, start=1):
            if cell is not None:
                cell.column, cell.row = column, row_idx
                yield cell

    sheet._values_to_row = placed


def _width(column: str, values: list[object]) -> float:
    """A column wide enough for its header and its longest value, within bounds."""
    header = len(column) + 3  # bold, plus the filter button
    if column in _WIDTH:
        return float(max(_WIDTH[column], header))
    longest = max((len(str(v)) for v in values if v is not None), default=0)
    if column in _WRAP_WIDTH:
        return float(max(min(_WRAP_WIDTH[column], longest + 2), header, 12))
    ceiling = 68 if column == "ledger_head" else _MAX_WIDTH  # a hash: one line, never cut
    return float(min(max(longest + 3, header, 10), ceiling))


def _page(sheet: Any) -> None:
    """Print (and render) landscape, as wide as the page."""
    sheet.page_setup.orientation = "landscape"
    sheet.page_setup.paperSize = "9"  # A4
    sheet.page_setup.fitToWidth = 1
    sheet.page_setup.fitToHeight = 0
    sheet.sheet_properties.pageSetUpPr.fitToPage = True


def _protect(sheet: Any) -> None:
    """Protect the sheet without a password: filtering, sorting and resizing stay allowed."""
    protection = sheet.protection
    protection.sheet = True
    protection.autoFilter = False  # False = allowed while protected
    protection.sort = False
    protection.formatColumns = False
    protection.formatRows = False
    protection.selectLockedCells = False
    protection.selectUnlockedCells = False


def approved_dropdown(sheet: Any, column: int, last_row: int) -> None:
    from openpyxl.utils import get_column_letter
    from openpyxl.worksheet.datavalidation import DataValidation

    letter = get_column_letter(column)
    validation = DataValidation(
        type="list",
        formula1='"yes,no"',
        allow_blank=True,
        showDropDown=False,  # False shows the arrow (the attribute's name says the opposite)
        showErrorMessage=True,
        showInputMessage=True,
        errorTitle="yes / no",
        error="Chỉ chọn yes hoặc no (hoặc để trống).\nChoose yes or no (or leave it empty).",
        promptTitle="approved",
        prompt="yes = duyệt / approve\nno = không duyệt / do not approve",
    )
    validation.add(f"{letter}2:{letter}{last_row}")
    sheet.data_validations.append(validation)


def targets_sheet(book: Book, rows: list[dict], *, with_moved: bool) -> None:
    frame = reports.targets_frame(rows)
    if with_moved and "moved" not in frame.columns:
        moved = moved_by_target(rows)
        frame = frame.assign(moved=[moved.get(t, 0) for t in frame["target_email"]])
    notes = {**HEADER_NOTES, **TARGET_NOTES}
    sheet = book.sheet(TARGETS_SHEET)
    table(sheet, frame, notes, style=lambda index, column: (None, False))


def about_sheet(
    book: Book,
    *,
    title: tuple[str, str],
    steps: list[tuple[str, str]],
    facts: list[tuple[str, str, Any]],
    notes: Sequence[str] = (),
) -> None:
    """What the workbook is and what to do with it: Vietnamese first, English beneath."""
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Alignment, Font

    sheet = book.sheet(ABOUT_SHEET)
    widths = {"A": 32.0, "B": 100.0}
    for letter, width in widths.items():
        sheet.column_dimensions[letter].width = width
    sheet.sheet_view.showGridLines = False
    _page(sheet)
    _protect(sheet)
    wrap = Alignment(wrap_text=True, vertical="top", horizontal="left")
    plain = Font(name=_FONT, size=11)
    bold = Font(name=_FONT, size=11, bold=True)
    english = Font(name=_FONT, size=11, italic=True, color="FF595959")

    title_align = Alignment(wrap_text=False, vertical="top", horizontal="left")

    def cell(value: object, font: Any = plain, align: Any = wrap) -> Any:
        made = WriteOnlyCell(sheet)
        if value is not None and value != "":
            if isinstance(value, int) and not isinstance(value, bool):
                made.value = value
            else:
                made.value = cell_text(value)
                made.data_type = "s"  # text, never a formula
        made.alignment, made.font = align, font
        made.number_format = "0" if isinstance(made.value, int) else "@"
        return made

    written = [0]

    def line(first: object, second: object = None, *, fonts: tuple = (plain, plain)) -> None:
        written[0] += 1
        row = written[0]
        lines = max(line_count(first, widths["A"]), line_count(second, widths["B"]))
        lines = 1 if row <= 2 else lines
        if row == 1:
            sheet.row_dimensions[row].height = 24  # the title's bigger type
        elif lines > 1:
            sheet.row_dimensions[row].height = lines * _LINE_HEIGHT
        align = title_align if row <= 2 else wrap  # the title runs on over column B
        sheet.append([cell(first, fonts[0], align), cell(second, fonts[1], align)])

    line(title[0], fonts=(Font(name=_FONT, size=16, bold=True), plain))
    line(title[1], fonts=(Font(name=_FONT, size=12, italic=True, color="FF595959"), plain))
    line(None)
    line("Hướng dẫn", "Instructions", fonts=(bold, english))
    for number, (vietnamese, in_english) in enumerate(steps, start=1):
        line(f"{number}.", vietnamese)
        line(None, in_english, fonts=(plain, english))
    line(None)
    line("Thông tin", "Facts", fonts=(bold, english))
    for vietnamese, in_english, value in facts:
        line(f"{vietnamese}\n{in_english}", value, fonts=(plain, bold))
    if notes:
        line(None)
        line("Cảnh báo khác\nOther warnings", fonts=(bold, plain))
        for text in notes:
            line(None, text)

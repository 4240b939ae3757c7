"""The review and results workbooks: the reports as the HR reviewers read them in Excel.

The CSV reports stay for scripts; these .xlsx files are for people. The review workbook has one
editable column (``approved``, a yes/no dropdown), every other cell locked (sheet protection
without a password, against accidental edits), ids and emails as text cells so Excel never turns
them into numbers or dates, and Vietnamese notes on every header. Values are the CSV reports'
values (the same frames), stored as text cells: nothing a cell holds is ever run as a formula.
The sheet a reader takes the review from is agreed in /work/team/workbook-contract.md: the one
named ``Review``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from omi_batch import reports

REVIEW_SHEET = "Review"
RESULTS_SHEET = "Results"
TARGETS_SHEET = "Targets"
ABOUT_SHEET = "About"

REVIEW_COLUMNS = list(reports.PREVIEW_COLUMNS)
APPROVABLE_STATES = ("previewed", "approved", "skipped")  # the states `approve` accepts
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

# What each column means, for the header's cell comment (the reviewers are Vietnamese HR staff).
HEADER_NOTES = {
    "batch": "Mã lô (batch) của báo cáo này. Không sửa.",
    "row": "Số dòng trong tệp đầu vào. Không sửa.",
    "source_email": "Email của nhân viên nghỉ việc (nhân viên nguồn); các hội thoại của người "
    "này sẽ được chuyển đi.",
    "target_email": "Email của nhân viên nhận các hội thoại (nhân viên đích).",
    "conv_ids": "Mã các hội thoại cần chuyển, cách nhau bằng dấu ;. Để trống nghĩa là chuyển "
    "tất cả hội thoại còn lại của nhân viên nguồn.",
    "replace_existing_members": "true: nhân viên nhận thay thế các thành viên hiện có của hội "
    "thoại; false: chỉ thêm nhân viên nhận vào hội thoại.",
    "scope": "Phạm vi chuyển: conversations = hội thoại; tickets = phiếu hỗ trợ (ticket); "
    "both = cả hai.",
    "conversations": "Số hội thoại sẽ được chuyển (theo kết quả xem trước).",
    "tickets": "Số ticket đang mở sẽ được chuyển (theo kết quả xem trước).",
    "conversations_status": "Kết quả chuyển hội thoại của dòng này.",
    "tickets_previewed": "Số ticket dự kiến khi xem trước.",
    "tickets_status": "Kết quả chuyển ticket của dòng này.",
    "tickets_moved": "Số ticket OMI báo đã chuyển.",
    "tickets_request_id": "Mã yêu cầu (requestId) OMI trả về cho việc chuyển ticket.",
    "tickets_error": "Lý do lỗi khi chuyển ticket, nếu có.",
    "preview_status": "Kết quả xem trước: previewed = thành công; preview_failed = lỗi, không "
    "thể duyệt; planned = chưa xem trước.",
    "error": "Lý do lỗi, nếu có.",
    "warnings": "Cảnh báo khi kiểm tra tệp (ví dụ: chuỗi chuyển tiếp, hội thoại dùng chung). "
    "Đọc trước khi duyệt.",
    "note": "Ghi chú từ tệp đầu vào (có thể sửa).",
    "approved": "Chọn yes để duyệt dòng này; chọn no hoặc để trống để không duyệt. Đây là cột "
    "duy nhất được sửa.",
    "sources": "Các nhân viên nguồn chuyển hội thoại sang nhân viên này.",
    "moved": "Số hội thoại đã thực sự được chuyển (OMI đã xác nhận).",
    "conversations_previewed": "Số hội thoại dự kiến khi xem trước.",
    "request_id": "Mã yêu cầu (requestId) do OMI trả về.",
    "status": "Kết quả: succeeded = thành công; failed = thất bại; unconfirmed = chưa được xác "
    "nhận; skipped = bỏ qua; preview_failed = lỗi khi xem trước.",
    "updated_records": "Số hội thoại OMI báo đã chuyển.",
    "difference": "Chênh lệch: updated_records trừ conversations_previewed.",
    "attempts": "Số lần gửi yêu cầu.",
    "submitted_at": "Thời điểm gửi yêu cầu (UTC).",
    "completed_at": "Thời điểm hoàn tất (UTC).",
    "ledger_head": "Mã băm cuối của sổ ghi (ledger) lúc ghi báo cáo, để kiểm tra sổ ghi.",
}
TARGET_NOTES = {"conversations": "Tổng số hội thoại nhân viên này sẽ nhận (theo xem trước)."}

_HEADER_FILL = "FF1F4E78"
_FAILED_FILL = "FFF8CBAD"  # rows that cannot be approved / did not succeed
_UNCONFIRMED_FILL = "FFFFE699"
_APPROVE_FILL = "FFE2EFDA"  # the one column a person fills in
_AUTHOR = "omi-batch"


# --------------------------------------------------------------------------- frames


def review_frame(
    rows: list[dict], batch_id: str, warnings_by_row: Mapping[int, Sequence[str]] | None = None
) -> Any:
    """The preview report's frame in REVIEW_COLUMNS order, with ``batch`` and ``warnings``
    filled in where the CSV frame does not have them (yet)."""
    frame = reports.preview_frame(rows)
    if "batch" not in frame.columns:
        frame.insert(0, "batch", batch_id)
    if "warnings" not in frame.columns:
        by_row = warnings_by_row or {}
        frame["warnings"] = [_lines(by_row.get(int(n), ())) for n in frame["row"]]
    return frame[REVIEW_COLUMNS]


def warnings_by_row(batch_info: Mapping[str, Any]) -> dict[int, list[str]]:
    """The plan's warnings (kept in the batch) by row; those of no row are under ``0``."""
    found: dict[int, list[str]] = {}
    for warning in batch_info.get("warnings") or []:
        text = f"{warning.get('code')}: {warning.get('message')}"
        found.setdefault(warning.get("row") or 0, []).append(text)
    return found


def moved_by_target(rows: Iterable[dict]) -> dict[str, int]:
    """Conversations OMI confirmed moved, per target (succeeded rows' ``updated_records``)."""
    moved: dict[str, int] = {}
    for row in reports.conversations(rows):
        if row["state"] == "succeeded" and row["updated_records"] is not None:
            moved[row["target_email"]] = moved.get(row["target_email"], 0) + row["updated_records"]
    return moved


def _lines(items: Iterable[str]) -> str:
    return "; ".join(items)


# --------------------------------------------------------------------------- writing


def review_path(reports_dir: str | Path, batch_id: str) -> Path:
    return Path(reports_dir) / f"{batch_id}-review.xlsx"


def results_path(reports_dir: str | Path, batch_id: str) -> Path:
    return Path(reports_dir) / f"{batch_id}-results.xlsx"


def write_review_workbook(
    rows: list[dict],
    batch_info: Mapping[str, Any],
    path: str | Path,
    *,
    warnings_by_row: Mapping[int, Sequence[str]] | None = None,
    max_age_hours: float = 24,
) -> Path:
    """Write ``<batch>-review.xlsx``: sheets Review (``approved`` the one editable column),
    Targets (the load per target agent) and About (what to do, in Vietnamese then English)."""
    batch_id = batch_info["id"]
    by_row = warnings_by_row if warnings_by_row is not None else _plan_warnings(batch_info)
    frame = review_frame(rows, batch_id, by_row)
    lines = reports.by_row(rows)  # the frame's lines, in its order
    failed = [reports.preview_status(line) == "preview_failed" for line in lines]
    can_approve = [
        any(t["state"] in APPROVABLE_STATES for t in line["transfers"].values()) for line in lines
    ]
    path = Path(path)
    book = _Book()
    review = book.sheet(REVIEW_SHEET)

    def style(index: int, column: str) -> tuple[str | None, bool]:
        fill = _FAILED_FILL if failed[index] else None
        editable = column == "approved" and can_approve[index]
        if editable and fill is None:
            fill = _APPROVE_FILL
        return fill, editable

    def comment(index: int, column: str) -> str | None:
        if column == "approved" and failed[index]:
            reason = reports.preview_errors(lines[index]) or "preview failed"
            return f"Không thể duyệt: {reason}\nCannot be approved: {reason}"
        return None

    _table(review, frame, HEADER_NOTES, style=style, comment=comment)
    if any(can_approve):
        _approved_dropdown(review, REVIEW_COLUMNS.index("approved") + 1, len(lines) + 1)
    _targets_sheet(book, rows, with_moved=False)
    planned = {r["row"] for r in rows}
    loose = [text for n, items in by_row.items() if n not in planned for text in items]
    _about_sheet(
        book,
        title=("Duyệt lô chuyển hội thoại", "Review of a conversation transfer batch"),
        steps=_review_steps(batch_id, path.name, max_age_hours),
        facts=_review_facts(batch_info, rows, path.name, max_age_hours),
        notes=loose,
    )
    return book.save(path)


def write_results_workbook(
    rows: list[dict],
    batch_info: Mapping[str, Any],
    path: str | Path,
    *,
    head: str | None = None,
) -> Path:
    """Write ``<batch>-results.xlsx``: sheets Results (every row's outcome, the rows that did
    not succeed shaded), Targets (with ``moved``) and About. Nothing in it is editable."""
    frame = reports.results_frame(rows, head)
    statuses = list(frame["status"])
    book = _Book()
    results = book.sheet(RESULTS_SHEET)

    def style(index: int, column: str) -> tuple[str | None, bool]:
        status = statuses[index]
        if status in ("failed", "preview_failed"):
            return _FAILED_FILL, False
        return (_UNCONFIRMED_FILL if status == "unconfirmed" else None), False

    _table(results, frame, HEADER_NOTES, style=style)
    _targets_sheet(book, rows, with_moved=True)
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    facts = [
        ("Mã lô", "Batch", batch_info["id"]),
        ("Tạo lúc", "Created at", batch_info.get("created_at") or ""),
        ("Tệp nguồn", "Source file", batch_info.get("source_file") or ""),
        ("Số dòng", "Rows", len(statuses)),
        *[(_STATUS_VI[s], s, counts[s]) for s in reports.RESULT_STATUSES if counts.get(s)],
        ("Hội thoại đã chuyển", "Conversations moved", sum(moved_by_target(rows).values())),
        *_tickets_fact(rows, "updated_records", ("Ticket đã chuyển", "Tickets moved")),
        ("Mã băm sổ ghi", "Ledger head", head or ""),
    ]
    steps = [
        ("Trang Results có kết quả của từng dòng. Dòng tô màu cam là dòng thất bại; màu vàng là "
         "dòng chưa được OMI xác nhận (unconfirmed).",
         "The Results sheet has every row's outcome. Orange rows failed; yellow rows are not "
         "confirmed by OMI yet (unconfirmed)."),
        ("Các dòng cần làm lại có trong tệp " + f"{batch_info['id']}-retry.csv.",
         f"The rows to run again are in {batch_info['id']}-retry.csv."),
        ("Trang Targets cho biết số hội thoại mỗi nhân viên nhận đã thực sự nhận (moved).",
         "The Targets sheet shows how many conversations each target agent received (moved)."),
    ]  # fmt: skip
    _about_sheet(book, title=("Kết quả lô chuyển hội thoại",
                 "Results of a conversation transfer batch"), steps=steps, facts=facts)  # fmt: skip
    return book.save(Path(path))


_STATUS_VI = {
    "succeeded": "Thành công",
    "failed": "Thất bại",
    "unconfirmed": "Chưa xác nhận",
    "skipped": "Bỏ qua",
    "preview_failed": "Lỗi xem trước",
}


def _plan_warnings(batch_info: Mapping[str, Any]) -> dict[int, list[str]]:
    return warnings_by_row(batch_info)


def _review_steps(batch_id: str, name: str, max_age_hours: float) -> list[tuple[str, str]]:
    return [
        ("Mở trang Review. Với mỗi dòng muốn duyệt, chọn yes ở cột approved; chọn no hoặc để "
         "trống nếu không duyệt.",
         "Open the Review sheet. For each row you accept choose yes in the approved column; "
         "choose no or leave it empty for a row you do not accept."),
        ("Dòng tô màu cam là dòng xem trước bị lỗi (preview_failed): không thể duyệt; lý do ở "
         "cột error.",
         "Orange rows failed their preview (preview_failed) and cannot be approved; the reason "
         "is in the error column."),
        ("Đọc cột warnings trước khi duyệt. Trang Targets cho biết mỗi nhân viên nhận sẽ nhận "
         "bao nhiêu hội thoại.",
         "Read the warnings column before approving. The Targets sheet shows how many "
         "conversations each target agent takes on."),
        ("Chỉ cột approved được sửa; các cột khác bị khóa để tránh sửa nhầm (không có mật khẩu). "
         "Không thêm, xóa hay sắp xếp lại dòng.",
         "Only the approved column can be edited; the others are locked against accidental "
         "edits (no password). Do not add, delete or reorder rows."),
        (f"Lưu tệp ở định dạng .xlsx, rồi đặt tệp vào thư mục approved/ của job, hoặc chạy lệnh "
         f"duyệt bên dưới. Bản xem trước chỉ có hiệu lực {max_age_hours:g} giờ.",
         f"Save the file as .xlsx, then put it in the job's approved/ folder, or run the approve "
         f"command below. The preview is valid for {max_age_hours:g} hours."),
    ]  # fmt: skip


def _review_facts(
    batch_info: Mapping[str, Any], rows: list[dict], name: str, max_age_hours: float
) -> list[tuple[str, str, Any]]:
    lines = len(reports.by_row(rows))
    previewed = [r for r in reports.conversations(rows) if r["conversations_previewed"] is not None]
    times = [r["previewed_at"] for r in rows if r.get("previewed_at")]
    deadline = ""
    if times:
        try:
            oldest = datetime.fromisoformat(min(times))
            deadline = _iso(oldest + timedelta(hours=max_age_hours))
        except ValueError:
            deadline = ""
    failed = len({r["row"] for r in rows if r["state"] == "preview_failed"})
    return [
        ("Mã lô", "Batch", batch_info["id"]),
        ("Tạo lúc", "Created at", batch_info.get("created_at") or ""),
        ("Tệp nguồn", "Source file", batch_info.get("source_file") or ""),
        ("Số dòng", "Rows", lines),
        ("Dòng lỗi xem trước", "Rows that failed their preview", failed),
        ("Hội thoại sẽ chuyển", "Conversations to move",
         sum(r["conversations_previewed"] for r in previewed)),
        *_tickets_fact(rows, "conversations_previewed", ("Ticket sẽ chuyển", "Tickets to move")),
        ("Nhân viên nhận", "Target agents", len({r["target_email"] for r in previewed})),
        ("Thời hạn xem trước", "Preview age limit", f"{max_age_hours:g} h"),
        ("Duyệt trước lúc", "Approve before", deadline),
        ("Lệnh duyệt", "Approve command", f"omi-batch approve {batch_info['id']} --report {name}"),
    ]  # fmt: skip


def _tickets_fact(
    rows: list[dict], column: str, names: tuple[str, str]
) -> list[tuple[str, str, Any]]:
    """The About sheet's ticket figure (the sum of ``column`` over the ticket transfers), when
    the batch moves tickets at all."""
    tickets = [r for r in rows if r.get("kind") == "tickets"]
    if not tickets:
        return []
    return [(*names, sum(r[column] or 0 for r in tickets))]


def _iso(moment: datetime) -> str:
    """A time as the ledger writes it (UTC, ``Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- openpyxl


class _Book:
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


def _text(value: object) -> str:
    """A cell's text with the characters an .xlsx file cannot hold replaced."""
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    return ILLEGAL_CHARACTERS_RE.sub("\ufffd", str(value))


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
        cell.value = _text(value)
        cell.data_type = "s"  # text, even when it starts with = (no formula is ever made)
    else:
        cell.value = value
    return cell


def _line_count(value: object, width: float) -> int:
    """How many lines ``value`` takes in a wrapped cell ``width`` characters wide."""
    if value is None or value == "":
        return 1
    per_line = max(int(width) - 1, 1)
    return sum(max(-(-len(part) // per_line), 1) for part in str(value).split("\n"))


def _table(
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

    for index, record in enumerate(records):
        line: list[Any] = []
        for position, value in enumerate(record):
            column = columns[position]
            fill, editable = style(index, column)
            note = comment(index, column) if comment else None
            empty = value is None or value == ""
            if empty and fill is None and not editable and note is None:
                line.append(None)  # nothing to show, locked like every cell: not written
                continue
            kind = kinds[position]
            if kind in ("row", "number") and not (empty or isinstance(value, int)):
                kind = "text"
            key = (kind, fill, editable)
            template = styles.templates.get(key) or build(key)
            cell = WriteOnlyCell(sheet)
            cell._style = template._style  # the same style ids: shared, never mutated after
            if not empty:
                # Set directly: openpyxl's setter would turn text starting with "=" into a
                # formula, and it is the hot path of a 10,000-row sheet.
                if isinstance(value, int) and not isinstance(value, bool):
                    cell._value, cell.data_type = value, "n"
                else:
                    cell._value, cell.data_type = _text(value), "s"
            if note:
                cell.comment = Comment(_text(note), _AUTHOR, height=90, width=280)
            line.append(cell)
        lines = max((_line_count(record[i], widths[i]) for i in wrapped), default=1)
        if lines > 1:  # neither Excel nor LibreOffice grows a row of a streamed sheet itself
            sheet.row_dimensions[index + 2].height = lines * _LINE_HEIGHT
        sheet.append(line)


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


def _approved_dropdown(sheet: Any, column: int, last_row: int) -> None:
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


def _targets_sheet(book: _Book, rows: list[dict], *, with_moved: bool) -> None:
    frame = reports.targets_frame(rows)
    if with_moved and "moved" not in frame.columns:
        moved = moved_by_target(rows)
        frame = frame.assign(moved=[moved.get(t, 0) for t in frame["target_email"]])
    notes = {**HEADER_NOTES, **TARGET_NOTES}
    sheet = book.sheet(TARGETS_SHEET)
    _table(sheet, frame, notes, style=lambda index, column: (None, False))


def _about_sheet(
    book: _Book,
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
                made.value = _text(value)
                made.data_type = "s"  # text, never a formula
        made.alignment, made.font = align, font
        made.number_format = "0" if isinstance(made.value, int) else "@"
        return made

    written = [0]

    def line(first: object, second: object = None, *, fonts: tuple = (plain, plain)) -> None:
        written[0] += 1
        row = written[0]
        lines = max(_line_count(first, widths["A"]), _line_count(second, widths["B"]))
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

"""The workbooks' words for people: header notes, status names and the About sheets' steps,
Vietnamese first (the reviewers are Vietnamese HR staff), English beside or beneath."""

from __future__ import annotations

from collections.abc import Sequence

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

STATUS_VI = {
    "succeeded": "Thành công",
    "failed": "Thất bại",
    "unconfirmed": "Chưa xác nhận",
    "skipped": "Bỏ qua",
    "preview_failed": "Lỗi xem trước",
}


# The About sheets' steps, (Vietnamese, English); ``{hours}`` and ``{batch}`` are filled in.
REVIEW_STEPS = (
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
    ("Lưu tệp ở định dạng .xlsx, rồi đặt tệp vào thư mục approved/ của job, hoặc chạy lệnh "
     "duyệt bên dưới. Bản xem trước chỉ có hiệu lực {hours:g} giờ.",
     "Save the file as .xlsx, then put it in the job's approved/ folder, or run the approve "
     "command below. The preview is valid for {hours:g} hours."),
)  # fmt: skip
RESULTS_STEPS = (
    ("Trang Results có kết quả của từng dòng. Dòng tô màu cam là dòng thất bại; màu vàng là "
     "dòng chưa được OMI xác nhận (unconfirmed).",
     "The Results sheet has every row's outcome. Orange rows failed; yellow rows are not "
     "confirmed by OMI yet (unconfirmed)."),
    ("Các dòng cần làm lại có trong tệp {batch}-retry.csv.",
     "The rows to run again are in {batch}-retry.csv."),
    ("Trang Targets cho biết số hội thoại mỗi nhân viên nhận đã thực sự nhận (moved).",
     "The Targets sheet shows how many conversations each target agent received (moved)."),
)  # fmt: skip


def steps(texts: Sequence[tuple[str, str]], **values: object) -> list[tuple[str, str]]:
    """``texts`` with ``values`` filled in."""
    return [(vi.format(**values), en.format(**values)) for vi, en in texts]

"""The review and results workbooks: the reports as the HR reviewers read them in Excel.

The CSV reports stay for scripts; these .xlsx files are for people. The review workbook has one
editable column (``approved``, a yes/no dropdown), every other cell locked (sheet protection
without a password, against accidental edits), ids and emails as text cells so Excel never turns
them into numbers or dates, and Vietnamese notes on every header. Values are the CSV reports'
values (the same frames), stored as text cells: nothing a cell holds is ever run as a formula.
The sheet a reader takes the review from is the one named ``Review``.

``frames`` (what the sheets show), ``texts`` (the words for people), ``sheets`` (how both
workbooks look), ``review`` and ``results`` (one workbook each).
"""

from __future__ import annotations

from omi_batch.workbook.frames import (
    APPROVABLE_STATES,
    REVIEW_COLUMNS,
    moved_by_target,
    review_frame,
    warnings_by_row,
)
from omi_batch.workbook.results import RESULTS_SHEET, write_results_workbook
from omi_batch.workbook.review import REVIEW_SHEET, write_review_workbook
from omi_batch.workbook.sheets import ABOUT_SHEET, TARGETS_SHEET, results_path, review_path
from omi_batch.workbook.texts import HEADER_NOTES, TARGET_NOTES

__all__ = [
    "ABOUT_SHEET",
    "APPROVABLE_STATES",
    "HEADER_NOTES",
    "RESULTS_SHEET",
    "REVIEW_COLUMNS",
    "REVIEW_SHEET",
    "TARGETS_SHEET",
    "TARGET_NOTES",
    "moved_by_target",
    "results_path",
    "review_frame",
    "review_path",
    "warnings_by_row",
    "write_results_workbook",
    "write_review_workbook",
]

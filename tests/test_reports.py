"""The targets report's sums, joins and order, on rows as the ledger gives them."""

from __future__ import annotations

from omi_batch import reports


def _row(source: str, target: str, previewed: int | None, moved: int | None = None,
         kind: str = "conversations") -> dict:  # fmt: skip
    return {"source_email": source, "target_email": target, "conversations_previewed": previewed,
            "updated_records": moved, "kind": kind, "state": "succeeded"}  # fmt: skip


def test_the_targets_report_sums_per_target_joins_its_sources_and_puts_the_busiest_first():
    rows = [
        _row("b@x.vn", "t2@x.vn", 3, 3),
        _row("a@x.vn", "t2@x.vn", 2, None),  # not moved (yet): counts 0
        _row("a@x.vn", "t2@x.vn", 1, 1),  # the same source twice: named once
        _row("c@x.vn", "t1@x.vn", 6, 5),  # ties t2 on 6: the email decides
        _row("d@x.vn", "t3@x.vn", 9, 9),
        _row("e@x.vn", "t4@x.vn", None),  # not previewed: not a load
        _row("f@x.vn", "t3@x.vn", 40, 40, kind="tickets"),  # tickets are not conversations
    ]
    frame = reports.targets_frame(rows, moved=True)
    assert frame.to_dict("records") == [
        {"target_email": "t3@x.vn", "sources": "d@x.vn", "conversations": 9, "moved": 9},
        {"target_email": "t1@x.vn", "sources": "c@x.vn", "conversations": 6, "moved": 5},
        {"target_email": "t2@x.vn", "sources": "a@x.vn; b@x.vn", "conversations": 6, "moved": 4},
    ]
    assert [str(t) for t in frame.dtypes[["conversations", "moved"]]] == ["int64", "int64"]
    assert list(reports.targets_frame(rows).columns) == ["target_email", "sources", "conversations"]
    assert list(reports.targets_frame([_row("a@x.vn", "t@x.vn", None)], moved=True).columns) == [
        "target_email", "sources", "conversations", "moved"]  # fmt: skip


def test_the_summary_line_says_what_its_figures_cannot_count(ledger):
    """Rows verified by a preview moved an unknown amount (not in the sum), and a row flagged
    for review is named, so an all-succeeded line never hides why the exit code is 1."""
    from helpers import make_batch

    batch = make_batch(ledger, rows=3)
    ledger.record_step(batch, 2, state="succeeded", event="t", expect=["submitted"],
                       updated_records=5, verified_by="callback")  # fmt: skip
    ledger.record_step(batch, 3, state="succeeded", event="t", expect=["submitted"],
                       verified_by="preview")  # fmt: skip
    ledger.record_step(batch, 4, state="succeeded", event="t", expect=["submitted"],
                       updated_records=2, verified_by="callback")  # fmt: skip
    ledger.update_row(batch, 4, event="t", needs_review=1, error=None)
    assert reports.summary_line(batch, ledger.rows(batch)) == (
        f"Batch {batch}: 3 rows succeeded, 0 failed, 0 unconfirmed, 0 skipped; 7 conversations "
        "moved. 1 row verified by preview: what it moved is not known, so not counted. 1 row "
        "needs review: see the results report's error."
    )
    assert reports.summary_line(batch, ledger.rows(batch)[:1]).endswith("; 5 conversations moved.")
    ledger.update_row(batch, 3, event="t", verified_by="callback")  # a SUCCESS without a count
    assert "1 row confirmed by a callback without a count: what it moved is not counted." in (
        reports.summary_line(batch, ledger.rows(batch)))  # fmt: skip
    [flagged] = [r for r in ledger.rows(batch) if r["row"] == 4]
    assert reports.results_frame([flagged])["error"].tolist() == [
        "needs review: conflicting callbacks"
    ]

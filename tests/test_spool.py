"""The receiver's spool file on its own: durable, ordered, held entries wait (issue 12)."""

from __future__ import annotations

from omi_batch.spool import Spool, spool_path


def callback(receipt: str, row: int = 2) -> dict:
    return {"batch_id": "20261201-000000-abcd", "row": row, "phase": "execute",
            "raw_body": b'{"requestId": "r"}', "headers": {"Content-Type": "application/json"},
            "remote": "127.0.0.1", "refused": None, "receipt": receipt}  # fmt: skip


def test_spooled_callbacks_come_back_in_order_from_a_new_spool_object(ledger_path):
    spool = Spool(spool_path(ledger_path))
    assert spool.pending() == [] and spool.count() == 0
    assert spool.waiting_for("20261201-000000-abcd") == 0
    assert not spool.exists()  # nothing spooled: no file
    for number in (2, 3, 4):
        spool.put(callback(f"k{number}", number))
    spool.close()
    again = Spool(spool_path(ledger_path))
    entries = again.pending()
    assert [(e.receipt, e.callback["row"]) for e in entries] == [("k2", 2), ("k3", 3), ("k4", 4)]
    assert entries[0].callback == callback("k2", 2)
    again.remove([entries[0].id])
    again.later([entries[1].id], 3600)
    assert [e.receipt for e in again.pending()] == ["k4"]
    assert [e.receipt for e in again.pending(due=False)] == ["k3", "k4"]
    assert again.count() == 2
    assert again.waiting_for("20261201-000000-abcd") == 2  # held ones too
    assert again.waiting_for("20261201-000000-ffff") == 0

"""What people decide about rows: approve and skip (the approvals table and its events), and
cancelling a batch nothing of which was sent."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from omi_batch.errors import BatchCancelled, IllegalTransition, NotFound, UsageError
from omi_batch.ledger.fields import named, with_kind
from omi_batch.ledger.hashing import now
from omi_batch.ledger.rows import locked_row, require_batch, write_row
from omi_batch.ledger.steps import step_in
from omi_batch.ledger.store import Tx
from omi_batch.states import CANCELLABLE, CANCELLED, KINDS, STARTED, TRANSITIONS

_LAST_CANCEL = (
    "SELECT data FROM events WHERE batch_id = ? AND kind = 'batch_cancelled' "
    "ORDER BY id DESC LIMIT 1"
)


def _cancelled(batch_id: str, event: Mapping[str, Any] | None) -> BatchCancelled:
    """The error naming who cancelled ``batch_id`` and when (from its ``batch_cancelled``)."""
    data = json.loads(event["data"]) if event else {}
    who = f" by {data['by']} at {data['at']}" if data.get("by") and data.get("at") else ""
    return BatchCancelled(f"batch {batch_id} was cancelled{who}: nothing of it is approved or "
                          "sent; preview the file again for a new batch")  # fmt: skip


class Decisions:
    """Approve, skip and cancel (a part of :class:`Ledger`: needs ``_write``, ``_query``,
    ``path`` and :meth:`Rows.batch`)."""

    def approve(
        self,
        batch_id: str,
        *,
        approve: Iterable[int | tuple[int, str]],
        skip: Iterable[int | tuple[int, str]] = (),
        by: str,
        how: str,
    ) -> int:
        """In one transaction, approve the transfers in ``approve`` and skip those in ``skip``
        (a ``(row, kind)`` pair, or a row number: every transfer of that row); return how many
        became approved. A transfer already in the wanted state is left as it is (running
        approve twice is harmless); any illegal change refuses the whole call."""
        changed = 0
        with self._write() as tx:
            require_batch(tx, self.path, batch_id)
            to_approve = self._transfers_in(tx, batch_id, approve)
            to_skip = self._transfers_in(tx, batch_id, skip)
            both = sorted(set(to_approve) & set(to_skip))
            if both:
                raise UsageError("rows both approved and skipped: "
                                 f"{', '.join(named(*t)[4:] for t in both)}")  # fmt: skip
            stamp = now()
            for decision, wanted in (("approved", to_approve), ("skipped", to_skip)):
                for row, kind in dict.fromkeys(wanted):
                    current = locked_row(tx, self.path, batch_id, row, kind)["state"]
                    if current == decision:
                        continue
                    if decision not in TRANSITIONS[current]:
                        raise IllegalTransition(
                            f"{named(row, kind)} of batch {batch_id} is {current}: it cannot be "
                            f"{'approved' if decision == 'approved' else 'skipped'}"
                        )
                    approval = {
                        "approved_at": stamp if decision == "approved" else None,
                        "approved_by": by if decision == "approved" else None,
                        "approved_how": how if decision == "approved" else None,
                        "held_by": None,  # decided again: execute looks at its source afresh
                    }
                    write_row(tx, batch_id, row, {**approval, "state": decision}, kind)
                    tx.execute(
                        'INSERT INTO approvals (batch_id, "row", kind, decision, "by", "at", how) '
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (batch_id, row, kind, decision, by, stamp, how),
                    )
                    tx.event(
                        decision,
                        batch_id,
                        row,
                        with_kind(
                            {"by": by, "how": how, "from": current, "to": decision, **approval},
                            kind,
                        ),
                    )
                    changed += decision == "approved"
        return changed

    def cancel_batch(self, batch_id: str, *, by: str) -> int:
        """Abandon a batch nothing of which was sent, in one transaction: every row becomes
        ``cancelled`` (a step each, as verify replays them), then one ``batch_cancelled``
        event; return how many rows. UsageError (exit 2, nothing written) once any row was
        submitted; BatchCancelled when it was cancelled before."""
        with self._write() as tx:
            require_batch(tx, self.path, batch_id)
            rows = list(tx.execute('SELECT "row", state, kind FROM "rows" WHERE batch_id = ? '
                                   "ORDER BY seq, kind", (batch_id,)))  # fmt: skip
            sent = list(dict.fromkeys(number for number, state, _ in rows if state in STARTED))
            if sent:
                shown = ", ".join(map(str, sent[:10])) + (", …" if len(sent) > 10 else "")
                raise UsageError(
                    f"batch {batch_id} cannot be cancelled: {len(sent)} row(s) were already "
                    f"submitted to OMI (row{'s' if len(sent) > 1 else ''} {shown}), and a "
                    f"transfer sent cannot be called back; see omi-batch status {batch_id}"
                )
            if rows and all(state == CANCELLED for _, state, _ in rows):
                raise _cancelled(batch_id, tx.one(_LAST_CANCEL, (batch_id,)))
            counts: dict[str, int] = {}
            for number, state, kind in rows:
                counts[state] = counts.get(state, 0) + 1
                step = {"batch_id": batch_id, "row": number, "event": "cancelled", "kind": kind,
                        "state": CANCELLED, "expect": CANCELLABLE, "reason": f"cancelled by {by}"}  # fmt: skip
                step_in(tx, self.path, step, [])
            numbers = len({number for number, _, _ in rows})  # rows of the file, not transfers
            tx.event("batch_cancelled", batch_id, None,
                     {"by": by, "at": now(), "rows": numbers, "states": counts})  # fmt: skip
        return numbers

    def refuse_cancelled(self, batch_id: str) -> None:
        """BatchCancelled (exit 2) when ``batch_id`` was cancelled: for every command that
        would preview, approve or send any of it."""
        if self.batch(batch_id)["states"].get(CANCELLED):
            found = self._query(_LAST_CANCEL, (batch_id,))
            raise _cancelled(batch_id, found[0] if found else None)

    def _transfers_in(
        self, tx: Tx, batch_id: str, items: Iterable[int | tuple[int, str]]
    ) -> list[tuple[int, str]]:
        """``(row, kind)`` pairs for approve: a row number stands for each transfer of it."""
        found: list[tuple[int, str]] = []
        for item in items:
            if isinstance(item, tuple):
                row, kind = int(item[0]), str(item[1])
                if kind not in KINDS:
                    raise UsageError(f"{kind!r} is not a kind of transfer")
                found.append((row, kind))
                continue
            kinds = [r[0] for r in tx.execute(
                'SELECT kind FROM "rows" WHERE batch_id = ? AND "row" = ? ORDER BY kind',
                (batch_id, int(item)),
            )]  # fmt: skip
            if not kinds:
                raise NotFound(f"no row {int(item)} in batch {batch_id}")
            found.extend((int(item), kind) for kind in kinds)
        return found

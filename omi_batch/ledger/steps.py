"""Row steps: a pipeline step (attempts stored, fields written, the state moved, its event) in
one transaction, or several sharing one commit; attempts on their own; row updates."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omi_batch.errors import IllegalTransition, LedgerError, NotFound
from omi_batch.ledger.fields import (
    ATTEMPT_FIELDS,
    STEP_KEYS,
    as_dict,
    check_fields,
    named,
    with_kind,
)
from omi_batch.ledger.hashing import now
from omi_batch.ledger.rows import locked_row, write_row
from omi_batch.ledger.store import Tx
from omi_batch.states import CONVERSATIONS, STATES, TRANSITIONS, base_phase, kind_of


def check_move(
    batch_id: str,
    row: int,
    current: str,
    state: str | None,
    expect: Iterable[str] | None,
    kind: str = CONVERSATIONS,
) -> None:
    """IllegalTransition unless the transfer is in one of ``expect`` (when given) and may go
    from ``current`` to ``state`` (None: no state change)."""
    if expect is not None and current not in set(expect):
        raise IllegalTransition(
            f"{named(row, kind)} of batch {batch_id} is {current}, not "
            f"{' or '.join(sorted(set(expect)))}"
        )
    if state is not None and state not in TRANSITIONS.get(current, set()):
        raise IllegalTransition(
            f"{named(row, kind)} of batch {batch_id} cannot go from {current} to {state}"
        )


def insert_attempt(
    tx: Tx, batch_id: str | None, row: int | None, phase: str | None, record: dict
) -> None:
    """One row of ``attempts`` and its audit event, inside ``tx``."""
    cursor = tx.execute(
        f'INSERT INTO attempts (batch_id, "row", phase, {", ".join(ATTEMPT_FIELDS)}) '
        f"VALUES (?, ?, ?, {', '.join('?' for _ in ATTEMPT_FIELDS)})",
        [batch_id, row, phase, *(record[name] for name in ATTEMPT_FIELDS)],
    )
    tx.event("attempt", batch_id, row, {"attempt_id": cursor.lastrowid, "phase": phase, **record})


def step_in(tx: Tx, path: Path, step: dict, records: list[dict]) -> None:
    """One step of :meth:`Steps.record_steps` (its attempt ``records`` too), inside ``tx``."""
    batch_id, row = step["batch_id"], int(step["row"])
    state, phase, reason = step.get("state"), step.get("phase"), step.get("reason")
    expect = step.get("expect")
    kind = step.get("kind") or CONVERSATIONS
    fields = {k: v for k, v in step.items() if k not in STEP_KEYS}
    current = locked_row(tx, path, batch_id, row, kind)["state"]
    check_move(batch_id, row, current, state, expect, kind)
    for record in records:
        insert_attempt(tx, batch_id, row, phase, record)
    columns = dict(fields)
    added = len(records) if base_phase(phase) == "execute" else 0  # counted in rows.attempts
    if state is not None:
        columns["state"] = state
    if columns or added:
        write_row(tx, batch_id, row, columns, kind, attempts=added)
    data: dict[str, Any] = dict(fields)
    if reason is not None:
        data["reason"] = reason
    if state is not None:
        data.update({"from": current, "to": state})
    else:
        data["state"] = current
    tx.event(step["event"], batch_id, row, with_kind(data, kind))


class Steps:
    """Row steps, attempts and updates (a part of :class:`Ledger`: needs ``_write``, ``_query``,
    ``path`` and :meth:`Rows.row`)."""

    def update_row(
        self, batch_id: str, row: int, *, event: str, kind: str = CONVERSATIONS, **fields: Any
    ) -> dict:
        """Write ``fields`` on a transfer without changing its state, with an audit event."""
        check_fields(fields)
        row = int(row)
        with self._write() as tx:
            current = locked_row(tx, self.path, batch_id, row, kind)["state"]
            if fields:
                write_row(tx, batch_id, row, fields, kind)
            tx.event(event, batch_id, row, with_kind({**fields, "state": current}, kind))
        return self.row(batch_id, row, kind)

    def record_attempt(
        self, batch_id: str | None, row: int | None, phase: str, attempt: Any
    ) -> None:
        """Store one HTTP attempt (the client's ``Attempt`` fields; its ``context`` is not
        kept) and its audit event; an ``execute`` attempt also counts in ``rows.attempts``.
        ``phase`` names the transfer's kind too (``tickets-execute``)."""
        values = as_dict(attempt)
        record = {name: values.get(name) for name in ATTEMPT_FIELDS}
        row = None if row is None else int(row)
        kind = kind_of(phase)
        with self._write() as tx:
            if batch_id is not None and row is not None:
                locked_row(tx, self.path, batch_id, row, kind)
            if base_phase(phase) == "execute" and batch_id is not None and row is not None:
                tx.execute(
                    'UPDATE "rows" SET attempts = attempts + 1, updated_at = ? '
                    'WHERE batch_id = ? AND "row" = ? AND kind = ?',
                    (now(), batch_id, row, kind),
                )
            insert_attempt(tx, batch_id, row, phase, record)

    def record_step(
        self,
        batch_id: str,
        row: int,
        *,
        event: str,
        state: str | None = None,
        expect: Iterable[str] | None = None,
        phase: str | None = None,
        attempts: Iterable[Any] = (),
        reason: str | None = None,
        kind: str = CONVERSATIONS,
        **fields: Any,
    ) -> None:
        """One pipeline step in ONE transaction (added for issue 5, by the pipeline's owner):
        store ``attempts`` (HTTP attempts of ``phase``, as :meth:`record_attempt` does), then
        write ``fields`` and, when ``state`` is given, move the row there (checked like
        ``TRANSITIONS`` and ``expect``), with the audit event ``event``. ``reason`` goes
        into that event only (a why with no row column). ``kind``: which transfer of the row.
        IllegalTransition, and nothing written (not even the attempts), when the move is not
        allowed."""
        step = dict(fields, batch_id=batch_id, row=row, event=event, state=state, expect=expect,
                    phase=phase, attempts=attempts, reason=reason, kind=kind)  # fmt: skip
        error = self.record_steps([step])[0]
        if error is not None:
            raise error

    def record_steps(self, steps: list[Mapping[str, Any]]) -> list[Exception | None]:
        """Several :meth:`record_step` calls (each a dict of its arguments) in ONE transaction:
        a group commit, so threads that wrote at the same moment share one fsync. Each step
        runs in its own savepoint: a refused one (IllegalTransition, NotFound, LedgerError) is
        rolled back alone and returned in its place; the others are kept. Returns, per step,
        None or the error it raised."""
        prepared = self._prepare_steps(steps)
        if len(prepared) == 1 and not isinstance(prepared[0], Exception):
            # One step (the usual group): its transaction is its savepoint, two statements
            # fewer per commit; refused, nothing of it is written, as with a savepoint.
            try:
                with self._write() as tx:
                    step_in(tx, self.path, *prepared[0])
            except (LedgerError, NotFound) as error:
                return [error]
            return [None]
        with self._write() as tx:
            results = self._steps_in(tx, prepared)
            tx.reread_head(any(r is not None for r in results))
        return results

    def _prepare_steps(
        self, steps: list[Mapping[str, Any]]
    ) -> list[tuple[dict, list[dict]] | Exception]:
        """Each step checked and split into (step, attempt records), or the error it raised."""
        prepared: list[tuple[dict, list[dict]] | Exception] = []
        for step in steps:
            step = dict(step)
            try:
                attempts = step.pop("attempts", ()) or ()
                fields = {k: v for k, v in step.items() if k not in STEP_KEYS}
                check_fields(fields)
                if step.get("state") is not None and step["state"] not in STATES:
                    raise IllegalTransition(f"{step['state']!r} is not a row state")
                records = [
                    {name: as_dict(a).get(name) for name in ATTEMPT_FIELDS} for a in attempts
                ]
                prepared.append((step, records))
            except (LedgerError, TypeError) as error:
                prepared.append(
                    error if isinstance(error, LedgerError) else LedgerError(str(error))
                )
        return prepared

    def _steps_in(
        self, tx: Tx, prepared: list[tuple[dict, list[dict]] | Exception]
    ) -> list[Exception | None]:
        """Inside ``tx``: each prepared step in its own savepoint; None or its error."""
        results: list[Exception | None] = []
        for item in prepared:
            if isinstance(item, Exception):
                results.append(item)
                continue
            tx.execute("SAVEPOINT step")
            try:
                step_in(tx, self.path, *item)
            except (LedgerError, NotFound, sqlite3.Error) as error:
                tx.execute("ROLLBACK TO step")
                tx.forget_tail()
                if isinstance(error, sqlite3.Error):
                    error = LedgerError(f"ledger {self.path}: {error}")
                results.append(error)
            else:
                results.append(None)
            finally:
                tx.execute("RELEASE step")
        return results

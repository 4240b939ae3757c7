"""Batches, rows, attempts and approvals: the row state machine's writes and reads."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

from omi_batch.errors import (
    BatchCancelled,
    IllegalTransition,
    LedgerError,
    NotFound,
    UsageError,
)
from omi_batch.ledger.chain import canonical_json
from omi_batch.ledger.schema import decode_batch, decode_row, encode_field
from omi_batch.ledger.store import Tx, new_batch_id, now
from omi_batch.states import (
    CANCELLABLE,
    CANCELLED,
    CONVERSATIONS,
    KINDS,
    STARTED,
    STATES,
    TRANSITIONS,
    base_phase,
    kind_of,
    kinds_of,
)

# Row columns a caller may set through record_step / update_row (never the identity, the state
# or updated_at, which the ledger writes itself).
ROW_FIELDS = frozenset(
    {
        "source_email",
        "target_email",
        "requested_target",
        "via",
        "conv_ids",
        "replace_existing_members",
        "note",
        "conversations_previewed",
        "preview_request_id",
        "preview_error",
        "previewed_at",
        "approved_at",
        "approved_by",
        "approved_how",
        "request_id",
        "submitted_at",
        "completed_at",
        "updated_records",
        "callback_status",
        "error",
        "attempts",
        "needs_review",
        "held_by",
        "verified_by",
    }
)
_ATTEMPT_FIELDS = (
    "endpoint",
    "number",
    "started_at",
    "elapsed_ms",
    "http_status",
    "vendor_code",
    "error",
    "request_id",
    "wait_s",
    "message",
    "outcome_unknown",
)
# The keys of a record_steps step that are not row fields.
_STEP_KEYS = frozenset({"batch_id", "row", "kind", "event", "state", "expect", "phase", "reason"})


def _as_dict(item: Any) -> dict:
    """A mapping or dataclass instance as a plain dict (rows may be roster ``Transfer``s)."""
    if isinstance(item, Mapping):
        return dict(item)
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
    raise TypeError(f"expected a dict or a dataclass, got {type(item).__name__}")


def named(row: int, kind: str = CONVERSATIONS) -> str:
    """How a message names a transfer: ``row 5``, or ``row 5 (tickets)`` for a ticket one."""
    return f"row {row}" if kind == CONVERSATIONS else f"row {row} ({kind})"


def with_kind(data: dict, kind: str) -> dict:
    """An event's data, naming the transfer's kind when it is not the conversation one (so
    the events of every ledger written before tickets read the same)."""
    return data if kind == CONVERSATIONS else {"kind": kind, **data}


def _check_move(
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


def _insert_attempt(
    tx: Tx, batch_id: str | None, row: int | None, phase: str | None, record: dict
) -> None:
    """One row of ``attempts`` and its audit event, inside ``tx``."""
    cursor = tx.execute(
        f'INSERT INTO attempts (batch_id, "row", phase, {", ".join(_ATTEMPT_FIELDS)}) '
        f"VALUES (?, ?, ?, {', '.join('?' for _ in _ATTEMPT_FIELDS)})",
        [batch_id, row, phase, *(record[name] for name in _ATTEMPT_FIELDS)],
    )
    tx.event("attempt", batch_id, row, {"attempt_id": cursor.lastrowid, "phase": phase, **record})


def _oldest(found: dict[str, str], batch_id: str, stamp: str | None) -> None:
    """Keep in ``found[batch_id]`` the oldest of the stamps seen (ISO text sorts as time)."""
    if stamp and (batch_id not in found or stamp < found[batch_id]):
        found[batch_id] = stamp


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


def _insert_row(
    tx: Tx, batch_id: str, row: int, kind: str, seq: int, item: Mapping[str, Any], stamp: str
) -> None:
    """One planned transfer of ``row`` (its ``kind``), inside ``tx``."""
    tx.execute(
        'INSERT INTO "rows" (batch_id, "row", kind, seq, source_email, target_email, '
        "requested_target, via, conv_ids, replace_existing_members, note, state, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'planned', ?)",
        (
            batch_id,
            row,
            kind,
            seq,
            item["source_email"],
            item["target_email"],
            item.get("requested_target") or item["target_email"],
            encode_field("via", item.get("via")),
            encode_field("conv_ids", item.get("conv_ids")),
            encode_field("replace_existing_members", item.get("replace_existing_members")),
            item.get("note") or "",
            stamp,
        ),
    )


class Rows:
    """Batches, rows, attempts and approvals (a part of :class:`Ledger`)."""

    def create_batch(
        self,
        *,
        source_file: str,
        source_sha256: str,
        created_by: str,
        base_url: str | None,
        options: Mapping[str, Any],
        input_rows: int,
        warnings: list[Any],
        rows: list[Any],
    ) -> str:
        """Create a batch and its rows (state ``planned``, ``seq`` = position) in one
        transaction; return the new batch id. ``rows`` are Transfer-like dicts or dataclasses;
        a row is one transfer per kind its ``scope`` names (none: conversations)."""
        plan = [_as_dict(item) for item in rows]
        warning_list = [
            {k: w.get(k) for k in ("row", "code", "message")} for w in map(_as_dict, warnings)
        ]
        options_text = canonical_json(dict(options))
        stamp = now()
        with self._write() as tx:
            batch_id = new_batch_id()
            while tx.one("SELECT 1 AS x FROM batches WHERE id = ?", (batch_id,)):
                batch_id = new_batch_id()
            tx.execute(
                "INSERT INTO batches (id, created_at, created_by, source_file, source_sha256, "
                "base_url, options, row_count, input_rows, warnings) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    batch_id,
                    stamp,
                    created_by,
                    str(source_file),
                    source_sha256,
                    base_url,
                    options_text,
                    len(plan),
                    int(input_rows),
                    canonical_json(warning_list),
                ),
            )
            seen: set[int] = set()
            planned = []  # the rows as the event carries them, so verify can rebuild them
            for seq, item in enumerate(plan):
                row = int(item["row"])
                if row in seen:
                    raise UsageError(f"row {row} appears twice in the plan")
                seen.add(row)
                scope = item.get("scope") or CONVERSATIONS
                for kind in kinds_of(scope):
                    _insert_row(tx, batch_id, row, kind, seq, item, stamp)
                planned.append({
                    "row": row, "source_email": item["source_email"],
                    "target_email": item["target_email"],
                    "requested_target": item.get("requested_target") or item["target_email"],
                    "via": list(item.get("via") or ()), "conv_ids": list(item.get("conv_ids") or ()),
                    "replace_existing_members": bool(item.get("replace_existing_members")),
                    "note": item.get("note") or "",
                    **({} if scope == CONVERSATIONS else {"scope": scope}),
                })  # fmt: skip
            tx.event(
                "batch_created",
                batch_id,
                None,
                {
                    "source_file": str(source_file),
                    "source_sha256": source_sha256,
                    "created_by": created_by,
                    "base_url": base_url,
                    "options": json.loads(options_text),
                    "input_rows": int(input_rows),
                    "row_count": len(plan),
                    "warnings": len(warning_list),
                    "plan_sha256": hashlib.sha256(canonical_json(plan).encode("utf-8")).hexdigest(),
                    "created_at": stamp,
                    "rows": planned,
                },
            )
        return batch_id

    def batches(self) -> list[dict]:
        """Every batch, newest first, each with ``states`` ({state: row count}) and
        ``previewed_at`` (its oldest row preview, None before any)."""
        found = [
            decode_batch(b)
            for b in self._query("SELECT * FROM batches ORDER BY created_at DESC, rowid DESC")
        ]
        counts: dict[str, dict[str, int]] = {}
        previewed: dict[str, str] = {}
        for item in self._query(
            'SELECT batch_id, state, count(*) AS n, min(previewed_at) AS previewed_at FROM "rows" '
            "GROUP BY batch_id, state"
        ):
            counts.setdefault(item["batch_id"], {})[item["state"]] = item["n"]
            _oldest(previewed, item["batch_id"], item["previewed_at"])
        for batch in found:
            batch["states"] = counts.get(batch["id"], {})
            batch["previewed_at"] = previewed.get(batch["id"])
        return found

    def batch(self, batch_id: str) -> dict:
        """One batch (with ``states`` and ``previewed_at``, as :meth:`batches`); NotFound when
        there is no such batch."""
        found = self._query("SELECT * FROM batches WHERE id = ?", (batch_id,))
        if not found:
            raise NotFound(f"no batch {batch_id} in {self.path}")
        batch = decode_batch(found[0])
        batch["states"] = {}
        previewed: dict[str, str] = {}
        for item in self._query(
            'SELECT state, count(*) AS n, min(previewed_at) AS previewed_at FROM "rows" '
            "WHERE batch_id = ? GROUP BY state",
            (batch_id,),
        ):
            batch["states"][item["state"]] = item["n"]
            _oldest(previewed, batch_id, item["previewed_at"])
        batch["previewed_at"] = previewed.get(batch_id)
        return batch

    def rows(
        self, batch_id: str, states: Iterable[str] | None = None, kind: str | None = None
    ) -> list[dict]:
        """The batch's transfers in run order (``seq``; a row's conversations before its
        tickets), optionally only those in ``states``, or of ``kind``."""
        self.batch(batch_id)
        sql = 'SELECT * FROM "rows" WHERE batch_id = ?'
        params: list[Any] = [batch_id]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        if states is not None:
            wanted = list(states)
            if not wanted:
                return []
            sql += f" AND state IN ({', '.join('?' for _ in wanted)})"
            params += wanted
        return [decode_row(r) for r in self._query(sql + " ORDER BY seq, kind", params)]

    def row(self, batch_id: str, row: int, kind: str = CONVERSATIONS) -> dict:
        """One transfer (a row's ``kind`` one); NotFound when the batch or it does not exist."""
        found = self._query(
            'SELECT * FROM "rows" WHERE batch_id = ? AND "row" = ? AND kind = ?',
            (batch_id, int(row), kind),
        )
        if not found:
            self.batch(batch_id)
            raise NotFound(f"no {named(row, kind)} in batch {batch_id}")
        return decode_row(found[0])

    @staticmethod
    def _check_fields(fields: Mapping[str, Any]) -> None:
        unknown = sorted(set(fields) - ROW_FIELDS)
        if unknown:
            raise LedgerError(f"not a row field the ledger lets callers set: {', '.join(unknown)}")

    def _locked_row(self, tx: Tx, batch_id: str, row: int, kind: str = CONVERSATIONS) -> dict:
        found = tx.one(
            'SELECT * FROM "rows" WHERE batch_id = ? AND "row" = ? AND kind = ?',
            (batch_id, row, kind),
        )
        if found is None:
            if tx.one("SELECT 1 AS x FROM batches WHERE id = ?", (batch_id,)) is None:
                raise NotFound(f"no batch {batch_id} in {self.path}")
            raise NotFound(f"no {named(row, kind)} in batch {batch_id}")
        return found

    @staticmethod
    def _write_row(
        tx: Tx, batch_id: str, row: int, fields: Mapping[str, Any], kind: str = CONVERSATIONS
    ) -> None:
        columns = dict(fields)
        columns["updated_at"] = now()
        assignments = ", ".join(f'"{name}" = ?' for name in columns)
        tx.execute(
            f'UPDATE "rows" SET {assignments} WHERE batch_id = ? AND "row" = ? AND kind = ?',
            [encode_field(name, value) for name, value in columns.items()] + [batch_id, row, kind],
        )

    def update_row(
        self, batch_id: str, row: int, *, event: str, kind: str = CONVERSATIONS, **fields: Any
    ) -> dict:
        """Write ``fields`` on a transfer without changing its state, with an audit event."""
        self._check_fields(fields)
        row = int(row)
        with self._write() as tx:
            current = self._locked_row(tx, batch_id, row, kind)["state"]
            if fields:
                self._write_row(tx, batch_id, row, fields, kind)
            tx.event(event, batch_id, row, with_kind({**fields, "state": current}, kind))
        return self.row(batch_id, row, kind)

    def record_attempt(
        self, batch_id: str | None, row: int | None, phase: str, attempt: Any
    ) -> None:
        """Store one HTTP attempt (the client's ``Attempt`` fields; its ``context`` is not
        kept) and its audit event; an ``execute`` attempt also counts in ``rows.attempts``.
        ``phase`` names the transfer's kind too (``tickets-execute``)."""
        values = _as_dict(attempt)
        record = {name: values.get(name) for name in _ATTEMPT_FIELDS}
        row = None if row is None else int(row)
        kind = kind_of(phase)
        with self._write() as tx:
            if batch_id is not None and row is not None:
                self._locked_row(tx, batch_id, row, kind)
            if base_phase(phase) == "execute" and batch_id is not None and row is not None:
                tx.execute(
                    'UPDATE "rows" SET attempts = attempts + 1, updated_at = ? '
                    'WHERE batch_id = ? AND "row" = ? AND kind = ?',
                    (now(), batch_id, row, kind),
                )
            _insert_attempt(tx, batch_id, row, phase, record)

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
                    self._step_in(tx, *prepared[0])
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
                fields = {k: v for k, v in step.items() if k not in _STEP_KEYS}
                self._check_fields(fields)
                if step.get("state") is not None and step["state"] not in STATES:
                    raise IllegalTransition(f"{step['state']!r} is not a row state")
                records = [
                    {name: _as_dict(a).get(name) for name in _ATTEMPT_FIELDS} for a in attempts
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
                self._step_in(tx, *item)
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

    def _step_in(self, tx: Tx, step: dict, records: list[dict]) -> None:
        """One step of :meth:`record_steps`, inside its transaction."""
        batch_id, row = step["batch_id"], int(step["row"])
        state, phase, reason = step.get("state"), step.get("phase"), step.get("reason")
        expect = step.get("expect")
        kind = step.get("kind") or CONVERSATIONS
        fields = {k: v for k, v in step.items() if k not in _STEP_KEYS}
        current = self._locked_row(tx, batch_id, row, kind)["state"]
        _check_move(batch_id, row, current, state, expect, kind)
        for record in records:
            _insert_attempt(tx, batch_id, row, phase, record)
        columns = dict(fields)
        if base_phase(phase) == "execute" and records:
            tx.execute(
                'UPDATE "rows" SET attempts = attempts + ? '
                'WHERE batch_id = ? AND "row" = ? AND kind = ?',
                (len(records), batch_id, row, kind),
            )
        if state is not None:
            columns["state"] = state
        if columns:
            self._write_row(tx, batch_id, row, columns, kind)
        data: dict[str, Any] = dict(fields)
        if reason is not None:
            data["reason"] = reason
        if state is not None:
            data.update({"from": current, "to": state})
        else:
            data["state"] = current
        tx.event(step["event"], batch_id, row, with_kind(data, kind))

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
            if tx.one("SELECT 1 AS x FROM batches WHERE id = ?", (batch_id,)) is None:
                raise NotFound(f"no batch {batch_id} in {self.path}")
            to_approve = self._transfers_in(tx, batch_id, approve)
            to_skip = self._transfers_in(tx, batch_id, skip)
            both = sorted(set(to_approve) & set(to_skip))
            if both:
                raise UsageError("rows both approved and skipped: "
                                 f"{', '.join(named(*t)[4:] for t in both)}")  # fmt: skip
            stamp = now()
            for decision, wanted in (("approved", to_approve), ("skipped", to_skip)):
                for row, kind in dict.fromkeys(wanted):
                    current = self._locked_row(tx, batch_id, row, kind)["state"]
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
                    self._write_row(tx, batch_id, row, {**approval, "state": decision}, kind)
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

    # ------------------------------------------------------------------ cancel

    def cancel_batch(self, batch_id: str, *, by: str) -> int:
        """Abandon a batch nothing of which was sent, in one transaction: every row becomes
        ``cancelled`` (a step each, as verify replays them), then one ``batch_cancelled``
        event; return how many rows. UsageError (exit 2, nothing written) once any row was
        submitted; BatchCancelled when it was cancelled before."""
        with self._write() as tx:
            if tx.one("SELECT 1 AS x FROM batches WHERE id = ?", (batch_id,)) is None:
                raise NotFound(f"no batch {batch_id} in {self.path}")
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
                self._step_in(tx, step, [])
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

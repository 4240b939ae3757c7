"""The hash-chained audit log read back: its events, ``verify`` and ``export`` (the hashing
and the ``<ledger>.head`` file are ``hashing``'s).

Each event's ``hash`` is ``sha256(prev_hash + canonical JSON of {id, at, kind, batch_id, row,
data})``; the last one is also kept in ``<ledger>.head`` so that cutting the tail of the chain is
noticed too. ``verify()`` runs SQLite's integrity check, recomputes the whole chain, then
rebuilds every row from the events (``replay``) and names each row the table disagrees with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from omi_batch.errors import LedgerDamaged, LedgerError
from omi_batch.ledger.fields import ROW_FIELDS
from omi_batch.ledger.hashing import GENESIS, event_text
from omi_batch.ledger.replay import replay
from omi_batch.ledger.schema import decode_batch, decode_callback, decode_row
from omi_batch.ledger.store import ledger_error


@dataclass(frozen=True)
class VerifyResult:
    """What ``verify()`` found. ``problem`` is a warning when ``ok`` is true."""

    ok: bool
    events: int
    head: str | None
    first_bad: int | None = None
    problem: str = ""
    rows: tuple[str, ...] = ()  # rows (and batches) whose table values differ from the events
    damaged: bool = False  # SQLite's integrity check failed: ``problem`` says what it found


class Audit:
    """The audit log's reads, ``verify`` and ``export`` (a part of :class:`Ledger`)."""

    def log(
        self, kind: str, *, batch_id: str | None = None, row: int | None = None, **data: Any
    ) -> int:
        """Append an audit event on its own; return its id."""
        with self._write() as tx:
            return tx.event(kind, batch_id, row, data)

    def events(self, batch_id: str | None = None) -> list[dict]:
        """The audit events (of one batch, if given) in order, ``data`` decoded."""
        if batch_id is None:
            found = self._query("SELECT * FROM events ORDER BY id")
        else:
            found = self._query("SELECT * FROM events WHERE batch_id = ? ORDER BY id", (batch_id,))
        for item in found:
            item["data"] = json.loads(item["data"])
        return found

    def head(self) -> str | None:
        """The last event's hash (None for an empty log)."""
        found = self._query("SELECT hash FROM events ORDER BY id DESC LIMIT 1")
        return found[0]["hash"] if found else None

    def verify(self) -> VerifyResult:
        """Run SQLite's integrity check; recompute the chain in id order, naming the first
        event edited, deleted, inserted or reordered, and compare the end of the chain with
        ``<ledger>.head``; then replay the events and name every row whose table values differ
        from them (one edited with sqlite3, or by flipped bytes)."""
        sidecar = self.head_file.read()  # read before the snapshot: it never runs ahead of it
        conn = self._connection()
        try:
            conn.execute("BEGIN")
            try:
                damage = [r[0] for r in conn.execute("PRAGMA integrity_check(5)")]
                if damage != ["ok"]:
                    return VerifyResult(False, 0, None, None, _damage_text(damage), damaged=True)
                result = self._verify_chain(conn, sidecar)
                if not result.ok:
                    return result
                found = replay(conn, ROW_FIELDS)
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.DatabaseError as error:
            if isinstance(error, sqlite3.OperationalError) and "malformed" not in str(error):
                raise LedgerError(f"ledger {self.path}: {error}") from None
            return VerifyResult(False, 0, None, None, f"SQLite: {error}", damaged=True)
        warning = "; ".join(w for w in (result.problem, *found.warnings) if w)
        if found.problems:
            more = found.differing - len(found.problems)
            rows = tuple(found.problems) + ((f"and {more} more rows",) if more > 0 else ())
            return dataclasses.replace(result, ok=False, rows=rows, problem=warning)
        return dataclasses.replace(result, problem=warning)

    def _verify_chain(
        self, conn: sqlite3.Connection, sidecar: tuple[int, str] | None
    ) -> VerifyResult:
        count = 0
        prev_id = 0
        prev_hash = GENESIS
        prev_prev_hash = GENESIS
        sha256 = hashlib.sha256
        cursor = conn.execute(
            'SELECT id, "at", kind, batch_id, "row", data, prev_hash, hash FROM events ORDER BY id'
        )
        for event_id, at, kind, batch_id, row, data, stored_prev, stored_hash in cursor:
            if event_id <= prev_id:  # only possible for an id below 1
                return VerifyResult(
                    False, 0, None, event_id, f"event {event_id} was inserted (ids start at 1)"
                )
            if event_id != prev_id + 1:
                missing = (
                    f"event {prev_id + 1} was deleted"
                    if event_id == prev_id + 2
                    else f"events {prev_id + 1} to {event_id - 1} were deleted"
                )
                return VerifyResult(
                    False,
                    count,
                    prev_hash if count else None,
                    prev_id + 1,
                    f"{missing} (the chain jumps from {prev_id} to {event_id})",
                )
            if stored_prev != prev_hash:
                bad, problem = self._diagnose_link(conn, event_id, stored_prev, prev_prev_hash)
                return VerifyResult(False, count, prev_hash if count else None, bad, problem)
            try:
                text = event_text(event_id, at, kind, batch_id, row, data)
            except (TypeError, ValueError):
                text = ""
            if sha256((stored_prev + text).encode("utf-8")).hexdigest() != stored_hash:
                return VerifyResult(
                    False,
                    count,
                    prev_hash if count else None,
                    event_id,
                    f"event {event_id} was edited (its hash does not match its content)",
                )
            count += 1
            prev_id, prev_prev_hash, prev_hash = event_id, prev_hash, stored_hash
        head = prev_hash if count else None
        if sidecar is None:
            if count:
                return VerifyResult(
                    True,
                    count,
                    head,
                    None,
                    f"no head file {self.head_path.name}: a cut at the end of the chain "
                    "cannot be detected",
                )
            return VerifyResult(True, 0, None)
        side_id, side_hash = sidecar
        if side_id < 0:
            return VerifyResult(
                False, count, head, None, f"the head file {self.head_path.name} is unreadable"
            )
        if side_id > prev_id:
            return VerifyResult(
                False,
                count,
                head,
                prev_id + 1,
                f"the chain was cut after event {prev_id} (the head file names event {side_id})",
            )
        if side_id:
            stored = conn.execute("SELECT hash FROM events WHERE id = ?", (side_id,)).fetchone()
            if stored is None or stored[0] != side_hash:
                return VerifyResult(
                    False,
                    count,
                    head,
                    side_id,
                    f"event {side_id} does not match the head file: the chain was rewritten",
                )
        return VerifyResult(True, count, head)

    @staticmethod
    def _diagnose_link(
        conn: sqlite3.Connection, event_id: int, stored_prev: str, prev_prev_hash: str
    ) -> tuple[int, str]:
        """Why event ``event_id`` does not follow the one before it."""
        later = conn.execute(
            "SELECT id FROM events WHERE hash = ? AND id > ? ORDER BY id LIMIT 1",
            (stored_prev, event_id),
        ).fetchone()
        if later is not None:
            return event_id, f"event {event_id} is out of order (it follows event {later[0]})"
        if event_id > 1 and stored_prev == prev_prev_hash:
            return (
                event_id - 1,
                f"event {event_id - 1} was inserted (event {event_id} follows the one before it)",
            )
        return (
            event_id,
            f"event {event_id} does not follow event {event_id - 1}: an event before it was "
            "edited, deleted or inserted",
        )

    # ----------------------------------------------------------------- export

    def export(self, batch_id: str) -> Iterator[dict]:
        """The batch's whole audit trail as JSON-able dicts with a ``type``: batch, row,
        approval, attempt, callback, event. NotFound at once for an unknown batch; the items
        come from one consistent snapshot."""
        self.batch(batch_id)
        return self._export(batch_id)

    def _export(self, batch_id: str) -> Iterator[dict]:
        """The items of :meth:`export`; LedgerDamaged (exit 1) before the first one when
        SQLite's quick check fails, or at the first page that cannot be read."""
        conn = self._open()
        try:
            try:
                conn.execute("BEGIN")
                damage = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
                if damage != ["ok"]:
                    raise LedgerDamaged(
                        f"the ledger {self.path} is damaged or tampered: {_damage_text(damage)}"
                    )
                yield from self._export_items(conn, batch_id)
            except sqlite3.Error as error:
                raise ledger_error(self.path, error) from None
        finally:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            conn.close()

    @staticmethod
    def _export_items(conn: sqlite3.Connection, batch_id: str) -> Iterator[dict]:
        """The items, read through sqlite-utils (``rows_where``) inside the caller's snapshot."""
        import sqlite_utils

        db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
        where, by_batch = "batch_id = ?", [batch_id]
        for batch in db["batches"].rows_where("id = ?", by_batch):
            yield {"type": "batch", **decode_batch(batch)}
        for row in db["rows"].rows_where(where, by_batch, order_by="seq"):
            yield {"type": "row", **decode_row(row)}
        for table, kind in (("approvals", "approval"), ("attempts", "attempt")):
            for item in db[table].rows_where(where, by_batch, order_by="id"):
                yield {"type": kind, **item}
        for item in db["callbacks"].rows_where(where, by_batch, order_by="id"):
            yield {"type": "callback", **decode_callback(item)}
        for item in db["events"].rows_where(where, by_batch, order_by="id"):
            item["data"] = json.loads(item["data"])
            yield {"type": "event", **item}


def _damage_text(found: list[str]) -> str:
    """SQLite's integrity check findings as one line."""
    first = "; ".join(str(item) for item in found[:3])
    return f"SQLite's integrity check found: {first[:300]}"

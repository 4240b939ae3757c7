"""Batches and rows: creating a batch with its planned transfers, and reading them back; the
row SQL the other row parts share (``locked_row``, ``write_row``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omi_batch.errors import NotFound, UsageError
from omi_batch.ledger.fields import as_dict, named
from omi_batch.ledger.hashing import canonical_json, now
from omi_batch.ledger.schema import decode_batch, decode_row, encode_field
from omi_batch.ledger.store import Tx, new_batch_id
from omi_batch.states import CONVERSATIONS, kinds_of


def require_batch(tx: Tx, path: Path, batch_id: str) -> None:
    """NotFound (inside ``tx``) when the ledger at ``path`` has no batch ``batch_id``."""
    if tx.one("SELECT 1 AS x FROM batches WHERE id = ?", (batch_id,)) is None:
        raise NotFound(f"no batch {batch_id} in {path}")


def locked_row(tx: Tx, path: Path, batch_id: str, row: int, kind: str = CONVERSATIONS) -> dict:
    """The transfer as stored, read inside the write transaction ``tx`` (so no other writer
    can move it before ``tx`` ends); NotFound naming the batch or the row when it is missing."""
    found = tx.one(
        'SELECT * FROM "rows" WHERE batch_id = ? AND "row" = ? AND kind = ?',
        (batch_id, row, kind),
    )
    if found is None:
        require_batch(tx, path, batch_id)
        raise NotFound(f"no {named(row, kind)} in batch {batch_id}")
    return found


def write_row(
    tx: Tx,
    batch_id: str,
    row: int,
    fields: Mapping[str, Any],
    kind: str = CONVERSATIONS,
    *,
    attempts: int = 0,
) -> None:
    """Set ``fields`` (and ``updated_at``) on one transfer, inside ``tx``; ``attempts``: that
    many more execute attempts counted in the same statement (alone, it stamps no time)."""
    columns = dict(fields)
    if columns:
        columns["updated_at"] = now()
    assignments = [f'"{name}" = ?' for name in columns]
    values = [encode_field(name, value) for name, value in columns.items()]
    if attempts:
        assignments.append("attempts = attempts + ?")
        values.append(attempts)
    tx.execute(
        f'UPDATE "rows" SET {", ".join(assignments)} WHERE batch_id = ? AND "row" = ? AND kind = ?',
        values + [batch_id, row, kind],
    )


def _oldest(found: dict[str, str], batch_id: str, stamp: str | None) -> None:
    """Keep in ``found[batch_id]`` the oldest of the stamps seen (ISO text sorts as time)."""
    if stamp and (batch_id not in found or stamp < found[batch_id]):
        found[batch_id] = stamp


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
    """Creating and reading batches and rows (a part of :class:`Ledger`: needs ``_write``,
    ``_query`` and ``path`` from its store)."""

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
        plan = [as_dict(item) for item in rows]
        warning_list = [
            {k: w.get(k) for k in ("row", "code", "message")} for w in map(as_dict, warnings)
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

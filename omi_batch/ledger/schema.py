"""The ledger's schema: one function per version, applied in order under ``PRAGMA user_version``,
so a ledger written by an older omi-batch opens in a newer one (as sqlite-utils keeps
``migrations.py``). The migrations speak sqlite-utils (``table.create``, ``add_column``,
``create_index``), imported only when one is due: opening an up-to-date ledger loads none of it."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from omi_batch.errors import LedgerError
from omi_batch.ledger.fields import with_kind
from omi_batch.ledger.hashing import append_event, last_event
from omi_batch.states import APPROVED, HELD, kind_of

if TYPE_CHECKING:
    from sqlite_utils import Database


def _run(conn: sqlite3.Connection, script: str) -> None:
    """Each statement of ``script`` inside the open transaction (``executescript`` would
    commit it first)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _migration_1_tables(db: Database) -> None:
    """The tables of the first ledger."""
    db["batches"].create(
        {"id": str, "created_at": str, "created_by": str, "source_file": str,
         "source_sha256": str, "base_url": str, "options": str, "row_count": int,
         "input_rows": int, "warnings": str},
        pk="id", not_null={"created_at", "row_count"},
    )  # fmt: skip
    db["rows"].create(
        {"batch_id": str, "row": int, "seq": int, "source_email": str, "target_email": str,
         "requested_target": str, "via": str, "conv_ids": str, "replace_existing_members": int,
         "note": str, "state": str, "conversations_previewed": int, "preview_request_id": str,
         "preview_error": str, "previewed_at": str, "approved_at": str, "approved_by": str,
         "approved_how": str, "request_id": str, "submitted_at": str, "completed_at": str,
         "updated_records": int, "callback_status": str, "error": str, "attempts": int,
         "verified_by": str, "updated_at": str},
        pk=("batch_id", "row"),
        not_null={"batch_id", "row", "seq", "source_email", "target_email",
                  "replace_existing_members", "state", "attempts"},
        defaults={"replace_existing_members": 0, "attempts": 0},
        foreign_keys=[("batch_id", "batches", "id")],
    )  # fmt: skip
    db["attempts"].create(
        {"id": int, "batch_id": str, "row": int, "phase": str, "endpoint": str, "number": int,
         "started_at": str, "elapsed_ms": float, "http_status": int, "vendor_code": str,
         "error": str, "request_id": str, "wait_s": float},
        pk="id",
    )  # fmt: skip
    db["callbacks"].create(
        {"id": int, "received_at": str, "batch_id": str, "row": int, "phase": str,
         "request_id": str, "status": str, "updated_records": int, "raw_body": str,
         "headers": str, "remote": str, "verdict": str, "applied": int},
        pk="id", not_null={"received_at", "verdict", "applied"}, defaults={"applied": 0},
    )  # fmt: skip
    db["approvals"].create(
        {"id": int, "batch_id": str, "row": int, "decision": str, "by": str, "at": str,
         "how": str},
        pk="id", not_null={"batch_id", "row", "decision", "at"},
    )  # fmt: skip
    db["events"].create(
        {"id": int, "at": str, "kind": str, "batch_id": str, "row": int, "data": str,
         "prev_hash": str, "hash": str},
        pk="id", not_null={"at", "kind", "data", "prev_hash", "hash"},
    )  # fmt: skip


def _migration_2_review_and_indexes(db: Database) -> None:
    """``rows.needs_review`` (a conflicting callback flags the row), the attempt's message and
    whether its outcome is unknown (sent, no answer), and the lookup indexes."""
    db["rows"].add_column("needs_review", int, not_null_default=0)
    db["attempts"].add_column("message", str)
    db["attempts"].add_column("outcome_unknown", int)
    for table, columns, name in (
        ("rows", ["batch_id", "state"], "rows_by_state"),
        ("attempts", ["batch_id", "row"], "attempts_by_row"),
        ("callbacks", ["batch_id", "row", "phase"], "callbacks_by_row"),
        ("approvals", ["batch_id", "row"], "approvals_by_row"),
        ("events", ["batch_id"], "events_by_batch"),
    ):
        db[table].create_index(columns, index_name=name)


def _migration_3_receipts_and_refusals(db: Database) -> None:
    """``callbacks.receipt`` (one delivery stored once, whatever the spool replays) and the
    ``refusals`` counts per minute and reason (issue 12)."""
    db["callbacks"].add_column("receipt", str)
    # A partial index (only rows with a receipt): sqlite-utils' create_index has no WHERE.
    db.execute(
        "CREATE UNIQUE INDEX callbacks_by_receipt ON callbacks (receipt) WHERE receipt IS NOT NULL"
    )
    db["attempts"].create_index(["batch_id", "request_id"], index_name="attempts_by_request")
    db["refusals"].create(
        {"minute": str, "reason": str, "count": int},
        pk=("minute", "reason"), not_null={"minute", "reason", "count"},
    )  # fmt: skip


def _migration_4_transfer_kinds(db: Database) -> None:
    """``rows.kind`` in the rows' key: a row of the input file is one transfer per kind it
    moves (conversations, tickets), each with its own state, counts and request id (issue 15).
    SQLite cannot change a primary key in place, so the table is rebuilt; every existing row
    is a conversation transfer. ``approvals.kind`` says which transfer a decision was for.
    Plain SQL on the migration's connection: sqlite-utils' ``transform`` would commit the
    migration's transaction part-way."""
    conn = db.conn
    columns = [c[1] for c in conn.execute('PRAGMA table_info("rows")')]
    _run(
        conn,
        """
        CREATE TABLE rows_new (
            batch_id TEXT NOT NULL REFERENCES batches(id),
            "row" INTEGER NOT NULL,
            kind TEXT NOT NULL DEFAULT 'conversations',
            seq INTEGER NOT NULL,
            source_email TEXT NOT NULL,
            target_email TEXT NOT NULL,
            requested_target TEXT,
            via TEXT,
            conv_ids TEXT,
            replace_existing_members INTEGER NOT NULL DEFAULT 0,
            note TEXT,
            state TEXT NOT NULL,
            conversations_previewed INTEGER,
            preview_request_id TEXT,
            preview_error TEXT,
            previewed_at TEXT,
            approved_at TEXT,
            approved_by TEXT,
            approved_how TEXT,
            request_id TEXT,
            submitted_at TEXT,
            completed_at TEXT,
            updated_records INTEGER,
            callback_status TEXT,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            verified_by TEXT,
            updated_at TEXT,
            needs_review INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (batch_id, "row", kind)
        )
        """,
    )
    names = ", ".join(f'"{c}"' for c in columns)
    conn.execute(f'INSERT INTO rows_new ({names}) SELECT {names} FROM "rows"')
    _run(
        conn,
        """
        DROP TABLE "rows";
        ALTER TABLE rows_new RENAME TO "rows";
        CREATE INDEX rows_by_state ON "rows" (batch_id, state);
        ALTER TABLE approvals ADD COLUMN kind TEXT NOT NULL DEFAULT 'conversations';
        """,
    )


def _migration_5_held_by(db: Database) -> None:
    """``rows.held_by``: the row of the same source that holds an approved row back (NULL when
    nothing does), so "held" is data, not a prefix of the row's error (issue 11)."""
    db["rows"].add_column("held_by", int)


# The error text an older omi-batch held a row with (``states.held_error``), and its blocker.
_HELD_TEXT = re.compile(rf"^{HELD}: row (\d+) ")


def _migration_6_held_by_of_old_holds(db: Database) -> None:
    """``held_by`` of the rows an older omi-batch held, which only their error text
    (``held: row N of the same source is …``) says: without it ``is_held`` read them as plain
    approved (issue 11). A migration of its own, not a change to 5: 5 is on ledgers already,
    which need their old holds filled too. A row some event already gave ``held_by`` is left
    alone (a newer omi-batch decided it since, so its error text is stale). Each row filled
    gets an audit event ``held_by_filled``, so the chain says what changed and verify's replay
    agrees with the table."""
    conn = db.conn
    found = conn.execute(
        'SELECT batch_id, "row", kind, error FROM "rows" WHERE state = ? AND held_by IS NULL '
        "AND error LIKE ? ORDER BY batch_id, seq, kind",
        (APPROVED, f"{HELD}: row %"),
    ).fetchall()
    last = last_event(conn) if found else None
    for batch_id, row, kind, error in found:
        blocker = _HELD_TEXT.match(error or "")
        if blocker is None or _held_by_decided(conn, batch_id, row, kind):
            continue
        conn.execute(
            'UPDATE "rows" SET held_by = ? WHERE batch_id = ? AND "row" = ? AND kind = ?',
            (int(blocker.group(1)), batch_id, row, kind),
        )
        data = {"held_by": int(blocker.group(1)), "state": APPROVED,
                "reason": "held_by read from the error text an older omi-batch wrote"}  # fmt: skip
        last = append_event(conn, last, "held_by_filled", batch_id, row, with_kind(data, kind))


def _held_by_decided(conn: sqlite3.Connection, batch_id: str, row: int, kind: str) -> bool:
    """Whether an event of this transfer already set its ``held_by`` (to a row or to None)."""
    for (text,) in conn.execute(
        'SELECT data FROM events WHERE batch_id = ? AND "row" = ?', (batch_id, row)
    ):
        try:
            data = json.loads(text)
        except ValueError:
            continue
        if (
            isinstance(data, dict)
            and "held_by" in data
            and (data.get("kind") or kind_of(data.get("phase"))) == kind
        ):
            return True
    return False


MIGRATIONS: list[Callable[[Database], None]] = [
    _migration_1_tables,
    _migration_2_review_and_indexes,
    _migration_3_receipts_and_refusals,
    _migration_4_transfer_kinds,
    _migration_5_held_by,
    _migration_6_held_by_of_old_holds,
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: Any, target: int | None = None) -> int:
    """Bring ``db`` (an autocommit connection, or a sqlite-utils Database over one) up to schema
    ``target`` (default: the newest) in one ``BEGIN IMMEDIATE`` transaction; return the version
    it is at afterwards. sqlite-utils is imported only when a migration is due, and runs
    inside that transaction (its statements join an open one)."""
    target = SCHEMA_VERSION if target is None else target
    conn: sqlite3.Connection = getattr(db, "conn", db)  # a connection, or a Database over one
    if conn.execute("PRAGMA user_version").fetchone()[0] == target:
        return target  # nothing due: opening writes nothing (a reader works on a read-only disk)
    import sqlite_utils

    if not isinstance(db, sqlite_utils.Database):
        db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"the ledger has schema version {version}, newer than this omi-batch knows "
                f"({SCHEMA_VERSION}): upgrade omi-batch"
            )
        for number in range(version + 1, target + 1):
            MIGRATIONS[number - 1](db)
            version = number
        conn.execute(f"PRAGMA user_version = {int(version)}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return version


# --------------------------------------------------------------------------- row codecs

_JSON_ROW_FIELDS = ("via", "conv_ids")
_BOOL_ROW_FIELDS = ("replace_existing_members", "needs_review")


def encode_field(name: str, value: Any) -> Any:
    """A row field as it is stored: lists as JSON, flags as 0/1."""
    if name in _JSON_ROW_FIELDS:
        return json.dumps(list(value or ()), ensure_ascii=False)
    if name in _BOOL_ROW_FIELDS:
        return 1 if value else 0
    return value


def decode_row(record: dict) -> dict:
    """A ``rows`` record as callers see it: lists decoded, flags as bools."""
    for name in _JSON_ROW_FIELDS:
        text = record.get(name)
        record[name] = json.loads(text) if text and text != "[]" else []  # "[]": most rows
    for name in _BOOL_ROW_FIELDS:
        if name in record:
            record[name] = bool(record[name])
    return record


def decode_batch(record: dict) -> dict:
    """A ``batches`` record as callers see it: options and warnings decoded."""
    record["options"] = json.loads(record["options"]) if record.get("options") else {}
    record["warnings"] = json.loads(record["warnings"]) if record.get("warnings") else []
    return record


def decode_callback(record: dict) -> dict:
    """A ``callbacks`` record as callers see it: headers decoded, applied as a bool."""
    record["headers"] = json.loads(record["headers"]) if record.get("headers") else {}
    record["applied"] = bool(record.get("applied"))
    return record


def query(conn: sqlite3.Connection, sql: str, params: Iterable[Any] = ()) -> Iterator[dict]:
    """The rows of ``sql``, one dict (column name: value) at a time."""
    cursor = conn.execute(sql, tuple(params))
    names = [d[0] for d in cursor.description]
    for found in cursor:
        yield dict(zip(names, found, strict=True))

"""The ledger's schema: one function per version, applied in order under ``PRAGMA user_version``,
so a ledger written by an older omi-batch opens in a newer one (as sqlite-utils keeps
``migrations.py``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from omi_batch.errors import LedgerError


def _run(conn: sqlite3.Connection, script: str) -> None:
    """Each statement of ``script`` inside the open transaction (``executescript`` would
    commit it first)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _migration_1_tables(conn: sqlite3.Connection) -> None:
    """The tables of the first ledger."""
    _run(
        conn,
        """
        CREATE TABLE batches (
            id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            created_by TEXT,
            source_file TEXT,
            source_sha256 TEXT,
            base_url TEXT,
            options TEXT,
            row_count INTEGER NOT NULL,
            input_rows INTEGER,
            warnings TEXT
        );
        CREATE TABLE "rows" (
            batch_id TEXT NOT NULL REFERENCES batches(id),
            "row" INTEGER NOT NULL,
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
            PRIMARY KEY (batch_id, "row")
        );
        CREATE TABLE attempts (
            id INTEGER PRIMARY KEY,
            batch_id TEXT,
            "row" INTEGER,
            phase TEXT,
            endpoint TEXT,
            number INTEGER,
            started_at TEXT,
            elapsed_ms REAL,
            http_status INTEGER,
            vendor_code TEXT,
            error TEXT,
            request_id TEXT,
            wait_s REAL
        );
        CREATE TABLE callbacks (
            id INTEGER PRIMARY KEY,
            received_at TEXT NOT NULL,
            batch_id TEXT,
            "row" INTEGER,
            phase TEXT,
            request_id TEXT,
            status TEXT,
            updated_records INTEGER,
            raw_body TEXT,
            headers TEXT,
            remote TEXT,
            verdict TEXT NOT NULL,
            applied INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE approvals (
            id INTEGER PRIMARY KEY,
            batch_id TEXT NOT NULL,
            "row" INTEGER NOT NULL,
            decision TEXT NOT NULL,
            "by" TEXT,
            "at" TEXT NOT NULL,
            how TEXT
        );
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            "at" TEXT NOT NULL,
            kind TEXT NOT NULL,
            batch_id TEXT,
            "row" INTEGER,
            data TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        """,
    )


def _migration_2_review_and_indexes(conn: sqlite3.Connection) -> None:
    """``rows.needs_review`` (a conflicting callback flags the row), the attempt's message and
    whether its outcome is unknown (sent, no answer), and the lookup indexes."""
    _run(
        conn,
        """
        ALTER TABLE "rows" ADD COLUMN needs_review INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE attempts ADD COLUMN message TEXT;
        ALTER TABLE attempts ADD COLUMN outcome_unknown INTEGER;
        CREATE INDEX rows_by_state ON "rows" (batch_id, state);
        CREATE INDEX attempts_by_row ON attempts (batch_id, "row");
        CREATE INDEX callbacks_by_row ON callbacks (batch_id, "row", phase);
        CREATE INDEX approvals_by_row ON approvals (batch_id, "row");
        CREATE INDEX events_by_batch ON events (batch_id);
        """,
    )


def _migration_3_receipts_and_refusals(conn: sqlite3.Connection) -> None:
    """``callbacks.receipt`` (one delivery stored once, whatever the spool replays) and the
    ``refusals`` counts per minute and reason (issue 12)."""
    _run(
        conn,
        """
        ALTER TABLE callbacks ADD COLUMN receipt TEXT;
        CREATE UNIQUE INDEX callbacks_by_receipt ON callbacks (receipt) WHERE receipt IS NOT NULL;
        CREATE INDEX attempts_by_request ON attempts (batch_id, request_id);
        CREATE TABLE refusals (
            minute TEXT NOT NULL,
            reason TEXT NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (minute, reason)
        );
        """,
    )


def _migration_4_transfer_kinds(conn: sqlite3.Connection) -> None:
    """``rows.kind`` in the rows' key: a row of the input file is one transfer per kind it
    moves (conversations, tickets), each with its own state, counts and request id (issue 15).
    SQLite cannot change a primary key in place, so the table is rebuilt; every existing row
    is a conversation transfer. ``approvals.kind`` says which transfer a decision was for."""
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


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migration_1_tables,
    _migration_2_review_and_indexes,
    _migration_3_receipts_and_refusals,
    _migration_4_transfer_kinds,
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: Any, target: int | None = None) -> int:
    """Bring ``db`` (autocommit connection) up to schema ``target`` (default: the newest) in
    one ``BEGIN IMMEDIATE`` transaction; return the version it is at afterwards."""
    target = SCHEMA_VERSION if target is None else target
    conn: sqlite3.Connection = getattr(db, "conn", db)  # a connection, or a Database over one
    if conn.execute("PRAGMA user_version").fetchone()[0] == target:
        return target  # nothing due: opening writes nothing (a reader works on a read-only disk)
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"the ledger has schema version {version}, newer than this omi-batch knows "
                f"({SCHEMA_VERSION}): upgrade omi-batch"
            )
        for number in range(version + 1, target + 1):
            MIGRATIONS[number - 1](conn)
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
        record[name] = json.loads(record[name]) if record.get(name) else []
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

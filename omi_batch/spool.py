"""The receiver's spool: where an authenticated callback is kept when the ledger cannot take it
in time (another writer holds it, or it refuses writes), so that it is answered 200 and never
lost (issue 12).

Why a separate SQLite file (``<ledger>.spool``) and not an append-only file: SQLite gives an
atomic, fsync'd commit per entry (WAL, ``synchronous=FULL``), survives a torn write without our
own framing or checksums, and lets the drain delete what it applied in a transaction of its own.
It has its own lock, so a writer holding the ledger for 40 s does not hold the spool; every
write here is one short transaction of one small row.

Each entry carries a ``receipt`` (random, unique): the ledger stores it with the callback and
refuses to store one receipt twice, so an entry applied and then applied again after a crash
(between the ledger's commit and the spool's delete) is not applied twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY,
    receipt TEXT NOT NULL UNIQUE,
    received_at TEXT NOT NULL,
    not_before REAL NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    callback TEXT NOT NULL,
    raw_body BLOB NOT NULL
);
"""
BUSY_TIMEOUT = 1.0  # seconds: the spool is written in tiny transactions, never held long


def spool_path(ledger_path: str | os.PathLike) -> Path:
    """Where the spool of the ledger at ``ledger_path`` lives."""
    return Path(f"{os.fspath(ledger_path)}.spool")


@dataclass(frozen=True)
class Entry:
    """One spooled callback: ``callback`` is receive_callback's keyword arguments (with
    ``raw_body`` bytes and ``receipt``); ``received_at`` is when the receiver took it."""

    id: int
    receipt: str
    received_at: str
    tries: int
    callback: dict


class Spool:
    """The spool file; safe to share across threads (one connection per thread)."""

    def __init__(self, path: str | os.PathLike, *, busy_timeout: float = BUSY_TIMEOUT):
        self.path = Path(path)
        self.busy_timeout = float(busy_timeout)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r})"

    def exists(self) -> bool:
        return self.path.exists()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(
                str(self.path),
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.executescript(SCHEMA)
            with self._lock:
                self._connections.append(conn)
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    def put(self, callback: dict, *, wait: float = 0.0) -> int:
        """Keep one callback (receive_callback's keyword arguments, with ``receipt``) durably,
        to be applied ``wait`` seconds from now at the earliest; return its entry id. Raises
        sqlite3.Error / OSError when it could not be kept."""
        kept = {k: v for k, v in callback.items() if k not in ("raw_body", "body", "may_hold")}
        text = json.dumps(kept, ensure_ascii=True, default=str)
        cursor = self._conn().execute(
            "INSERT INTO spool (receipt, received_at, not_before, callback, raw_body) "
            "VALUES (?, ?, ?, ?, ?)",
            (str(callback["receipt"]), _now(), time.time() + wait if wait else 0, text,
             bytes(callback.get("raw_body") or b"")),
        )  # fmt: skip
        return int(cursor.lastrowid or 0)

    def pending(self, limit: int = 100, *, due: bool = True) -> list[Entry]:
        """The oldest entries first (``due``: only those not held for later)."""
        if not self.path.exists():
            return []
        sql = "SELECT id, receipt, received_at, tries, callback, raw_body FROM spool"
        params: tuple = ()
        if due:
            sql += " WHERE not_before <= ?"
            params = (time.time(),)
        found = self._conn().execute(sql + " ORDER BY id LIMIT ?", (*params, int(limit)))
        entries = []
        for entry_id, receipt, received_at, tries, text, raw in found.fetchall():
            callback: dict[str, Any] = json.loads(text)
            callback["raw_body"] = bytes(raw)
            entries.append(Entry(entry_id, receipt, received_at, tries, callback))
        return entries

    def waiting_for(self, batch_id: str) -> int:
        """How many entries of the batch ``batch_id`` wait, held or not (0 with no spool)."""
        if not self.path.exists():
            return 0
        found = self._conn().execute(
            "SELECT count(*) FROM spool WHERE json_extract(callback, '$.batch_id') = ?",
            (batch_id,),
        )
        return int(found.fetchone()[0])

    def count(self) -> int:
        """How many entries wait (0 when there is no spool file)."""
        if not self.path.exists():
            return 0
        return int(self._conn().execute("SELECT count(*) FROM spool").fetchone()[0])

    def remove(self, ids: list[int]) -> None:
        """Forget entries the ledger now holds."""
        if ids:
            self._conn().execute(
                f"DELETE FROM spool WHERE id IN ({', '.join('?' for _ in ids)})",
                [int(i) for i in ids],
            )

    def later(self, ids: list[int], seconds: float) -> None:
        """Try these entries again in ``seconds`` (held, or the ledger refused them)."""
        if ids:
            self._conn().execute(
                f"UPDATE spool SET not_before = ?, tries = tries + 1 "
                f"WHERE id IN ({', '.join('?' for _ in ids)})",
                [time.time() + seconds, *(int(i) for i in ids)],
            )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

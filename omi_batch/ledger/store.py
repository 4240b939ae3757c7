"""The ledger's storage engine: connections, short write transactions and busy handling.

- WAL, ``synchronous=FULL`` and a 10 s busy timeout, because the runner and the webhook receiver
  (two processes, many threads) write at the same time and a confirmed write must survive a crash.
- Every write is one short ``BEGIN IMMEDIATE … COMMIT`` that also appends its audit event(s), so
  a row change and its event are never seen apart. ``BEGIN IMMEDIATE`` takes the write lock up
  front, so a read-then-write (a state check) can never be overtaken by another writer.
- One connection per thread (``threading.local``): the receiver and the pipeline share one
  :class:`Ledger` object across their threads.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from omi_batch.errors import LedgerDamaged, LedgerError, LedgerGone, NotFound
from omi_batch.ledger.hashing import HeadFile, append_event, last_event
from omi_batch.ledger.schema import SCHEMA_VERSION, migrate, query

BUSY_RETRIES = 2  # extra BEGIN IMMEDIATE tries after the busy handler itself gave up


def new_batch_id() -> str:
    """A sortable batch id: ``YYYYMMDD-HHMMSS-xxxx`` (UTC, 4 random hex)."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def os_user() -> str:
    """The operating-system user running this process, for ``created_by`` / ``approved_by``."""
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers): still say something
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _is_busy(error: sqlite3.Error) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text


_DAMAGE_WORDS = ("malformed", "not a database", "corrupt")


def ledger_error(path: Path, error: sqlite3.Error) -> LedgerError:
    """The one error of a failed SQLite call: LedgerDamaged (exit 1) when the file is damaged,
    else LedgerError (exit 3) saying what SQLite said."""
    text = str(error)
    if any(word in text.lower() for word in _DAMAGE_WORDS):
        return LedgerDamaged(f"the ledger {path} is damaged or tampered: {text}")
    return LedgerError(f"ledger {path}: {text}")


NOT_OURS = "restore the ledger from a backup, or move it away to start a new one"


class Tx:
    """One open write transaction: runs SQL and appends hash-chained events."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.head: tuple[int, str] | None = None  # the last event appended here
        self._last: tuple[int, str] | None = None

    def execute(self, sql: str, params: Iterable[Any] | Mapping[str, Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)  # type: ignore[arg-type]

    def one(self, sql: str, params: Iterable[Any] = ()) -> dict | None:
        cursor = self.conn.execute(sql, tuple(params))
        found = cursor.fetchone()
        if found is None:
            return None
        return dict(zip([d[0] for d in cursor.description], found, strict=True))

    def event(self, kind: str, batch_id: str | None, row: int | None, data: Mapping) -> int:
        """Append one audit event chained to the last one; return its id."""
        if self._last is None:
            self._last = last_event(self.conn)
        self._last = self.head = append_event(self.conn, self._last, kind, batch_id, row, data)
        return self._last[0]

    def forget_tail(self) -> None:
        """A savepoint was rolled back: the chain's tail is read again from the table."""
        self._last = None

    def reread_head(self, rolled_back: bool) -> None:
        """After a savepoint was rolled back, the head is the table's last event again."""
        if rolled_back and self.head is not None:
            last = self.conn.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1")
            found = last.fetchone()
            self.head = (found[0], found[1]) if found else None


class Store:
    """Connections and transactions of the ledger file (a part of :class:`Ledger`)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        busy_timeout: float = 10.0,
        create: bool = True,
        read_only: bool = False,
        check_head: bool = True,
    ):
        """Open (``create``: and create, with its folder) the ledger and migrate it.

        ``create=False`` raises NotFound when the file does not exist: ``ledger verify`` must
        not conjure an empty, "intact" ledger out of a typo. A ledger is created only where no
        file is: an empty, foreign or version-0 file is refused, and so is a ledger with fewer
        events than its head file names (``check_head``; verify reports that itself).
        ``read_only``: open with SQLite's ``mode=ro`` and write nothing (``status``,
        ``report``, ``verify``, ``export``), so they work on a read-only mount or a full disk.
        """
        self.path = Path(path)
        self.busy_timeout = float(busy_timeout)
        self.read_only = bool(read_only)
        self.head_path = Path(f"{self.path}.head")
        self._local = threading.local()
        self._lock = threading.Lock()
        self.head_file = HeadFile(self.head_path)
        # (pid, owning thread, connection) of every connection opened and not yet closed
        self._connections: list[tuple[int, threading.Thread, sqlite3.Connection]] = []
        self._generation = 0
        self._immutable = False
        self._wal_id: tuple[int, int] | None = None  # the -wal file our commits went to
        existed = self.path.exists()
        head = self.head_file.read() if check_head or not existed else None
        if not existed:
            if not create or self.read_only:
                raise NotFound(f"no ledger at {self.path}")
            if head is not None and head[0] != 0:
                raise self._head_ahead(head[0], 0)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._create()
            existed = True
        if self.path.stat().st_size == 0:
            raise LedgerError(
                f"{self.path} is empty (0 bytes): it is not a ledger; restore it from a backup, "
                "or move it away to start a new ledger"
            )
        try:
            if existed:  # looked at without writing a byte: a foreign file stays as it was
                probe = self._open_read_only()
                try:
                    self._check_ours(probe)
                finally:
                    probe.close()
            conn = self._connection()
            version_before = conn.execute("PRAGMA user_version").fetchone()[0]
            if self.read_only:
                self._check_version(conn)
            elif migrate(conn) != version_before:
                self._publish_last(conn)  # a migration may have added events (schema 6)
            if head is not None and head[0] > 0:
                found = conn.execute("SELECT max(id) FROM events").fetchone()[0] or 0
                if head[0] > found:
                    raise self._head_ahead(head[0], found)
        except sqlite3.DatabaseError as error:
            self.close()
            if isinstance(error, sqlite3.OperationalError) or "not a database" in str(error):
                raise LedgerError(f"{self.path} is not a usable ledger: {error}") from None
            raise ledger_error(self.path, error) from None
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        """Make a new ledger whole under a temporary name, then link it into place (never
        over a file): another process never sees it half made, and one that created it first
        wins (its ledger is the one both open)."""
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.new")
        try:
            conn = sqlite3.connect(str(temp), isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                migrate(conn)
            finally:
                conn.close()
            with contextlib.suppress(FileExistsError):
                os.link(temp, self.path)
        finally:
            for leftover in (temp, Path(f"{temp}-wal"), Path(f"{temp}-shm")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    def _publish_last(self, conn: sqlite3.Connection) -> None:
        """Publish the chain's last event to ``<ledger>.head`` (after a migration's commit)."""
        event_id, digest = last_event(conn)
        if event_id:
            self.head_file.publish(event_id, digest)

    def _head_ahead(self, named: int, found: int) -> LedgerError:
        has = "none" if not found else str(found)
        return LedgerError(
            f"{self.head_path} names event {named}, but the ledger has {has}: it was deleted, "
            f"replaced or cut; restore it from a backup (or move {self.head_path.name} away "
            "to start a new ledger)"
        )

    def _check_ours(self, conn: sqlite3.Connection) -> None:
        """LedgerError unless the existing file is an omi-batch ledger (it has our tables)."""
        tables = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}  # fmt: skip
        if not {"events", "rows", "batches"} <= tables:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            raise LedgerError(
                f"{self.path} is an SQLite file but not an omi-batch ledger (schema version "
                f"{version}, no ledger tables); {NOT_OURS}"
            )

    def _check_version(self, conn: sqlite3.Connection) -> None:
        """A read-only open of a ledger whose schema is not this omi-batch's: say what to do."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"the ledger has schema version {version}, newer than this omi-batch knows "
                f"({SCHEMA_VERSION}): upgrade omi-batch"
            )
        if version < SCHEMA_VERSION:  # a migration is due: the one time a read writes
            writable = Store(self.path, busy_timeout=self.busy_timeout, check_head=False)
            writable.close()

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- connections

    def _open(self) -> sqlite3.Connection:
        if self.read_only:
            return self._open_read_only()
        conn = sqlite3.connect(
            str(self.path),
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,  # only close() touches it from another thread
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            for attempt in range(BUSY_RETRIES + 1):  # switching to WAL needs a moment alone
                try:
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    break
                except sqlite3.OperationalError as error:
                    if not _is_busy(error) or attempt == BUSY_RETRIES:
                        raise
                    time.sleep(random.uniform(0.05, 0.25))
            if str(mode).lower() != "wal":
                raise LedgerError(f"{self.path}: SQLite refused WAL mode ({mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_read_only(self) -> sqlite3.Connection:
        """A ``mode=ro`` connection that writes nothing. Where SQLite cannot even make its
        shared-memory file (a read-only folder or mount) and no -wal file holds anything, it
        is opened ``immutable``: nobody can be writing a ledger there."""
        name = quote(str(self.path.absolute()))
        modes = ["mode=ro"] if not self._immutable else []
        wal = Path(f"{self.path}-wal")
        if not (wal.exists() and wal.stat().st_size):
            modes.append("mode=ro&immutable=1")
        last: sqlite3.Error | None = None
        for mode in modes:
            conn = sqlite3.connect(f"file:{name}?{mode}", uri=True, timeout=self.busy_timeout,
                                   isolation_level=None, check_same_thread=False)  # fmt: skip
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError as error:
                conn.close()
                last = error
                continue
            self._immutable = "immutable" in mode
            return conn
        assert last is not None
        raise last

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use, again after fork or close). Opening
        one also closes those of threads that have ended, so no connection outlives its
        thread for long, whoever started the thread."""
        local = self._local
        pid = os.getpid()
        if (
            getattr(local, "conn", None) is None
            or local.pid != pid
            or local.generation != self._generation
        ):
            conn = self._open()
            with self._lock:
                ended = [e for e in self._connections if e[0] == pid and not e[1].is_alive()]
                self._connections = [e for e in self._connections if e not in ended]
                self._connections.append((pid, threading.current_thread(), conn))
                local.generation = self._generation
            _close_connections(ended)
            local.pid = pid
            local.conn = conn
        return local.conn

    def close_thread_connection(self) -> None:
        """Close the calling thread's connection, if it has one: a thread about to end calls
        it, so its connection is closed now rather than at the next open. Its next call (if
        any) opens a fresh one."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            return
        local.conn = None
        with self._lock:
            mine = [e for e in self._connections if e[2] is conn]
            self._connections = [e for e in self._connections if e[2] is not conn]
        _close_connections(mine)

    def close(self) -> None:
        """Close every connection this object opened (in any thread of this process). The
        object stays usable: the next call opens a fresh connection."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._generation += 1
        _close_connections(connections)
        self._wal_id = None
        self.head_file.close()

    def _check_wal(self) -> None:
        """LedgerGone when the -wal file our commits go to was deleted or replaced under us:
        SQLite would keep writing to the unlinked file, lost when the process ends (issue 12;
        the head file is checked the same way)."""
        wal = f"{self.path}-wal"
        try:
            found = os.stat(wal)
        except FileNotFoundError:
            found = None
        if found is not None and self._wal_id is None:
            self._wal_id = (found.st_dev, found.st_ino)
            return
        if found is None or (found.st_dev, found.st_ino) != self._wal_id:
            raise LedgerGone(
                f"the ledger's write-ahead log {wal} was deleted or replaced while in use: what "
                "is written now would be lost; stop this process, then run omi-batch ledger "
                "verify"
            )

    @contextlib.contextmanager
    def _write(self) -> Iterator[Tx]:
        """One short ``BEGIN IMMEDIATE … COMMIT``; publishes the new head after the commit."""
        if self.read_only:
            raise LedgerError(f"ledger {self.path} was opened read-only")
        conn = self._connection()
        for attempt in range(BUSY_RETRIES + 1):
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as error:
                if not _is_busy(error):
                    raise LedgerError(f"ledger {self.path}: {error}") from None
                if attempt == BUSY_RETRIES:
                    raise LedgerError(
                        f"ledger {self.path} stayed locked by another writer; try again"
                    ) from None
                time.sleep(random.uniform(0.01, 0.1 * 2**attempt))
        tx = Tx(conn)
        try:
            yield tx
            conn.execute("COMMIT")
            self._check_wal()
        except BaseException as error:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(error, sqlite3.Error):
                raise ledger_error(self.path, error) from None
            raise
        if tx.head is not None:
            self.head_file.publish(*tx.head)

    def read_head_file(self) -> tuple[int, str] | None:
        """``(event id, hash)`` from ``<ledger>.head`` (see :meth:`HeadFile.read`)."""
        return self.head_file.read()

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
        try:
            return list(query(self._connection(), sql, params))
        except sqlite3.Error as error:
            raise ledger_error(self.path, error) from None


def _close_connections(entries: list[tuple[int, threading.Thread, sqlite3.Connection]]) -> None:
    """Close the connections of ``entries`` opened by this process (one inherited through
    fork is not ours to close)."""
    pid = os.getpid()
    for owner, _, conn in entries:
        if owner == pid:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

"""The audit ledger: one SQLite file holding batches, rows, attempts, callbacks, approvals and a
hash-chained audit log of events. The only code in omi-batch that speaks SQL.

Why it is built this way:

- WAL, ``synchronous=FULL`` and a 10 s busy timeout, because the runner and the webhook receiver
  (two processes, many threads) write at the same time and a confirmed write must survive a crash.
- Every write is one short ``BEGIN IMMEDIATE … COMMIT`` that also appends its audit event(s), so
  a row change and its event are never seen apart. ``BEGIN IMMEDIATE`` takes the write lock up
  front, so a read-then-write (a state check) can never be overtaken by another writer.
- One connection per thread (``threading.local``): the receiver and the pipeline share one
  :class:`Ledger` object across their threads.
- Each event's ``hash`` is ``sha256(prev_hash + canonical JSON of {id, at, kind, batch_id, row,
  data})``; the last one is also kept in ``<ledger>.head`` so that cutting the tail of the chain
  is noticed too. ``verify()`` recomputes the whole chain.
- The schema is versioned (``PRAGMA user_version`` + :data:`MIGRATIONS`) so a ledger written by
  an older omi-batch opens in a newer one.

No secret is ever stored: callback headers lose every credential before they are written, and
attempts keep only what the client's ``Attempt`` says (never a key).
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import hashlib
import json
import os
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from omi_batch.errors import IllegalTransition, LedgerError, NotFound, UsageError

try:  # the head file is guarded by flock where there is one (every POSIX system)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

STATES = (
    "planned",
    "previewed",
    "preview_failed",
    "approved",
    "skipped",
    "submitted",
    "succeeded",
    "failed",
    "unconfirmed",
)
TRANSITIONS: dict[str, set[str]] = {
    "planned": {"previewed", "preview_failed", "skipped"},
    "previewed": {"previewed", "preview_failed", "approved", "skipped"},
    "preview_failed": {"previewed", "preview_failed", "skipped"},
    "approved": {"previewed", "preview_failed", "skipped", "submitted"},
    "skipped": {"approved", "previewed", "preview_failed"},
    # submitted -> approved: OMI refused the request (key, never connected), so nothing started.
    "submitted": {"submitted", "succeeded", "failed", "unconfirmed", "approved"},
    "unconfirmed": {"submitted", "succeeded", "failed", "unconfirmed"},
    "succeeded": set(),
    "failed": set(),
}
GENESIS = "0" * 64
HEAD_RECORD = 128  # bytes of the head file's one record: JSON padded with spaces, then \n
HEAD_READ_LIMIT = 4096  # bytes of a head file read: more than that is not a head file
BUSY_RETRIES = 2  # extra BEGIN IMMEDIATE tries after the busy handler itself gave up

# Callback verdicts that count as the row's result (callbacks.applied = 1).
_APPLIED_VERDICTS = ("applied", "late", "confirmed")

# Row columns a caller may set through set_state / update_row (never the identity, the state
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
        "verified_by",
    }
)
_JSON_ROW_FIELDS = ("via", "conv_ids")
_BOOL_ROW_FIELDS = ("replace_existing_members", "needs_review")
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
_STEP_KEYS = frozenset({"batch_id", "row", "event", "state", "expect", "phase", "reason"})
# A header is dropped before storage when its lower-cased name contains any of these.
_CREDENTIAL_WORDS = ("token", "secret", "key", "authorization", "cookie", "password", "signature")


# --------------------------------------------------------------------------- small helpers


def now() -> str:
    """The current time as ISO 8601 UTC with milliseconds, e.g. ``2026-11-25T09:30:00.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_batch_id() -> str:
    """A sortable batch id: ``YYYYMMDD-HHMMSS-xxxx`` (UTC, 4 random hex)."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def os_user() -> str:
    """The operating-system user running this process, for ``created_by`` / ``approved_by``."""
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers): still say something
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def canonical_json(value: Any) -> str:
    """The one JSON spelling that is hashed: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def event_text(
    event_id: int, at: str, kind: str, batch_id: str | None, row: int | None, data_text: str
) -> str:
    """Canonical JSON of ``{id, at, kind, batch_id, row, data}`` with ``data_text`` (already
    canonical) spliced in as is, so verify hashes the stored bytes without re-encoding them."""

    def dumps(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    return (
        f'{{"at":{dumps(at)},"batch_id":{dumps(batch_id)},"data":{data_text},'
        f'"id":{int(event_id)},"kind":{dumps(kind)},"row":{dumps(row)}}}'
    )


def event_hash(prev_hash: str, text: str) -> str:
    return hashlib.sha256((prev_hash + text).encode("utf-8")).hexdigest()


def clean_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """``headers`` without any credential: X-Omi-Batch-Token, x-api-key, authorization, cookie
    and every header whose name contains token, secret or key are dropped, not masked."""
    cleaned: dict[str, str] = {}
    for name, value in (headers or {}).items():
        lowered = str(name).lower()
        if any(word in lowered for word in _CREDENTIAL_WORDS):
            continue
        cleaned[str(name)] = str(value)
    return cleaned


def _head_record(event_id: int, digest: str) -> bytes:
    """The head file's record: ``{"hash":…,"id":…}`` padded to :data:`HEAD_RECORD` bytes."""
    text = canonical_json({"id": int(event_id), "hash": digest}).encode("utf-8")
    return text.ljust(HEAD_RECORD - 1) + b"\n"


def _parse_head(data: bytes) -> tuple[int, str] | None:
    """``(event id, hash)`` from a head file's bytes; None when they are not a head record."""
    try:
        found = json.loads(data.decode("utf-8"))
        return int(found["id"]), str(found["hash"])
    except (ValueError, KeyError, TypeError):
        return None


def _as_dict(item: Any) -> dict:
    """A mapping or dataclass instance as a plain dict (rows may be roster ``Transfer``s)."""
    if isinstance(item, Mapping):
        return dict(item)
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
    raise TypeError(f"expected a dict or a dataclass, got {type(item).__name__}")


def _count(value: Any) -> int | None:
    """An ``updatedRecords`` value as an int, or None when it is absent or not a count."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _encode_field(name: str, value: Any) -> Any:
    if name in _JSON_ROW_FIELDS:
        return json.dumps(list(value or ()), ensure_ascii=False)
    if name in _BOOL_ROW_FIELDS:
        return 1 if value else 0
    return value


def _row_out(record: dict) -> dict:
    """A ``rows`` record as callers see it: lists decoded, flags as bools."""
    for name in _JSON_ROW_FIELDS:
        record[name] = json.loads(record[name]) if record.get(name) else []
    for name in _BOOL_ROW_FIELDS:
        if name in record:
            record[name] = bool(record[name])
    return record


def _batch_out(record: dict) -> dict:
    record["options"] = json.loads(record["options"]) if record.get("options") else {}
    record["warnings"] = json.loads(record["warnings"]) if record.get("warnings") else []
    return record


def _callback_out(record: dict) -> dict:
    record["headers"] = json.loads(record["headers"]) if record.get("headers") else {}
    record["applied"] = bool(record.get("applied"))
    return record


def _review(current: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The row changes of a conflicting callback: flag the row and say why in its error, so
    the results report and ``status`` show it (the earlier error, if any, is kept after it)."""
    text = f"needs review: conflicting callbacks ({what})"
    before = current.get("error")
    if before and not str(before).startswith("needs review:"):
        text = f"{text}; {before}"
    return {"needs_review": 1, "error": text[:1000]}


def _is_busy(error: sqlite3.Error) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text


# --------------------------------------------------------------------------- migrations


def _migration_1_tables(db: sqlite_utils.Database) -> None:
    """The tables of the first ledger."""
    db.executescript(
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
        """
    )


def _migration_2_review_and_indexes(db: sqlite_utils.Database) -> None:
    """``rows.needs_review`` (a conflicting callback flags the row), the attempt's message and
    whether its outcome is unknown (sent, no answer), and the lookup indexes."""
    db.executescript(
        """
        ALTER TABLE "rows" ADD COLUMN needs_review INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE attempts ADD COLUMN message TEXT;
        ALTER TABLE attempts ADD COLUMN outcome_unknown INTEGER;
        CREATE INDEX rows_by_state ON "rows" (batch_id, state);
        CREATE INDEX attempts_by_row ON attempts (batch_id, "row");
        CREATE INDEX callbacks_by_row ON callbacks (batch_id, "row", phase);
        CREATE INDEX approvals_by_row ON approvals (batch_id, "row");
        CREATE INDEX events_by_batch ON events (batch_id);
        """
    )


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _migration_1_tables,
    _migration_2_review_and_indexes,
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite_utils.Database, target: int | None = None) -> int:
    """Bring ``db`` (autocommit connection) up to schema ``target`` (default: the newest) in
    one ``BEGIN IMMEDIATE`` transaction; return the version it is at afterwards."""
    target = SCHEMA_VERSION if target is None else target
    conn = db.conn
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


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class VerifyResult:
    """What ``verify()`` found. ``problem`` is a warning when ``ok`` is true."""

    ok: bool
    events: int
    head: str | None
    first_bad: int | None = None
    problem: str = ""


class _Tx:
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
            last = self.conn.execute(
                "SELECT id, hash FROM events ORDER BY id DESC LIMIT 1"
            ).fetchone()
            self._last = (last[0], last[1]) if last else (0, GENESIS)
        last_id, prev_hash = self._last
        event_id = last_id + 1
        at = now()
        data_text = canonical_json(dict(data))
        row = None if row is None else int(row)
        digest = event_hash(prev_hash, event_text(event_id, at, kind, batch_id, row, data_text))
        self.conn.execute(
            'INSERT INTO events (id, "at", kind, batch_id, "row", data, prev_hash, hash) '
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (event_id, at, kind, batch_id, row, data_text, prev_hash, digest),
        )
        self._last = self.head = (event_id, digest)
        return event_id


# --------------------------------------------------------------------------- the ledger


def _check_move(
    batch_id: str, row: int, current: str, state: str | None, expect: Iterable[str] | None
) -> None:
    """IllegalTransition unless the row is in one of ``expect`` (when given) and may go from
    ``current`` to ``state`` (None: no state change)."""
    if expect is not None and current not in set(expect):
        raise IllegalTransition(
            f"row {row} of batch {batch_id} is {current}, not {' or '.join(sorted(set(expect)))}"
        )
    if state is not None and state not in TRANSITIONS.get(current, set()):
        raise IllegalTransition(
            f"row {row} of batch {batch_id} cannot go from {current} to {state}"
        )


def _insert_attempt(
    tx: _Tx, batch_id: str | None, row: int | None, phase: str | None, record: dict
) -> None:
    """One row of ``attempts`` and its audit event, inside ``tx``."""
    cursor = tx.execute(
        f'INSERT INTO attempts (batch_id, "row", phase, {", ".join(_ATTEMPT_FIELDS)}) '
        f"VALUES (?, ?, ?, {', '.join('?' for _ in _ATTEMPT_FIELDS)})",
        [batch_id, row, phase, *(record[name] for name in _ATTEMPT_FIELDS)],
    )
    tx.event("attempt", batch_id, row, {"attempt_id": cursor.lastrowid, "phase": phase, **record})


class Ledger:
    """The SQLite audit ledger at ``path``; safe to share across threads and processes."""

    def __init__(self, path: str | os.PathLike, *, busy_timeout: float = 10.0, create: bool = True):
        """Open (``create``: and create, with its folder) the ledger and migrate it.

        ``create=False`` raises NotFound when the file does not exist: ``ledger verify`` must
        not conjure an empty, "intact" ledger out of a typo.
        """
        self.path = Path(path)
        self.busy_timeout = float(busy_timeout)
        self.head_path = Path(f"{self.path}.head")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._head_lock = threading.Lock()
        # (pid, fd, (inode, device)) of this process's open head file
        self._head_file: tuple[int, int, tuple[int, int]] | None = None
        self._connections: list[tuple[int, sqlite3.Connection]] = []  # (pid, connection)
        self._generation = 0
        if not self.path.exists():
            if not create:
                raise NotFound(f"no ledger at {self.path}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            migrate(self._db())
        except sqlite3.DatabaseError as error:
            self.close()
            raise LedgerError(f"{self.path} is not a usable ledger: {error}") from None

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- connections

    def _open(self) -> sqlite3.Connection:
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

    def _db(self) -> sqlite_utils.Database:
        """This thread's Database (opened on first use, again after fork or close)."""
        local = self._local
        pid = os.getpid()
        if (
            getattr(local, "db", None) is None
            or local.pid != pid
            or local.generation != self._generation
        ):
            conn = self._open()
            with self._lock:
                self._connections.append((pid, conn))
                local.generation = self._generation
            local.pid = pid
            local.db = sqlite_utils.Database(conn, execute_plugins=False)
        return local.db

    def close(self) -> None:
        """Close every connection this object opened (in any thread of this process). The
        object stays usable: the next call opens a fresh connection."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._generation += 1
        pid = os.getpid()
        for owner, conn in connections:
            if owner == pid:  # a connection inherited through fork is not ours to close
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        with self._head_lock:
            self._close_head_fd()

    @contextlib.contextmanager
    def _write(self) -> Iterator[_Tx]:
        """One short ``BEGIN IMMEDIATE … COMMIT``; publishes the new head after the commit."""
        conn = self._db().conn
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
        tx = _Tx(conn)
        try:
            yield tx
            conn.execute("COMMIT")
        except BaseException as error:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(error, sqlite3.Error):
                raise LedgerError(f"ledger {self.path}: {error}") from None
            raise
        if tx.head is not None:
            self._publish_head(*tx.head)

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
        try:
            return list(self._db().query(sql, tuple(params)))
        except sqlite3.Error as error:
            raise LedgerError(f"ledger {self.path}: {error}") from None

    # ----------------------------------------------------------------- head sidecar

    def _publish_head(self, event_id: int, digest: str) -> None:
        """Write ``<ledger>.head`` after a commit, unless it already names a later event (two
        processes race: a lower id never overwrites a higher one).

        Called on EVERY commit, so it is made cheap rather than rare (issue 5/6): publishing
        less often would leave a window in which cutting the tail of the chain goes unnoticed.
        The file is one fixed-width record (:data:`HEAD_RECORD` bytes) in a file kept open per
        process; under an exclusive ``flock`` (readers take a shared one) we read the current
        record, compare ids and overwrite it in place with one ``pwrite``: no temp file, no
        rename, no fsync (the old way did not fsync either). It runs right after COMMIT, never
        before: a head written before a commit that then failed would name an event that does
        not exist, a false alarm. A crash between the two leaves the head one commit behind,
        which ``verify`` accepts (it checks that the event the head names is intact). The file
        is created whole (temp file + ``os.link``, which never overwrites), so it is never seen
        empty; one removed or replaced under us is noticed by inode and opened again."""
        record = _head_record(event_id, digest)
        with self._head_lock:
            for _ in range(3):  # bounded: the file would have to be replaced on every try
                fd = self._head_fd(record)
                if fd is None:  # created just now, holding our record
                    return
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    if not self._is_head_file():  # removed or replaced since it was opened
                        self._close_head_fd()
                        continue
                    found = os.pread(fd, HEAD_READ_LIMIT, 0)
                    current = _parse_head(found)
                    if current is not None and current[0] >= event_id:
                        return
                    os.pwrite(fd, record, 0)
                    if len(found) > len(record):  # written by someone else, longer
                        os.ftruncate(fd, len(record))
                    return
                finally:
                    if fcntl is not None and self._head_file is not None:
                        fcntl.flock(fd, fcntl.LOCK_UN)

    def _head_fd(self, record: bytes) -> int | None:
        """This process's open descriptor of ``<ledger>.head`` (under ``_head_lock``); when
        there is no such file, create it holding ``record`` and return None. Also None when the
        file kept vanishing and appearing: this commit's head is skipped, the next one writes."""
        pid = os.getpid()
        if self._head_file is not None and self._head_file[0] == pid:
            return self._head_file[1]
        self._head_file = None  # inherited through fork: its flock would be the parent's too
        for _ in range(3):  # each turn opens the file or creates it, unless another races us
            try:
                fd = os.open(self.head_path, os.O_RDWR)
            except FileNotFoundError:
                temp = f"{self.head_path}.{pid}.{threading.get_ident()}.tmp"
                with open(temp, "wb") as handle:
                    handle.write(record)
                try:
                    os.link(temp, self.head_path)  # atomic, and never overwrites
                except FileExistsError:
                    continue  # another writer created it meanwhile: compare with theirs
                finally:
                    os.unlink(temp)
                return None
            held = os.fstat(fd)
            self._head_file = (pid, fd, (held.st_ino, held.st_dev))
            return fd
        return None

    def _is_head_file(self) -> bool:
        """Whether ``<ledger>.head`` is still the file this process holds open."""
        try:
            named = os.stat(self.head_path)
        except FileNotFoundError:
            return False
        return self._head_file is not None and (named.st_ino, named.st_dev) == self._head_file[2]

    def _close_head_fd(self) -> None:
        held, self._head_file = self._head_file, None
        if held is not None and held[0] == os.getpid():
            with contextlib.suppress(OSError):
                os.close(held[1])

    def read_head_file(self) -> tuple[int, str] | None:
        """``(event id, hash)`` from ``<ledger>.head``, or None when there is none; ``(-1, "")``
        when it is there but unreadable. Read under a shared ``flock``, so never mid-write."""
        try:
            fd = os.open(self.head_path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_SH)
            found = os.read(fd, HEAD_READ_LIMIT)
        finally:
            os.close(fd)  # also releases the flock
        return _parse_head(found) or (-1, "")

    # ----------------------------------------------------------------- batches and rows

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
        transaction; return the new batch id. ``rows`` are Transfer-like dicts or dataclasses."""
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
            for seq, item in enumerate(plan):
                row = int(item["row"])
                if row in seen:
                    raise UsageError(f"row {row} appears twice in the plan")
                seen.add(row)
                tx.execute(
                    'INSERT INTO "rows" (batch_id, "row", seq, source_email, target_email, '
                    "requested_target, via, conv_ids, replace_existing_members, note, state, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'planned', ?)",
                    (
                        batch_id,
                        row,
                        seq,
                        item["source_email"],
                        item["target_email"],
                        item.get("requested_target") or item["target_email"],
                        _encode_field("via", item.get("via")),
                        _encode_field("conv_ids", item.get("conv_ids")),
                        _encode_field(
                            "replace_existing_members", item.get("replace_existing_members")
                        ),
                        item.get("note") or "",
                        stamp,
                    ),
                )
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
                },
            )
        return batch_id

    def batches(self) -> list[dict]:
        """Every batch, newest first, each with ``states``: {state: row count}."""
        found = [
            _batch_out(b)
            for b in self._query("SELECT * FROM batches ORDER BY created_at DESC, rowid DESC")
        ]
        counts: dict[str, dict[str, int]] = {}
        for item in self._query(
            'SELECT batch_id, state, count(*) AS n FROM "rows" GROUP BY batch_id, state'
        ):
            counts.setdefault(item["batch_id"], {})[item["state"]] = item["n"]
        for batch in found:
            batch["states"] = counts.get(batch["id"], {})
        return found

    def batch(self, batch_id: str) -> dict:
        """One batch (with ``states``); NotFound when there is no such batch."""
        found = self._query("SELECT * FROM batches WHERE id = ?", (batch_id,))
        if not found:
            raise NotFound(f"no batch {batch_id} in {self.path}")
        batch = _batch_out(found[0])
        batch["states"] = {
            item["state"]: item["n"]
            for item in self._query(
                'SELECT state, count(*) AS n FROM "rows" WHERE batch_id = ? GROUP BY state',
                (batch_id,),
            )
        }
        return batch

    def rows(self, batch_id: str, states: Iterable[str] | None = None) -> list[dict]:
        """The batch's rows in run order (``seq``), optionally only those in ``states``."""
        self.batch(batch_id)
        sql = 'SELECT * FROM "rows" WHERE batch_id = ?'
        params: list[Any] = [batch_id]
        if states is not None:
            wanted = list(states)
            if not wanted:
                return []
            sql += f" AND state IN ({', '.join('?' for _ in wanted)})"
            params += wanted
        return [_row_out(r) for r in self._query(sql + " ORDER BY seq", params)]

    def row(self, batch_id: str, row: int) -> dict:
        """One row; NotFound when the batch or the row does not exist."""
        found = self._query(
            'SELECT * FROM "rows" WHERE batch_id = ? AND "row" = ?', (batch_id, int(row))
        )
        if not found:
            self.batch(batch_id)
            raise NotFound(f"no row {row} in batch {batch_id}")
        return _row_out(found[0])

    @staticmethod
    def _check_fields(fields: Mapping[str, Any]) -> None:
        unknown = sorted(set(fields) - ROW_FIELDS)
        if unknown:
            raise LedgerError(f"not a row field the ledger lets callers set: {', '.join(unknown)}")

    def _locked_row(self, tx: _Tx, batch_id: str, row: int) -> dict:
        found = tx.one('SELECT * FROM "rows" WHERE batch_id = ? AND "row" = ?', (batch_id, row))
        if found is None:
            if tx.one("SELECT 1 AS x FROM batches WHERE id = ?", (batch_id,)) is None:
                raise NotFound(f"no batch {batch_id} in {self.path}")
            raise NotFound(f"no row {row} in batch {batch_id}")
        return found

    @staticmethod
    def _write_row(tx: _Tx, batch_id: str, row: int, fields: Mapping[str, Any]) -> None:
        columns = dict(fields)
        columns["updated_at"] = now()
        assignments = ", ".join(f'"{name}" = ?' for name in columns)
        tx.execute(
            f'UPDATE "rows" SET {assignments} WHERE batch_id = ? AND "row" = ?',
            [_encode_field(name, value) for name, value in columns.items()] + [batch_id, row],
        )

    def set_state(
        self,
        batch_id: str,
        row: int,
        state: str,
        *,
        event: str,
        expect: Iterable[str] | None = None,
        **fields: Any,
    ) -> dict:
        """Move a row to ``state`` (checked against TRANSITIONS, and against ``expect`` — the
        states the caller believes the row is in — inside the transaction), writing ``fields``
        and an audit event ``event``. IllegalTransition, and nothing written, otherwise."""
        self._check_fields(fields)
        if state not in STATES:
            raise IllegalTransition(f"{state!r} is not a row state")
        row = int(row)
        with self._write() as tx:
            current = self._locked_row(tx, batch_id, row)["state"]
            _check_move(batch_id, row, current, state, expect)
            self._write_row(tx, batch_id, row, {**fields, "state": state})
            tx.event(event, batch_id, row, {**fields, "from": current, "to": state})
        return self.row(batch_id, row)

    def update_row(self, batch_id: str, row: int, *, event: str, **fields: Any) -> dict:
        """Write ``fields`` on a row without changing its state, with an audit event."""
        self._check_fields(fields)
        row = int(row)
        with self._write() as tx:
            current = self._locked_row(tx, batch_id, row)["state"]
            if fields:
                self._write_row(tx, batch_id, row, fields)
            tx.event(event, batch_id, row, {**fields, "state": current})
        return self.row(batch_id, row)

    def record_attempt(
        self, batch_id: str | None, row: int | None, phase: str, attempt: Any
    ) -> None:
        """Store one HTTP attempt (the client's ``Attempt`` fields; its ``context`` is not
        kept) and its audit event; an ``execute`` attempt also counts in ``rows.attempts``."""
        values = _as_dict(attempt)
        record = {name: values.get(name) for name in _ATTEMPT_FIELDS}
        row = None if row is None else int(row)
        with self._write() as tx:
            if batch_id is not None and row is not None:
                self._locked_row(tx, batch_id, row)
            if phase == "execute" and batch_id is not None and row is not None:
                tx.execute(
                    'UPDATE "rows" SET attempts = attempts + 1, updated_at = ? '
                    'WHERE batch_id = ? AND "row" = ?',
                    (now(), batch_id, row),
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
        **fields: Any,
    ) -> None:
        """One pipeline step in ONE transaction (added for issue 5, by the pipeline's owner):
        store ``attempts`` (HTTP attempts of ``phase``, as :meth:`record_attempt` does), then
        write ``fields`` and, when ``state`` is given, move the row there (checked like
        :meth:`set_state`, ``expect`` included), with the audit event ``event``. ``reason`` goes
        into that event only (a why with no row column). IllegalTransition, and nothing written
        (not even the attempts), when the move is not allowed."""
        step = dict(fields, batch_id=batch_id, row=row, event=event, state=state, expect=expect,
                    phase=phase, attempts=attempts, reason=reason)  # fmt: skip
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
            self._reread_head(tx, any(r is not None for r in results))
        return results

    def record_group(
        self, steps: list[Mapping[str, Any]], received: list[Mapping[str, Any]]
    ) -> tuple[list[Exception | None], list[str | Exception]]:
        """:meth:`record_steps` and :meth:`receive_callbacks` in ONE transaction (one fsync):
        for a process whose runner and in-process receiver write at the same moment. Each
        step and each callback comes out as it would on its own (a malformed one too: its error
        in its place, the others stored); returns both result lists."""
        prepared = self._prepare_steps(steps)
        callbacks_ = self._prepare_callbacks(received, keep_errors=True)
        with self._write() as tx:
            results = self._steps_in(tx, prepared)
            verdicts, rolled_back = self._callbacks_in(tx, callbacks_)
            self._reread_head(tx, rolled_back or any(r is not None for r in results))
        return results, verdicts

    @staticmethod
    def _reread_head(tx: _Tx, rolled_back: bool) -> None:
        """After a savepoint was rolled back, the head is the table's last event again."""
        if rolled_back and tx.head is not None:
            found = tx.conn.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1")
            last = found.fetchone()
            tx.head = (last[0], last[1]) if last else None

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
        self, tx: _Tx, prepared: list[tuple[dict, list[dict]] | Exception]
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
                tx._last = None  # the chain's tail is read again from the table
                if isinstance(error, sqlite3.Error):
                    error = LedgerError(f"ledger {self.path}: {error}")
                results.append(error)
            else:
                results.append(None)
            finally:
                tx.execute("RELEASE step")
        return results

    def _step_in(self, tx: _Tx, step: dict, records: list[dict]) -> None:
        """One step of :meth:`record_steps`, inside its transaction."""
        batch_id, row = step["batch_id"], int(step["row"])
        state, phase, reason = step.get("state"), step.get("phase"), step.get("reason")
        expect = step.get("expect")
        fields = {k: v for k, v in step.items() if k not in _STEP_KEYS}
        current = self._locked_row(tx, batch_id, row)["state"]
        _check_move(batch_id, row, current, state, expect)
        for record in records:
            _insert_attempt(tx, batch_id, row, phase, record)
        columns = dict(fields)
        if phase == "execute" and records:
            tx.execute(
                'UPDATE "rows" SET attempts = attempts + ? WHERE batch_id = ? AND "row" = ?',
                (len(records), batch_id, row),
            )
        if state is not None:
            columns["state"] = state
        if columns:
            self._write_row(tx, batch_id, row, columns)
        data: dict[str, Any] = dict(fields)
        if reason is not None:
            data["reason"] = reason
        if state is not None:
            data.update({"from": current, "to": state})
        else:
            data["state"] = current
        tx.event(step["event"], batch_id, row, data)

    def approve(
        self,
        batch_id: str,
        *,
        approve: Iterable[int],
        skip: Iterable[int] = (),
        by: str,
        how: str,
    ) -> int:
        """In one transaction, approve the rows in ``approve`` and skip those in ``skip``;
        return how many rows became approved. A row already in the wanted state is left as it
        is (running approve twice is harmless); any illegal change refuses the whole call."""
        to_approve = [int(r) for r in approve]
        to_skip = [int(r) for r in skip]
        both = sorted(set(to_approve) & set(to_skip))
        if both:
            raise UsageError(f"rows both approved and skipped: {', '.join(map(str, both))}")
        changed = 0
        with self._write() as tx:
            if tx.one("SELECT 1 AS x FROM batches WHERE id = ?", (batch_id,)) is None:
                raise NotFound(f"no batch {batch_id} in {self.path}")
            stamp = now()
            for decision, wanted in (("approved", to_approve), ("skipped", to_skip)):
                for row in dict.fromkeys(wanted):
                    current = self._locked_row(tx, batch_id, row)["state"]
                    if current == decision:
                        continue
                    if decision not in TRANSITIONS[current]:
                        raise IllegalTransition(
                            f"row {row} of batch {batch_id} is {current}: it cannot be "
                            f"{'approved' if decision == 'approved' else 'skipped'}"
                        )
                    approval = {
                        "approved_at": stamp if decision == "approved" else None,
                        "approved_by": by if decision == "approved" else None,
                        "approved_how": how if decision == "approved" else None,
                    }
                    self._write_row(tx, batch_id, row, {**approval, "state": decision})
                    tx.execute(
                        'INSERT INTO approvals (batch_id, "row", decision, "by", "at", how) '
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (batch_id, row, decision, by, stamp, how),
                    )
                    tx.event(
                        decision,
                        batch_id,
                        row,
                        {"by": by, "how": how, "from": current, "to": decision},
                    )
                    changed += decision == "approved"
        return changed

    # ----------------------------------------------------------------- callbacks

    def receive_callback(
        self,
        *,
        batch_id: str,
        row: int,
        phase: str,
        raw_body: bytes,
        headers: Mapping[str, Any] | None,
        remote: str | None,
        body: Mapping[str, Any] | None,
        refused: str | None = None,
    ) -> str:
        """Store a received callback and apply it to its row, all in one transaction; return
        the verdict (refused:<why>, unknown, duplicate, stored, applied, late, confirmed,
        conflict, stale, unexpected). The raw callback is kept whatever the verdict. ``stale``:
        an ERROR for another request than the row's current one (the row was submitted
        again); it is kept and not applied."""
        raw = (raw_body or b"").decode("utf-8", errors="replace")
        with contextlib.suppress(TypeError, ValueError):
            row = int(row)
        cleaned = canonical_json(clean_headers(headers))
        try:
            with self._write() as tx:
                return self._receive_in(
                    tx, batch_id, row, phase, raw, cleaned, remote, body, refused
                )
        except LedgerError:
            raise  # the ledger itself cannot be written: nothing more to try here
        except Exception as error:
            # Keep the raw callback even when applying it failed, then let the caller answer 5xx.
            with contextlib.suppress(Exception), self._write() as tx:
                self._keep_failed_callback(tx, (batch_id, row, phase, raw, cleaned, remote), error)
            raise

    def receive_callbacks(self, received: list[Mapping[str, Any]]) -> list[str | Exception]:
        """Several :meth:`receive_callback` calls (each a dict of its keyword arguments) in ONE
        transaction: a group commit, so callbacks that arrived at the same moment share one
        fsync (issue 6). Each runs in its own savepoint and comes out exactly as it would on
        its own: its verdict, or the error it raised, in its place. A callback whose applying
        failed is rolled back alone and kept with the verdict ``error`` (as receive_callback
        does); a ledger error of one (LedgerError) leaves the others stored. An error of the
        transaction itself (BEGIN or COMMIT) is raised: then none of them is stored."""
        prepared = self._prepare_callbacks(received)
        with self._write() as tx:
            results, rolled_back = self._callbacks_in(tx, prepared)
            self._reread_head(tx, rolled_back)
        return results

    @staticmethod
    def _prepare_callbacks(
        received: list[Mapping[str, Any]], *, keep_errors: bool = False
    ) -> list[tuple | Exception]:
        """receive_callback's arguments, decoded and cleaned, one tuple per callback; with
        ``keep_errors``, the error of one that cannot be prepared in its place (else raised)."""
        prepared: list[tuple | Exception] = []
        for item in received:
            try:
                prepared.append(Ledger._prepare_callback(item))
            except Exception as error:
                if not keep_errors:
                    raise
                prepared.append(error)
        return prepared

    @staticmethod
    def _prepare_callback(item: Mapping[str, Any]) -> tuple:
        """One callback's arguments for :meth:`_receive_in`: body decoded, headers cleaned."""
        raw = (item.get("raw_body") or b"").decode("utf-8", errors="replace")
        row = item.get("row")
        with contextlib.suppress(TypeError, ValueError):
            row = int(row)  # type: ignore[arg-type]
        cleaned = canonical_json(clean_headers(item.get("headers")))
        return (item.get("batch_id"), row, item.get("phase"), raw, cleaned,
                item.get("remote"), item.get("body"), item.get("refused"))  # fmt: skip

    def _callbacks_in(
        self, tx: _Tx, prepared: list[tuple | Exception]
    ) -> tuple[list[str | Exception], bool]:
        """Inside ``tx``: each prepared callback in its own savepoint; the verdicts (or errors)
        and whether any savepoint was rolled back."""
        results: list[str | Exception] = []
        rolled_back = False
        for args in prepared:
            if isinstance(args, Exception):  # could not even be prepared: stored as nothing
                results.append(args)
                continue
            tx.execute("SAVEPOINT callback")
            try:
                results.append(self._receive_in(tx, *args))
            except Exception as error:
                tx.execute("ROLLBACK TO callback")
                tx._last = None  # the chain's tail is read again from the table
                rolled_back = True
                if isinstance(error, sqlite3.Error | LedgerError):
                    # the ledger itself refused the write: nothing more to try, as alone
                    results.append(
                        error
                        if isinstance(error, LedgerError)
                        else LedgerError(f"ledger {self.path}: {error}")
                    )
                else:
                    self._keep_failed_callback(tx, args, error)
                    results.append(error)
            finally:
                tx.execute("RELEASE callback")
        return results, rolled_back

    def _keep_failed_callback(self, tx: _Tx, args: tuple, error: Exception) -> None:
        """Inside ``tx``: store a callback whose applying failed, verdict ``error``; never
        raises (the caller answers 5xx either way)."""
        batch_id, row, phase, raw, cleaned, remote = args[:6]
        tx.execute("SAVEPOINT kept")
        try:
            callback_id = self._insert_callback(
                tx, batch_id, row, phase, raw, cleaned, remote, {}, "error", False
            )
            tx.event(
                "callback_error",
                batch_id,
                row,
                {"callback_id": callback_id, "phase": phase, "error": type(error).__name__},
            )
        except Exception:
            tx.execute("ROLLBACK TO kept")
            tx._last = None
        finally:
            tx.execute("RELEASE kept")

    @staticmethod
    def _insert_callback(
        tx: _Tx,
        batch_id: Any,
        row: Any,
        phase: Any,
        raw: str,
        headers_text: str,
        remote: str | None,
        result: Mapping[str, Any],
        verdict: str,
        applied: bool,
    ) -> int:
        cursor = tx.execute(
            'INSERT INTO callbacks (received_at, batch_id, "row", phase, request_id, status, '
            "updated_records, raw_body, headers, remote, verdict, applied) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                now(),
                batch_id,
                row,
                phase,
                result.get("request_id"),
                result.get("status"),
                result.get("updated_records"),
                raw,
                headers_text,
                remote,
                verdict,
                1 if applied else 0,
            ),
        )
        return int(cursor.lastrowid or 0)

    def _receive_in(
        self,
        tx: _Tx,
        batch_id: str,
        row: int,
        phase: str,
        raw: str,
        headers_text: str,
        remote: str | None,
        body: Mapping[str, Any] | None,
        refused: str | None,
    ) -> str:
        """Store one callback and apply it to its row inside the open transaction ``tx``."""
        if refused is None and not isinstance(body, Mapping):
            refused = "bad_json"
        result = self._parse_result(body) if isinstance(body, Mapping) else {}
        if refused is not None:
            verdict = f"refused:{refused}"
            callback_id = self._insert_callback(
                tx, batch_id, row, phase, raw, headers_text, remote, result, verdict, False
            )
            tx.event(
                "callback_refused",
                batch_id,
                row,
                {"callback_id": callback_id, "phase": phase, "verdict": verdict},
            )
            return verdict
        current = tx.one('SELECT * FROM "rows" WHERE batch_id = ? AND "row" = ?', (batch_id, row))
        changes: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        if current is None or phase not in ("preview", "execute"):
            verdict = "unknown"
        elif self._is_duplicate(tx, batch_id, row, phase, result):
            verdict = "duplicate"
        elif phase == "preview":
            verdict = "stored"
        else:
            verdict, changes, extra = self._judge_execute(
                current, result, self._is_older_request(tx, current, result)
            )
        callback_id = self._insert_callback(
            tx,
            batch_id,
            row,
            phase,
            raw,
            headers_text,
            remote,
            result,
            verdict,
            verdict in _APPLIED_VERDICTS,
        )
        if changes:
            self._write_row(tx, batch_id, row, changes)
        data = {"callback_id": callback_id, "phase": phase, "verdict": verdict, **result}
        if changes.get("state"):
            data.update({"from": current["state"] if current else None, "to": changes["state"]})
        tx.event(f"callback_{verdict}", batch_id, row, {**data, **extra})
        return verdict

    @staticmethod
    def _parse_result(body: Mapping[str, Any]) -> dict[str, Any]:
        """requestId, status and payload.updatedRecords (and an ERROR's message) of a body."""
        payload = body.get("payload")
        payload = payload if isinstance(payload, Mapping) else {}
        status = body.get("status")
        request_id = body.get("requestId")
        message = payload.get("message") or payload.get("error") or body.get("message")
        result: dict[str, Any] = {
            "request_id": None if request_id is None else str(request_id),
            "status": status.strip().upper() if isinstance(status, str) else None,
            "updated_records": _count(payload.get("updatedRecords")),
        }
        if result["status"] == "ERROR":
            result["error"] = str(message)[:500] if message else "OMI reported ERROR"
        return result

    @staticmethod
    def _is_duplicate(
        tx: _Tx, batch_id: str, row: int, phase: str, result: Mapping[str, Any]
    ) -> bool:
        return (
            tx.one(
                'SELECT id FROM callbacks WHERE batch_id = ? AND "row" = ? AND phase = ? '
                "AND verdict NOT LIKE 'refused:%' AND verdict NOT IN ('unknown', 'error') "
                "AND request_id IS ? AND status IS ? AND updated_records IS ? LIMIT 1",
                (
                    batch_id,
                    row,
                    phase,
                    result.get("request_id"),
                    result.get("status"),
                    result.get("updated_records"),
                ),
            )
            is not None
        )

    @staticmethod
    def _is_older_request(tx: _Tx, current: Mapping[str, Any], result: Mapping[str, Any]) -> bool:
        """True when the callback names a request this row had before it was submitted again:
        the row knows no request id now (a resubmit cleared it), yet an earlier execute attempt
        of the row was answered with this one."""
        theirs = result.get("request_id")
        if not theirs or current.get("request_id"):
            return False
        found = tx.one(
            'SELECT id FROM attempts WHERE batch_id = ? AND "row" = ? AND phase = ? '
            "AND request_id = ? LIMIT 1",
            (current["batch_id"], current["row"], "execute", theirs),
        )
        return found is not None

    @staticmethod
    def _judge_execute(
        current: Mapping[str, Any], result: Mapping[str, Any], older: bool = False
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """The verdict of an execute callback on ``current`` and the row changes it brings;
        ``older``: the callback is known to name an earlier request of this row."""
        status = result.get("status")
        updated = result.get("updated_records")
        state = current["state"]
        if status not in ("SUCCESS", "ERROR"):
            return "unexpected", {}, {"reason": "status is neither SUCCESS nor ERROR"}
        theirs, ours = result.get("request_id"), current.get("request_id")
        if status == "ERROR" and theirs and (older or (ours and theirs != ours)):
            # An older request of a row submitted again: its failure says nothing of the
            # current request (which may well succeed). A SUCCESS of any request of this row,
            # though, is proof: the transfer is the same, so it is applied as usual below.
            return "stale", {}, {"current_request_id": ours}
        if state in ("submitted", "unconfirmed"):
            changes: dict[str, Any] = {
                "callback_status": status,
                "updated_records": updated,
                "completed_at": now(),
                "verified_by": "callback",
            }
            if not current.get("request_id") and result.get("request_id"):
                changes["request_id"] = result["request_id"]
            if status == "SUCCESS":
                changes.update(state="succeeded", error=None)
            else:
                changes.update(state="failed", error=result.get("error"))
            return ("late" if state == "unconfirmed" else "applied"), changes, {}
        if state in ("succeeded", "failed"):
            applied_status = current.get("callback_status")
            if applied_status is not None:  # a callback already gave this row its result
                same = status == applied_status and updated == current.get("updated_records")
                if same:
                    return "confirmed", {}, {}
                return (
                    "conflict",
                    _review(current, f"{applied_status} then {status}"),
                    {
                        "applied_status": applied_status,
                        "applied_records": current.get("updated_records"),
                    },
                )
            expected = "SUCCESS" if state == "succeeded" else "ERROR"
            if status == expected:  # settled by a verifying preview or by the HTTP answer
                changes = {"callback_status": status}
                if updated is not None:
                    changes["updated_records"] = updated
                return "confirmed", changes, {}
            how = "verified by preview" if current.get("verified_by") == "preview" else state
            return "conflict", _review(current, f"{how}, then {status}"), {"row_state": state}
        return "unexpected", {}, {"row_state": state}

    def find_callback(
        self, batch_id: str, row: int, phase: str, request_id: str | None = None
    ) -> dict | None:
        """The first stored, accepted (not refused, not unknown) callback for that row and
        phase, and that ``request_id`` if given; None when there is none yet."""
        sql = (
            'SELECT * FROM callbacks WHERE batch_id = ? AND "row" = ? AND phase = ? '
            "AND verdict NOT LIKE 'refused:%' AND verdict NOT IN ('unknown', 'error')"
        )
        params: list[Any] = [batch_id, int(row), phase]
        if request_id is not None:
            sql += " AND request_id = ?"
            params.append(request_id)
        found = self._query(sql + " ORDER BY id LIMIT 1", params)
        return _callback_out(found[0]) if found else None

    def callbacks(self, batch_id: str | None = None) -> list[dict]:
        """Every stored callback (of one batch, if given), in the order received."""
        if batch_id is None:
            found = self._query("SELECT * FROM callbacks ORDER BY id")
        else:
            found = self._query(
                "SELECT * FROM callbacks WHERE batch_id = ? ORDER BY id", (batch_id,)
            )
        return [_callback_out(c) for c in found]

    # ----------------------------------------------------------------- audit log

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
        """Recompute the chain in id order; name the first event edited, deleted, inserted or
        reordered, and compare the end of the chain with ``<ledger>.head``."""
        sidecar = self.read_head_file()  # read before the snapshot: it never runs ahead of it
        conn = self._db().conn
        try:
            conn.execute("BEGIN")
            try:
                return self._verify_chain(conn, sidecar)
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.Error as error:
            raise LedgerError(f"ledger {self.path}: {error}") from None

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
        conn = self._open()
        try:
            conn.execute("BEGIN")
            db = sqlite_utils.Database(conn, execute_plugins=False)
            by_batch = (batch_id,)
            for batch in db.query("SELECT * FROM batches WHERE id = ?", by_batch):
                yield {"type": "batch", **_batch_out(batch)}
            for row in db.query('SELECT * FROM "rows" WHERE batch_id = ? ORDER BY seq', by_batch):
                yield {"type": "row", **_row_out(row)}
            for table, kind in (("approvals", "approval"), ("attempts", "attempt")):
                for item in db.query(
                    f"SELECT * FROM {table} WHERE batch_id = ? ORDER BY id", by_batch
                ):
                    yield {"type": kind, **item}
            for item in db.query(
                "SELECT * FROM callbacks WHERE batch_id = ? ORDER BY id", by_batch
            ):
                yield {"type": "callback", **_callback_out(item)}
            for item in db.query("SELECT * FROM events WHERE batch_id = ? ORDER BY id", by_batch):
                item["data"] = json.loads(item["data"])
                yield {"type": "event", **item}
        finally:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            conn.close()

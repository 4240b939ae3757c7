"""The audit chain's hashing and its head file: the one JSON spelling that is hashed, how an
event is hashed onto the one before it, and ``<ledger>.head`` (the last event's id and hash).
The bottom of the ledger's chain: the store writes with it, ``chain`` verifies with it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

from filelock import lock_descriptor, unlock_descriptor

LOCK_POLL = 0.001  # seconds between tries for the head file's lock while another process has it

GENESIS = "0" * 64
HEAD_RECORD = 128  # bytes of the head file's one record: JSON padded with spaces, then \n
HEAD_READ_LIMIT = 4096  # bytes of a head file read: more than that is not a head file


# json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str),
# with its encoder made once: json.dumps makes one per call for arguments like these.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
)


def canonical_json(value: Any) -> str:
    """The one JSON spelling that is hashed: sorted keys, no spaces, UTF-8 kept as is."""
    return _CANONICAL.encode(value)


def _json_value(value: Any) -> str:
    """``json.dumps(value, ensure_ascii=False)`` for one field of an event, with the usual
    ones (text, None, a whole number) spelled directly: seven events a row, four fields each."""
    if isinstance(value, str):
        return encode_basestring(value)
    if value is None:
        return "null"
    if type(value) is int:
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def event_text(
    event_id: int, at: str, kind: str, batch_id: str | None, row: int | None, data_text: str
) -> str:
    """Canonical JSON of ``{id, at, kind, batch_id, row, data}`` with ``data_text`` (already
    canonical) spliced in as is, so verify hashes the stored bytes without re-encoding them."""
    return (
        f'{{"at":{_json_value(at)},"batch_id":{_json_value(batch_id)},"data":{data_text},'
        f'"id":{int(event_id)},"kind":{_json_value(kind)},"row":{_json_value(row)}}}'
    )


def event_hash(prev_hash: str, text: str) -> str:
    return hashlib.sha256((prev_hash + text).encode("utf-8")).hexdigest()


def now() -> str:
    """The current time as ISO 8601 UTC with milliseconds, e.g. ``2026-11-25T09:30:00.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def last_event(conn: sqlite3.Connection) -> tuple[int, str]:
    """The chain's last event as ``(id, hash)``; ``(0, GENESIS)`` for an empty log."""
    last = conn.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
    return (last[0], last[1]) if last else (0, GENESIS)


def append_event(
    conn: sqlite3.Connection,
    last: tuple[int, str],
    kind: str,
    batch_id: str | None,
    row: int | None,
    data: Mapping,
) -> tuple[int, str]:
    """Insert one event chained after ``last`` (``(id, hash)``), inside the caller's open
    transaction; return the new event's ``(id, hash)``."""
    last_id, prev_hash = last
    event_id = last_id + 1
    at = now()
    data_text = canonical_json(dict(data))
    row = None if row is None else int(row)
    digest = event_hash(prev_hash, event_text(event_id, at, kind, batch_id, row, data_text))
    conn.execute(
        'INSERT INTO events (id, "at", kind, batch_id, "row", data, prev_hash, hash) '
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (event_id, at, kind, batch_id, row, data_text, prev_hash, digest),
    )
    return event_id, digest


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


class HeadFile:
    """``<ledger>.head``: the last event's id and hash, kept beside the ledger file."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        # (pid, fd, (inode, device)) of this process's open head file
        self._held: tuple[int, int, tuple[int, int]] | None = None

    def publish(self, event_id: int, digest: str) -> None:
        """Write ``<ledger>.head`` after a commit, unless it already names a later event (two
        processes race: a lower id never overwrites a higher one).

        Called on EVERY commit, so it is made cheap rather than rare (issue 5/6): publishing
        less often would leave a window in which cutting the tail of the chain goes unnoticed.
        The file is one fixed-width record (:data:`HEAD_RECORD` bytes) in a file kept open per
        process; under the file's lock (``filelock.lock_descriptor``, readers take it too) we
        read the current record, compare ids and overwrite it in place with one ``pwrite``: no
        temp file, no rename, no fsync (the old way did not fsync either). It runs right after COMMIT, never
        before: a head written before a commit that then failed would name an event that does
        not exist, a false alarm. A crash between the two leaves the head one commit behind,
        which ``verify`` accepts (it checks that the event the head names is intact). The file
        is created whole (temp file + ``os.link``, which never overwrites), so it is never seen
        empty; one removed or replaced under us is noticed by inode and opened again."""
        record = _head_record(event_id, digest)
        with self._lock:
            for _ in range(3):  # bounded: the file would have to be replaced on every try
                fd = self._fd(record)
                if fd is None:  # created just now, holding our record
                    return
                lock_descriptor(fd, poll_interval=LOCK_POLL)
                try:
                    if not self._is_current():  # removed or replaced since it was opened
                        self._close_fd()
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
                    if self._held is not None:
                        unlock_descriptor(fd)

    def _fd(self, record: bytes) -> int | None:
        """This process's open descriptor of ``<ledger>.head`` (under ``_lock``); when
        there is no such file, create it holding ``record`` and return None. Also None when the
        file kept vanishing and appearing: this commit's head is skipped, the next one writes."""
        pid = os.getpid()
        if self._held is not None and self._held[0] == pid:
            return self._held[1]
        self._held = None  # inherited through fork: its flock would be the parent's too
        for _ in range(3):  # each turn opens the file or creates it, unless another races us
            try:
                fd = os.open(self.path, os.O_RDWR)
            except FileNotFoundError:
                temp = f"{self.path}.{pid}.{threading.get_ident()}.tmp"
                with open(temp, "wb") as handle:
                    handle.write(record)
                try:
                    os.link(temp, self.path)  # atomic, and never overwrites
                except FileExistsError:
                    continue  # another writer created it meanwhile: compare with theirs
                finally:
                    os.unlink(temp)
                return None
            held = os.fstat(fd)
            self._held = (pid, fd, (held.st_ino, held.st_dev))
            return fd
        return None

    def _is_current(self) -> bool:
        """Whether ``<ledger>.head`` is still the file this process holds open."""
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return False
        return self._held is not None and (named.st_ino, named.st_dev) == self._held[2]

    def close(self) -> None:
        """Close this process's descriptor of the file (the next publish opens it again)."""
        with self._lock:
            self._close_fd()

    def _close_fd(self) -> None:
        held, self._held = self._held, None
        if held is not None and held[0] == os.getpid():
            with contextlib.suppress(OSError):
                os.close(held[1])

    def read(self) -> tuple[int, str] | None:
        """``(event id, hash)`` from ``<ledger>.head``, or None when there is none; ``(-1, "")``
        when it is there but unreadable. Read under the file's lock, so never mid-write."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            lock_descriptor(fd, poll_interval=LOCK_POLL)
            found = os.read(fd, HEAD_READ_LIMIT)
        finally:
            os.close(fd)  # also releases the flock
        return _parse_head(found) or (-1, "")

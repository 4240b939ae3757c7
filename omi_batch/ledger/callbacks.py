"""Received callbacks: stored raw (without credentials), judged (``judging``), and applied to
their row in the same transaction; the stored callbacks and refusal counts read back."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Mapping
from typing import Any

from omi_batch.errors import LedgerError
from omi_batch.ledger.hashing import canonical_json, now
from omi_batch.ledger.judging import ACCEPTED_SQL, HELD, callback_key, judge
from omi_batch.ledger.rows import write_row
from omi_batch.ledger.schema import decode_callback
from omi_batch.ledger.store import Tx
from omi_batch.states import kind_of
from omi_batch.verdicts import APPLIED_VERDICTS, REFUSED, parse_result

# A header is dropped before storage when its lower-cased name contains any of these.
_CREDENTIAL_WORDS = ("token", "secret", "key", "authorization", "cookie", "password", "signature")


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


def insert_callback(
    tx: Tx,
    key: tuple,
    raw: str,
    headers_text: str,
    remote: str | None,
    verdict: str,
    applied: bool,
    receipt: str | None = None,
) -> int:
    """Store one callback under its :func:`~omi_batch.ledger.judging.callback_key`, inside
    ``tx``; return its id."""
    cursor = tx.execute(
        'INSERT INTO callbacks (received_at, batch_id, "row", phase, request_id, status, '
        "updated_records, raw_body, headers, remote, verdict, applied, receipt) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (now(), *key, raw, headers_text, remote, verdict, 1 if applied else 0, receipt),
    )
    return int(cursor.lastrowid or 0)


class Callbacks:
    """Storing, applying and reading callbacks (a part of :class:`Ledger`: needs ``_write``,
    ``_query`` and ``path`` from its store)."""

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
        receipt: str | None = None,
        may_hold: bool = False,
    ) -> str:
        """Store a received callback and apply it to its row, all in one transaction; return
        the verdict (refused:<why>, unknown, duplicate, stored, applied, late, confirmed,
        conflict, stale, unexpected, held). The raw callback is kept whatever the verdict.
        ``stale``: an ERROR for another request than the row's current one (the row was
        submitted again); it is kept and not applied. ``receipt``: the receiver's id of this
        delivery; one already stored returns its verdict and writes nothing. ``held`` (only
        with ``may_hold``): a SUCCESS for a row whose 202 is not stored yet; nothing is
        written, the caller tries again later."""
        raw = (raw_body or b"").decode("utf-8", errors="replace")
        with contextlib.suppress(TypeError, ValueError):
            row = int(row)
        cleaned = canonical_json(clean_headers(headers))
        try:
            with self._write() as tx:
                return self._receive_in(
                    tx, batch_id, row, phase, raw, cleaned, remote, body, refused, receipt,
                    may_hold,
                )  # fmt: skip
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
            tx.reread_head(rolled_back)
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
                prepared.append(Callbacks._prepare_callback(item))
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
                item.get("remote"), item.get("body"), item.get("refused"), item.get("receipt"),
                bool(item.get("may_hold")))  # fmt: skip

    def _callbacks_in(
        self, tx: Tx, prepared: list[tuple | Exception]
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
                tx.forget_tail()
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

    def _keep_failed_callback(self, tx: Tx, args: tuple, error: Exception) -> None:
        """Inside ``tx``: store a callback whose applying failed, verdict ``error``; never
        raises (the caller answers 5xx either way)."""
        batch_id, row, phase, raw, cleaned, remote = args[:6]
        tx.execute("SAVEPOINT kept")
        try:
            callback_id = insert_callback(
                tx, callback_key(batch_id, row, phase, {}), raw, cleaned, remote, "error", False
            )
            tx.event(
                "callback_error",
                batch_id,
                row,
                {"callback_id": callback_id, "phase": phase, "error": type(error).__name__},
            )
        except Exception:
            tx.execute("ROLLBACK TO kept")
            tx.forget_tail()
        finally:
            tx.execute("RELEASE kept")

    @staticmethod
    def _receive_in(
        tx: Tx,
        batch_id: str,
        row: int,
        phase: str,
        raw: str,
        headers_text: str,
        remote: str | None,
        body: Mapping[str, Any] | None,
        refused: str | None,
        receipt: str | None = None,
        may_hold: bool = False,
    ) -> str:
        """Store one callback and apply it to its row inside the open transaction ``tx``."""
        if receipt is not None:
            kept = tx.one("SELECT verdict FROM callbacks WHERE receipt = ?", (receipt,))
            if kept is not None:  # this very delivery is stored already (spool drained twice)
                return str(kept["verdict"])
        if refused is None and not isinstance(body, Mapping):
            refused = "bad_json"
        result = parse_result(body) if isinstance(body, Mapping) else {}
        key = callback_key(batch_id, row, phase, result)
        if refused is not None:
            verdict = f"{REFUSED}{refused}"
            callback_id = insert_callback(
                tx, key, raw, headers_text, remote, verdict, False, receipt
            )
            tx.event(
                "callback_refused",
                batch_id,
                row,
                {"callback_id": callback_id, "phase": phase, "verdict": verdict},
            )
            return verdict
        current, verdict, changes, extra = judge(tx, batch_id, row, phase, body, result, may_hold)
        if verdict == HELD:
            return verdict
        callback_id = insert_callback(
            tx, key, raw, headers_text, remote, verdict, verdict in APPLIED_VERDICTS, receipt
        )
        if changes:
            write_row(tx, batch_id, row, changes, kind_of(phase))
        data = {"callback_id": callback_id, "phase": phase, "verdict": verdict, **result}
        if changes:  # what the row was given, so verify can rebuild it from the events
            data["changes"] = dict(changes)
        if changes.get("state"):
            data.update({"from": current["state"] if current else None, "to": changes["state"]})
        tx.event(f"callback_{verdict}", batch_id, row, {**data, **extra})
        return verdict

    def find_callback(
        self, batch_id: str, row: int, phase: str, request_id: str | None = None
    ) -> dict | None:
        """The first stored, accepted (not refused, not unknown) callback for that row and
        phase, and that ``request_id`` if given; None when there is none yet."""
        sql = (
            'SELECT * FROM callbacks WHERE batch_id = ? AND "row" = ? AND phase = ? '
            f"AND {ACCEPTED_SQL}"
        )
        params: list[Any] = [batch_id, int(row), phase]
        if request_id is not None:
            sql += " AND request_id = ?"
            params.append(request_id)
        found = self._query(sql + " ORDER BY id LIMIT 1", params)
        return decode_callback(found[0]) if found else None

    def verdicts_since(self, batch_id: str, row: int, phase: str, since: str | None) -> list[str]:
        """The verdicts of the callbacks stored for that row and phase at or after ``since``
        (a ledger time; every one when None), in the order received, refused ones too."""
        found = self._query(
            'SELECT verdict FROM callbacks WHERE batch_id = ? AND "row" = ? AND phase = ? '
            "AND received_at >= ? ORDER BY id",
            (batch_id, int(row), phase, since or ""),
        )
        return [c["verdict"] for c in found]

    def callbacks(self, batch_id: str | None = None) -> list[dict]:
        """Every stored callback (of one batch, if given), in the order received."""
        if batch_id is None:
            found = self._query("SELECT * FROM callbacks ORDER BY id")
        else:
            found = self._query(
                "SELECT * FROM callbacks WHERE batch_id = ? ORDER BY id", (batch_id,)
            )
        return [decode_callback(c) for c in found]

    def record_refusals(self, counts: list[Mapping[str, Any]]) -> None:
        """Add refusal counts (``{"minute", "reason", "count"}`` each) and one audit event for
        them, in one transaction: how the receiver keeps what it refused without storing each
        request (issue 12)."""
        counts = [c for c in counts if int(c["count"]) > 0]
        if not counts:
            return
        with self._write() as tx:
            for item in counts:
                tx.execute(
                    "INSERT INTO refusals (minute, reason, count) VALUES (?, ?, ?) "
                    "ON CONFLICT (minute, reason) DO UPDATE SET count = count + excluded.count",
                    (str(item["minute"]), str(item["reason"])[:40], int(item["count"])),
                )
            tx.event(
                "callbacks_refused",
                None,
                None,
                {
                    "counts": [
                        {
                            "minute": str(c["minute"]),
                            "reason": str(c["reason"])[:40],
                            "count": int(c["count"]),
                        }
                        for c in counts
                    ]
                },  # fmt: skip
            )

    def refusals(self) -> list[dict]:
        """Refused callbacks counted per minute and reason, oldest first."""
        return self._query("SELECT minute, reason, count FROM refusals ORDER BY minute, reason")

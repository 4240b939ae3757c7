"""The audit ledger: one SQLite file holding batches, rows, attempts, callbacks, approvals and a
hash-chained audit log of events. The only code in omi-batch that speaks SQL.

``Ledger`` is the one object callers use; its parts live beside it, one job each:

- ``store``: connections, the short ``BEGIN IMMEDIATE`` write transactions, busy handling;
- ``schema``: the migrations (``PRAGMA user_version``);
- ``hashing``: event hashing and the ``<ledger>.head`` file (the bottom: imports no part);
- ``chain``: the events read back, ``verify`` and ``export``;
- ``fields``: what a row is made of (the columns callers may set, an attempt's columns);
- ``rows``: creating batches and their rows, reading them; the row SQL the parts share;
- ``steps``: row steps (attempts, fields, the state move and its event) and their group commit;
- ``decisions``: approve, skip, cancel;
- ``callbacks``: storing a received callback and applying its verdict, reading them back;
- ``judging``: the verdict of a callback against its transfer (rules in ``omi_batch.verdicts``);
- ``serial``: the one single-writer / group-commit path of a process.

No secret is ever stored: callback headers lose every credential before they are written, and
attempts keep only what the client's ``Attempt`` says (never a key).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omi_batch.ledger.callbacks import Callbacks, clean_headers
from omi_batch.ledger.chain import Audit, VerifyResult
from omi_batch.ledger.decisions import Decisions
from omi_batch.ledger.fields import ROW_FIELDS
from omi_batch.ledger.hashing import (
    GENESIS,
    HEAD_RECORD,
    canonical_json,
    event_hash,
    event_text,
    now,
)
from omi_batch.ledger.rows import Rows
from omi_batch.ledger.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from omi_batch.ledger.steps import Steps
from omi_batch.ledger.store import Store, new_batch_id, os_user
from omi_batch.states import STATES, TRANSITIONS


class Ledger(Rows, Steps, Decisions, Callbacks, Audit, Store):
    """The SQLite audit ledger at ``path``; safe to share across threads and processes.

    Its parts are side by side, not stacked: each uses only the store's ``_write``, ``_query``
    and ``path`` (and the public reads ``row``/``batch``), and the SQL they share are functions
    taking the open transaction (``rows.locked_row``, ``rows.write_row``, ``steps.step_in``)."""

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
            tx.reread_head(rolled_back or any(r is not None for r in results))
        return results, verdicts


__all__ = [
    "GENESIS",
    "HEAD_RECORD",
    "MIGRATIONS",
    "ROW_FIELDS",
    "SCHEMA_VERSION",
    "STATES",
    "TRANSITIONS",
    "Ledger",
    "VerifyResult",
    "canonical_json",
    "clean_headers",
    "event_hash",
    "event_text",
    "migrate",
    "new_batch_id",
    "now",
    "os_user",
]

"""What reading the file gives: its limits and words (columns, aliases, scopes), a checked
row, a resolved ``Transfer`` and the ``Plan``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from omi_batch.tables import (
    Problem,
)

MAX_CELL = 1_000  # an email, a boolean, one conversation id
MAX_CONV_IDS_CELL = 100_000  # a whole conv_ids cell (many ids)
MAX_NOTE = 10_000

EMAIL_CACHE = 200_000  # distinct address cells normalized once each (then the cache starts over)
MAX_PROBLEMS = 100  # problems an InputError carries (all are counted, and written on request)

FIELDS = ("source_email", "target_email", "replace_existing_members", "conv_ids", "note", "scope")
SCOPES = ("conversations", "tickets", "both")
# What a row moves, compared like header names (lower-case, no spaces, "_" or "-").
SCOPE_ALIASES = {
    **dict.fromkeys(
        ("conversations", "conversation", "convs", "conv", "chats", "chat"), "conversations"
    ),
    **dict.fromkeys(("tickets", "ticket"), "tickets"),
    **dict.fromkeys(("both", "all"), "both"),
}
REQUIRED = ("source_email", "target_email")
# Header names are compared lower-cased with spaces, "_" and "-" removed.
ALIASES = {
    "sourceemail": "source_email",
    "source": "source_email",
    "targetemail": "target_email",
    "target": "target_email",
    "replaceexistingmembers": "replace_existing_members",
    "convids": "conv_ids",
    "convid": "conv_ids",
    "note": "note",
    "scope": "scope",
}
BOOLEANS = {
    "": False,
    "false": False,
    "no": False,
    "0": False,
    "true": True,
    "yes": True,
    "1": True,
}
# conv_ids are separated by `,` `;` `|` or spaces (an id holds none of them). These are all but the
# comma, split after them, so a number Excel wrote with a decimal comma (6,92E+23) stays whole.
CONV_ID_SEPARATORS = re.compile(r"[;|\s]+")


@dataclass(frozen=True, slots=True)
class Transfer:
    """One transfer of the plan: the conversations of ``source_email`` go to ``target_email``.

    ``target_email`` is the target after chain resolution; ``requested_target`` is what the
    row says, and ``via`` the leaving agents the chain went through. No ``conv_ids`` means a
    catch-all: every conversation of the source not routed by its other rows.
    """

    row: int
    source_email: str
    target_email: str
    requested_target: str
    via: tuple[str, ...]
    conv_ids: tuple[str, ...]
    replace_existing_members: bool
    note: str
    scope: str = "conversations"  # conversations, tickets or both

    @property
    def catch_all(self) -> bool:
        """Takes every conversation of its source not routed by another row."""
        return not self.conv_ids and self.scope != "tickets"

    @property
    def moves_conversations(self) -> bool:
        return self.scope != "tickets"

    @property
    def moves_tickets(self) -> bool:
        return self.scope != "conversations"

    def to_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "source_email": self.source_email,
            "target_email": self.target_email,
            "requested_target": self.requested_target,
            "via": list(self.via),
            "conv_ids": list(self.conv_ids),
            "replace_existing_members": self.replace_existing_members,
            "note": self.note,
            "scope": self.scope,
        }


@dataclass
class Plan:
    """The validated input: transfers in the order they run, and the warnings to show."""

    source_file: str
    sha256: str
    input_rows: int
    transfers: list[Transfer]
    warnings: list[Problem]
    total_transfers: int | None = None  # before --limit; None means len(transfers)

    def sources(self) -> list[str]:
        """Distinct source agents, in plan order."""
        return list(dict.fromkeys(t.source_email for t in self.transfers))

    def targets(self) -> list[str]:
        """Distinct (resolved) target agents, in plan order."""
        return list(dict.fromkeys(t.target_email for t in self.transfers))

    def warnings_by_row(self) -> dict[int, list[str]]:
        """Each row's warnings (``code: message``), for the report line of that row; warnings
        about the whole file (no row) are not in it."""
        by_row: dict[int, list[str]] = {}
        for warning in self.warnings:
            if warning.row is not None:
                by_row.setdefault(warning.row, []).append(f"{warning.code}: {warning.message}")
        return by_row

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-ready data (what ``validate --json`` prints)."""
        return {
            **self.to_dict_head(),
            "transfers": [t.to_dict() for t in self.transfers],
            "warnings": [w.to_dict() for w in self.warnings],
        }

    def iter_json(self, batch: int = 1000) -> Iterator[str]:
        """``to_dict()`` as JSON text in pieces, one transfer a line: a plan of 100,000
        transfers is written without building it all in memory first."""
        head = self.to_dict_head()
        yield "{\n"
        for key, value in head.items():
            yield f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},\n"
        for key, items in (("transfers", self.transfers), ("warnings", self.warnings)):
            yield f'  "{key}": ['
            for start in range(0, len(items), batch):
                lines = (
                    ("\n    " if start + i == 0 else ",\n    ")
                    + json.dumps(item.to_dict(), ensure_ascii=False)
                    for i, item in enumerate(items[start : start + batch])
                )
                yield "".join(lines)
            yield ("\n  ]" if items else "]") + (",\n" if key == "transfers" else "\n")
        yield "}\n"

    def to_dict_head(self) -> dict[str, Any]:
        """Everything in ``to_dict()`` but the transfers and warnings lists."""
        total = len(self.transfers) if self.total_transfers is None else self.total_transfers
        return {
            "source_file": self.source_file,
            "sha256": self.sha256,
            "input_rows": self.input_rows,
            "total_transfers": total,
            "sources": len(self.sources()),
            "targets": len(self.targets()),
        }


class _Row(NamedTuple):
    row: int
    source: str
    target: str
    replace: bool
    conv_ids: tuple[str, ...]
    note: str
    scope: str

"""The outbox: the notifications not sent yet, one JSON line per notification and URL (the URL
as its template, never expanded), rewritten atomically."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from omi_batch.notify.messages import Message

log = logging.getLogger("omi_batch.notify")


@dataclass
class Entry:
    """One notification for one URL (the template, never expanded), as the outbox keeps it."""

    url: str
    kind: str
    title: str
    body: str
    batch: str | None = None
    attach: str | None = None
    created_at: str = ""
    attempts: int = 0
    last_error: str = ""

    @classmethod
    def of(cls, url: str, message: Message) -> Entry:
        return cls(url=url, kind=message.kind, title=message.title, body=message.body,
                   batch=message.batch, attach=message.attach,
                   created_at=datetime.now(UTC).isoformat(timespec="seconds"))  # fmt: skip


def read_entries(path: Path | None) -> list[Entry]:
    """The entries the outbox at ``path`` keeps (none without an outbox); a bad line is logged
    and skipped."""
    if path is None or not path.exists():
        return []
    entries = []
    names = set(Entry.__dataclass_fields__)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            entries.append(Entry(**{k: v for k, v in data.items() if k in names}))
        except (ValueError, TypeError):
            log.error("notification outbox %s: line %d is not an entry; skipped", path, number)
    return entries


def write_entries(path: Path, entries: list[Entry]) -> None:
    """Rewrite the outbox through a temporary file, so a crash leaves the old or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for entry in entries:
                out.write(json.dumps(asdict(entry), ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

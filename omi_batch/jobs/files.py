"""The folder helpers a tick uses: files waiting in a folder, free names, moves and copies, the
errors file beside a rejected input, and the small counts a tick logs."""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from omi_batch.errors import (
    UsageError,
)
from omi_batch.jobs.jobfile import _IGNORED_PREFIXES, _IGNORED_SUFFIXES
from omi_batch.states import (
    blocker_before,
    is_held,
)


def _files(folder: Path) -> list[Path]:
    """The files a person put in ``folder`` (not hidden, not half-written), oldest first."""
    found = []
    for path in folder.iterdir():
        name = path.name
        if name.startswith(_IGNORED_PREFIXES) or name.lower().endswith(_IGNORED_SUFFIXES):
            continue
        if path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


def _free_name(path: Path) -> Path:
    """``path``, or ``<stem>-<UTC time><suffix>`` beside it when that name is taken."""
    if not path.exists():
        return path
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        extra = f"-{stamp}" + (f"-{n}" if n > 1 else "")
        candidate = path.with_name(f"{path.stem}{extra}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise UsageError(f"too many files named like {path.name} in {path.parent}")


def _move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))


def _copy(source: Path, target: Path) -> None:
    """Copy through a temporary name, so a person never opens half a file."""
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def _write_errors(path: Path, message: str, problems: list) -> None:
    """The error report of a rejected file: ``row, code, message`` (UTF-8 with BOM, for Excel)."""
    from omi_batch.reports import escape_cell

    with open(path, "w", encoding="utf-8-sig", newline="") as handle:
        out = csv.writer(handle, lineterminator="\r\n")
        out.writerow(["row", "code", "message"])
        if not problems:
            out.writerow(["", "refused", escape_cell(message)])
        for problem in problems:
            row = getattr(problem, "row", None)
            code = getattr(problem, "code", "problem")
            text = getattr(problem, "message", str(problem))
            out.writerow(["" if row is None else row, code, escape_cell(text)])


def _freed(rows: list[dict]) -> list[int]:
    """Held rows no earlier row of whose source holds any more (``states.holds``): executing
    the batch again would run them, and resubmit nothing else (a still unconfirmed row before a
    held one keeps it held here)."""
    return [r["row"] for r in rows if is_held(r) and blocker_before(rows, r) is None]


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no rows"

"""Counting refused callbacks instead of storing each one (issue 12).

Anyone can POST to a callback URL. Storing every refusal whole let an unauthenticated sender
grow the ledger without bound (664 B for an empty POST, 209 KB with padded headers). So the
receiver counts refusals per reason and per minute, keeps only the first few of each reason per
hour as samples (truncated), and hands the counts of each finished minute to the ledger in one
write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

SAMPLES_PER_HOUR = 3  # refusals of one reason kept whole-ish (truncated) per hour


def minute_of(at: float) -> str:
    """The UTC minute of a timestamp, e.g. ``2026-12-01T21:34Z``."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%MZ")


class RefusalTally:
    """Thread-safe counts of refusals per (minute, reason), and which ones to keep as samples."""

    def __init__(
        self, samples_per_hour: int = SAMPLES_PER_HOUR, clock: Callable[[], float] = time.time
    ):
        self.samples_per_hour = int(samples_per_hour)
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._samples: dict[tuple[int, str], int] = {}  # (hour, reason) -> samples kept

    def add(self, reason: str) -> bool:
        """Count one refusal; True when it is one of the first samples of its reason this hour
        (the caller then stores it, truncated)."""
        at = self._clock()
        key = (minute_of(at), reason)
        hour = int(at // 3600)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            kept = self._samples.get((hour, reason), 0)
            if kept >= self.samples_per_hour:
                return False
            for old in [k for k in self._samples if k[0] < hour]:  # bounded: one hour kept
                del self._samples[old]
            self._samples[(hour, reason)] = kept + 1
            return True

    def take(self, *, everything: bool = False) -> list[dict]:
        """The counts of finished minutes (``everything``: the current one too), removed from
        the tally: ``[{"minute", "reason", "count"}]`` in minute order."""
        with self._lock:
            if not self._counts:  # the usual case: nothing refused (no clock read per call)
                return []
            current = minute_of(self._clock())
            keys = sorted(k for k in self._counts if everything or k[0] < current)
            return [
                {"minute": minute, "reason": reason, "count": self._counts.pop((minute, reason))}
                for minute, reason in keys
            ]

    def give_back(self, counts: list[dict]) -> None:
        """Put counts back that the ledger could not take, to be written with the next ones."""
        with self._lock:
            for item in counts:
                key = (item["minute"], item["reason"])
                self._counts[key] = self._counts.get(key, 0) + int(item["count"])

    def waiting(self) -> int:
        """How many refusals are counted and not yet handed to the ledger."""
        with self._lock:
            return sum(self._counts.values())

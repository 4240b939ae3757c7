"""Refused callbacks are counted per reason and minute, with a few samples an hour (issue 12)."""

from __future__ import annotations

from omi_batch.refusals import RefusalTally


class Clock:
    def __init__(self, at: float):
        self.at = at

    def __call__(self) -> float:
        return self.at


def test_refusals_are_counted_per_reason_and_minute_and_handed_over_once_the_minute_ends():
    clock = Clock(1_764_600_000.0)  # 2025-12-01T14:40:00Z
    tally = RefusalTally(samples_per_hour=2, clock=clock)
    kept = [tally.add("bad_credential") for _ in range(5)] + [tally.add("method")]
    assert kept == [True, True, False, False, False, True]
    assert tally.take() == []  # the minute is not over
    clock.at += 60
    tally.add("bad_credential")
    assert tally.take() == [
        {"minute": "2025-12-01T14:40Z", "reason": "bad_credential", "count": 5},
        {"minute": "2025-12-01T14:40Z", "reason": "method", "count": 1},
    ]
    assert tally.take(everything=True) == [
        {"minute": "2025-12-01T14:41Z", "reason": "bad_credential", "count": 1}
    ]
    assert tally.waiting() == 0


def test_samples_start_again_each_hour_and_counts_given_back_are_not_lost():
    clock = Clock(1_764_600_000.0)
    tally = RefusalTally(samples_per_hour=1, clock=clock)
    assert [tally.add("too_large"), tally.add("too_large")] == [True, False]
    clock.at += 3600
    assert tally.add("too_large") is True
    taken = tally.take(everything=True)
    tally.give_back(taken)
    assert tally.waiting() == 3

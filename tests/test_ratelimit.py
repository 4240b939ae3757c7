"""The shared adaptive limiter: alone on a fake clock (exact counts), then in front of the
simulator's hidden token bucket over real loopback (refused counts small, every call served)."""

from __future__ import annotations

import threading

import pytest
from helpers import API_KEY

from omi_batch.client import OmiClient, RateLimited, RetryPolicy
from omi_batch.config import Secret
from omi_batch.ratelimit import AdaptiveLimiter, SlowDown


class FakeTime:
    """A clock that moves only when someone sleeps."""

    def __init__(self):
        self.now = 100.0
        self.slept = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def fake_limiter(**options) -> tuple[AdaptiveLimiter, FakeTime]:
    time = FakeTime()
    return AdaptiveLimiter(clock=time.clock, sleep=time.sleep, **options), time


# --------------------------------------------------------------------------- alone


def test_it_starts_at_five_per_second_and_never_passes_its_ceiling():
    limiter, _ = fake_limiter(ceiling=20)
    assert limiter.rate == 5.0
    for _ in range(100):
        limiter.succeeded(limiter.acquire())
    assert limiter.rate == 20.0
    assert (limiter.slow_downs, limiter.refusals) == (0, 0)
    low, _ = fake_limiter(ceiling=2)
    assert low.rate == 2.0


def test_senders_are_spaced_at_the_current_rate():
    limiter, time = fake_limiter(ceiling=4, start=4)
    for _ in range(9):
        limiter.acquire()
    assert time.slept == pytest.approx(2.0)  # the first goes at once, then one each 1/4 s


def test_a_burst_of_refusals_sent_together_is_one_slow_down():
    events: list[SlowDown] = []
    limiter, _ = fake_limiter(ceiling=20, start=10, on_slow_down=events.append)
    tickets = [limiter.acquire() for _ in range(4)]  # all four in flight at once
    for ticket in tickets:
        limiter.refused(ticket, None, "OMI answered 429")
    assert limiter.slow_downs == 1 and limiter.refusals == 4
    assert len(events) == 1
    (event,) = events
    assert event.rate_before == 10.0
    assert event.rate_after == pytest.approx(0.7 * 4)  # 0.7 x the 4 requests sent in 1 s
    assert limiter.rate == event.rate_after
    limiter.refused(limiter.acquire(), None)  # sent after the slow-down: a new event
    assert limiter.slow_downs == 2 and len(events) == 2


def test_retry_after_pauses_every_sender_until_it_has_passed():
    limiter, time = fake_limiter(ceiling=100, start=100)
    first = limiter.acquire()
    start = time.now
    limiter.refused(first, 3.0)
    limiter.acquire()
    assert time.now - start >= 3.0


def test_after_a_slow_down_the_rate_climbs_back_by_steps():
    limiter, _ = fake_limiter(ceiling=50, start=10)
    limiter.refused(limiter.acquire(), None)
    low = limiter.rate
    rates = []
    for _ in range(40):
        limiter.succeeded(limiter.acquire())
        rates.append(limiter.rate)
    steps = {round(b - a, 9) for a, b in zip([low, *rates], rates, strict=False)}
    assert len(steps) == 1 and steps.pop() > 0  # additive: the same step each success
    assert rates[-1] < 50


def test_a_failing_hook_does_not_stop_the_sender():
    def broken(event: SlowDown) -> None:
        raise RuntimeError("boom")

    limiter, _ = fake_limiter(on_slow_down=broken)
    limiter.refused(limiter.acquire(), None)
    assert limiter.slow_downs == 1
    limiter.acquire()


@pytest.mark.parametrize(
    "bad", [{"ceiling": 0}, {"ceiling": -1}, {"decrease": 1.0}, {"decrease": 0}, {"recovery": 0}]
)
def test_a_bad_setting_is_refused(bad):
    with pytest.raises(ValueError):
        AdaptiveLimiter(**bad)


def test_many_threads_share_one_limiter():
    limiter = AdaptiveLimiter(ceiling=2000, start=2000)
    got: list[int] = []
    lock = threading.Lock()

    def send() -> None:
        for _ in range(50):
            ticket = limiter.acquire()
            limiter.succeeded(ticket)
            with lock:
                got.append(ticket.epoch)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(got) == 400 and set(got) == {0}


# --------------------------------------------------------------------------- before OMI


def run_previews(server, limiter, calls: int, threads: int) -> list:
    """``calls`` previews from ``threads`` threads through one client and one limiter."""
    errors: list = []
    results: list = []
    lock = threading.Lock()
    todo = iter(range(calls))

    with OmiClient(server.url, Secret(API_KEY), limiter=limiter, pool_size=threads) as client:

        def work() -> None:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                try:
                    result = client.transfer_conversations(
                        "lan.nguyen@example.vn", "minh.tran@example.vn", preview=True
                    )
                except Exception as error:  # noqa: BLE001 - the test counts them
                    with lock:
                        errors.append(error)
                else:
                    with lock:
                        results.append(result)

        pool = [threading.Thread(target=work) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(timeout=120)
    assert errors == []
    return results


@pytest.mark.parametrize("answer", ["header", "none", "envelope"])
def test_every_call_gets_through_a_hidden_limit_with_few_refusals(make_simulator, answer):
    sim, server = make_simulator(rate_limit="40", rate_limit_retry_after=answer)
    limiter = AdaptiveLimiter(ceiling=200)
    results = run_previews(server, limiter, calls=120, threads=8)
    assert len(results) == 120 and all(r.count is not None for r in results)
    stats = sim.stats
    assert stats["admitted"] == 120
    assert stats["refused"] <= 12  # at most 10% of the calls refused, every one retried
    assert limiter.refusals == stats["refused"]
    assert 1 <= limiter.slow_downs <= stats["refused"]


def test_a_limit_under_the_ceiling_is_found_from_a_low_start(make_simulator):
    sim, server = make_simulator(rate_limit="4:2")
    limiter = AdaptiveLimiter(ceiling=20)
    results = run_previews(server, limiter, calls=16, threads=4)
    assert len(results) == 16
    assert sim.stats["refused"] <= 5
    assert limiter.rate < 20


def test_a_limit_above_the_ceiling_is_never_met(make_simulator):
    sim, server = make_simulator(rate_limit="100")
    limiter = AdaptiveLimiter(ceiling=20)
    results = run_previews(server, limiter, calls=30, threads=4)
    assert len(results) == 30
    assert sim.stats["refused"] == 0 and limiter.slow_downs == 0


def refused_call(
    server, policy: RetryPolicy
) -> tuple[RateLimited, list, FakeTime, AdaptiveLimiter]:
    """One preview against a simulator scripted to refuse it (429s), on a
    fake clock: the RateLimited it ends with, its attempts, the clock, the limiter."""
    time = FakeTime()
    limiter = AdaptiveLimiter(ceiling=20, clock=time.clock, sleep=time.sleep)
    attempts: list = []
    with (
        OmiClient(
            server.url, Secret(API_KEY), limiter=limiter, retry=policy, on_attempt=attempts.append
        ) as client,  # fmt: skip
        pytest.raises(RateLimited) as caught,
    ):
        client.transfer_conversations("a@x.vn", "b@x.vn", preview=True)
    return caught.value, attempts, time, limiter


def too_many(retry_after: str) -> dict:
    return {
        "status": 429,
        "body": {"status_code": -9999, "message": "rate_limit_exceeded", "payload": None},
        "headers": {"Retry-After": retry_after},
    }


def test_a_rate_limit_fails_the_call_only_after_the_rate_limit_total(make_simulator):
    sim, server = make_simulator()
    sim.script(*[too_many("2")] * 30)
    policy = RetryPolicy(max_attempts=2, max_total=1, rate_limit_total=10)
    error, attempts, time, _ = refused_call(server, policy)
    assert error.kind == "rate_limited" and error.exit_code == 1
    assert 3 <= len(attempts) < 30  # more than max_attempts: a 429 is not a row's error
    assert all(a.error == "rate_limited" for a in attempts)
    assert time.slept >= 2.0 * (len(attempts) - 1)  # every Retry-After waited, for all
    assert time.slept <= 10 + 4  # and given up once 10 s of rate limiting had passed


def test_a_run_under_a_hidden_limit_succeeds_and_records_each_slow_down_once(
    runner, env, tmp_path, ledger_path, reports_dir
):
    from omi_batch.cli import cli
    from omi_batch.ledger import Ledger

    sim, _ = env
    sim.rate_limit = "10:1"
    rows = [("lan.nguyen", "hong.le"), ("bao.pham", "anh.vu"), ("hung.bui", "ngoc.do"),
            ("thu.dang", "mai.hoang")]  # fmt: skip
    path = tmp_path / "departures.csv"
    path.write_text("source_email,target_email\n" + "".join(
        f"{s}@example.vn,{t}@example.vn\n" for s, t in rows), encoding="utf-8")  # fmt: skip
    result = runner.invoke(cli, ["run", str(path), "--yes", "--rate", "200", "--concurrency", "8",
                                 "--listen", "127.0.0.1:0", "--ledger", str(ledger_path),
                                 "--reports", str(reports_dir)])  # fmt: skip
    assert result.exit_code == 0, result.output
    with Ledger(ledger_path) as ledger:
        (batch,) = ledger.batches()
        states = {r["state"] for r in ledger.rows(batch["id"])}
        slowed = [e for e in ledger.events(batch["id"]) if e["kind"] == "slowed_down"]
    assert states == {"succeeded"}
    refused = sim.stats["refused"]
    assert 1 <= len(slowed) <= refused <= 6  # one event per slow-down, never one per refusal
    assert all(e["data"]["rate_after"] < e["data"]["rate_before"] for e in slowed)


@pytest.mark.parametrize("retry_after", ["100000", "Wed, 21 Oct 2099 07:28:00 GMT"])
def test_a_retry_after_past_the_budget_fails_the_call_at_once_and_pauses_no_longer(
    make_simulator, retry_after
):
    # A Retry-After of 27 hours would have frozen every sender that long, silently.
    sim, server = make_simulator()
    sim.script(too_many(retry_after))
    error, attempts, time, limiter = refused_call(server, RetryPolicy(rate_limit_total=300))
    assert error.kind == "rate_limited"
    assert len(attempts) == 1 and time.slept < 1  # given up at once: not worth waiting for
    limiter.acquire()  # the next sender waits out the pause, bounded by the budget
    assert 299 <= time.slept <= 301

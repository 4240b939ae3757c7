"""How fast the OMI client talks to the simulator over loopback, and what retries cost.

Run: .venv/bin/python bench/bench_client.py
Prints one line per figure. Bounded (a few thousand requests), loopback only.
"""

from __future__ import annotations

import random
import threading
import time

from omi_batch.client import OmiClient, RetryPolicy, ServerError
from omi_batch.config import Secret
from omi_batch.simulator import Faults, Simulator

KEY = "bench-key"


def previews(url: str, source: str, target: str, *, total: int, threads: int) -> float:
    """Seconds to run ``total`` previews from ``threads`` threads sharing one client."""
    per_thread = total // threads
    failures: list[BaseException] = []
    with OmiClient(url, Secret(KEY), pool_size=threads, sleep=lambda s: None) as client:

        def work() -> None:
            try:
                for _ in range(per_thread):
                    client.transfer_conversations(source, target, preview=True)
            except BaseException as exc:  # noqa: BLE001 - counted below
                failures.append(exc)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=300)
        wall = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{len(failures)} threads failed, first: {failures[0]}")
    return wall


def main() -> None:
    sim = Simulator(api_key=KEY)
    server = sim.start(host="127.0.0.1", port=0)
    try:
        source, target = sim.moving_pair()
        for threads in (1, 16):
            total = 400 if threads == 1 else 2000
            wall = previews(server.url, source, target, total=total, threads=threads)
            print(
                f"client {total} previews, {threads} thread(s): {wall:.2f} s wall, "
                f"{total / wall:.0f} req/s (goal > 100 req/s)"
            )
    finally:
        server.stop()

    # Retries: half the answers are 503; count attempts and check every call still ends.
    flaky = Simulator(api_key=KEY, faults=Faults(error_rate=0.5), seed=1)
    server = flaky.start(host="127.0.0.1", port=0)
    try:
        source, target = flaky.moving_pair()
        attempts: list = []
        ok = failed = 0
        policy = RetryPolicy(max_attempts=5, base=0.001, max_wait=0.002, max_total=10)
        with OmiClient(
            server.url,
            Secret(KEY),
            retry=policy,
            on_attempt=attempts.append,
            rng=random.Random(3),
        ) as client:
            start = time.perf_counter()
            for _ in range(300):
                try:
                    client.transfer_conversations(source, target, preview=True)
                    ok += 1
                except ServerError:
                    failed += 1
            wall = time.perf_counter() - start
        print(
            f"client 300 previews at 50% 503: {wall:.2f} s wall, {len(attempts)} attempts, "
            f"{ok} ok, {failed} gave up after 5 (expect about 600 attempts, about 3% give up)"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()

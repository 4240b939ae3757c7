"""The adaptive rate limiter against limits it is not told (issue 13 §1).

Run: .venv/bin/python bench/bench_ratelimit.py [--rows N] [--slow-rows N] [--answer header|none|envelope]

For each hidden limit (2, 20 and 100 requests/s, a token bucket holding one second's worth),
``omi-batch run FILE --yes`` (preflight, directory check, preview of every row, execute of every
row with its callback) runs twice: with the default flags, and with ``--rate 200 --concurrency
16``. The 2 req/s limit gets ``--slow-rows`` rows (default 40: about 80 requests, 40 s a run)
instead of ``--rows`` (default 200), to keep the whole benchmark near four minutes.

Printed per run: the limit, the flags, the command's seconds, the achieved rate (requests OMI
admitted over the span from the first request to the last), its share of the limit (or of the
ceiling, when the limit is above it), the share of requests refused, and whether every row
succeeded. Goals: >= 90 % of the limit when it is under the ceiling, <= 5 % refused, every row
succeeded. The simulator runs in its own process; loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_inputs

KEY = "bench-api-key-ratelimit"
SECRET = "bench-webhook-secret-ratelimit"
LIMITS = (2, 20, 100)
FLAGS = ((), ("--rate", "200", "--concurrency", "16"))
DEFAULT_CEILING = 20.0

# The simulator's child: serves until stdin closes; on "stats" prints its counts and the span
# of the requests it saw (first to last), as one JSON line.
CHILD = r"""
import json, sys
from datetime import datetime
from omi_batch.simulator import Simulator
fixture, limit, answer, key = sys.argv[1:5]
sim = Simulator(fixture=fixture, api_key=key, rate_limit=limit, rate_limit_retry_after=answer,
                directory_auth="both")
server = sim.start(host="127.0.0.1", port=0)
print(server.url, flush=True)
for line in sys.stdin:
    if line.strip() == "stats":
        times = [datetime.fromisoformat(e["at"]) for e in sim.events if e["kind"] == "request"]
        span = (max(times) - min(times)).total_seconds() if len(times) > 1 else 0.0
        print(json.dumps(dict(sim.stats, span=span)), flush=True)
server.stop()
"""


def one_run(folder: Path, rows: int, limit: float, flags: tuple[str, ...], answer: str) -> dict:
    fixture, plan = write_inputs(folder, rows, name=f"fixture-{rows}")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(fixture), f"{limit:g}", answer, KEY],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = child.stdout.readline().strip()  # bounded: the child prints it or exits
        if not url.startswith("http://127.0.0.1"):
            raise SystemExit(f"the simulator did not start: {url!r}")
        env = dict(os.environ, OMI_BASE_URL=url, OMI_API_KEY=KEY, OMI_WEBHOOK_SECRET=SECRET)
        env.pop("OMI_WEBHOOK_URL", None)
        work = Path(tempfile.mkdtemp(dir=folder))
        command = [sys.executable, "-m", "omi_batch", "run", str(plan), "--yes",
                   "--listen", "127.0.0.1:0", "--ledger", str(work / "ledger.db"),
                   "--reports", str(work / "reports"), *flags]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - started
        child.stdin.write("stats\n")
        child.stdin.flush()
        stats = json.loads(child.stdout.readline())
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    if done.returncode not in (0, 1):
        sys.stderr.write(done.stderr[-2000:])
    achieved = stats["admitted"] / stats["span"] if stats["span"] else 0.0
    ceiling = float(flags[1]) if flags else DEFAULT_CEILING
    return {
        "limit": limit,
        "flags": " ".join(flags) or "(defaults)",
        "rows": rows,
        "seconds": seconds,
        "requests": stats["requests"],
        "achieved": achieved,
        "share": achieved / min(limit, ceiling),
        "share_of_limit": achieved / limit,
        "refused": stats["refused"] / max(1, stats["requests"]),
        "ok": done.returncode == 0,
        "exit": done.returncode,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--slow-rows", type=int, default=40)
    parser.add_argument("--answer", default="header", choices=("header", "none", "envelope"))
    parser.add_argument("--limits", default=",".join(str(x) for x in LIMITS))
    args = parser.parse_args()
    limits = [float(x) for x in args.limits.split(",") if x]
    print(f"hidden limit answered with Retry-After: {args.answer}; rows {args.rows} "
          f"({args.slow_rows} for limits under 5 req/s)")  # fmt: skip
    print(f"{'limit':>6} {'flags':<28} {'rows':>5} {'seconds':>8} {'requests':>8} "
          f"{'achieved/s':>10} {'share':>6} {'of limit':>8} {'refused':>8} {'rows ok':>7}")  # fmt: skip
    failed = 0
    with tempfile.TemporaryDirectory(prefix="bench-ratelimit-") as tmp:
        for limit in limits:
            rows = args.slow_rows if limit < 5 else args.rows
            for flags in FLAGS:
                r = one_run(Path(tmp), rows, limit, flags, args.answer)
                goal = r["refused"] <= 0.05 and r["ok"] and r["share"] >= 0.9
                ok = "yes" if r["ok"] else f"NO ({r['exit']})"
                failed += not goal
                print(f"{r['limit']:>6g} {r['flags']:<28} {r['rows']:>5} {r['seconds']:>8.1f} "
                      f"{r['requests']:>8} {r['achieved']:>10.1f} {r['share']:>6.0%} "
                      f"{r['share_of_limit']:>8.0%} {r['refused']:>8.1%} "
                      f"{ok:>7}"
                      f"{'' if goal else '  <- goal missed'}", flush=True)  # fmt: skip
    print("share: of the limit, or of the ceiling (--rate) when the limit is above it; "
          "goal >= 90 %, refused <= 5 %, every row succeeded")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

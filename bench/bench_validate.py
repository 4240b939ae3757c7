"""Benchmark: `omi-batch validate` on a generated 100,000-row offboarding CSV.

Runs `python -m omi_batch validate FILE --json > /dev/null` as a subprocess and prints its wall
time and peak memory (ru_maxrss of the child). Goal: under 5 s and under 250 MB.

    .venv/bin/python bench/bench_validate.py [--rows N]
"""

from __future__ import annotations

import argparse
import csv
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_SECONDS = 5.0
GOAL_MB = 250.0


def write_roster(path: Path, rows: int) -> None:
    """A realistic big file: each leaving agent has 3 rows with conv_ids and 1 catch-all; one
    catch-all in ten goes to another leaving agent (a chain); notes in Vietnamese."""
    sources = rows // 4
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["source_email", "target_email", "conv_ids", "replace_existing_members", "note"]
        )
        written = 0
        for i in range(sources):
            source = f"nhan.vien.{i}@acme-corp.vn"
            stay = f"agent.{i % 5000}@stay.acme-corp.vn"
            for k in range(3):
                ids = f"{i:08x}{k:016x};{i:08x}{k + 3:016x}"
                writer.writerow([source, stay, ids, "no", ""])
            target = f"nhan.vien.{i - 1}@acme-corp.vn" if i % 10 == 1 else stay
            writer.writerow([source, target, "", "", "Nghỉ việc, chuyển hội thoại cho đồng nghiệp"])
            written += 4
        for i in range(rows - written):  # pad to exactly `rows`
            writer.writerow([f"extra.{i}@acme-corp.vn", "agent.0@stay.acme-corp.vn", "", "", ""])


def run_validate(path: Path, *extra: str) -> tuple[float, float, int]:
    """Wall seconds, peak MB of the child, and its exit code."""
    started = time.perf_counter()
    with open("/dev/null", "w") as devnull:
        done = subprocess.run(
            [sys.executable, "-m", "omi_batch", "validate", str(path), *extra],
            stdout=devnull,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
        )
    wall = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    if done.returncode != 0:
        sys.stderr.write(done.stderr.decode("utf-8", "replace")[-2000:])
    return wall, peak_mb, done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as folder:
        path = Path(folder) / "departures.csv"
        write_roster(path, args.rows)
        size_mb = path.stat().st_size / 1e6
        wall, peak, code = run_validate(path, "--json")
        label = f"{args.rows // 1000}k" if args.rows % 1000 == 0 else str(args.rows)
        print(
            f"validate {label} rows ({size_mb:.1f} MB file) --json: {wall:.2f} s wall, "
            f"{peak:.0f} MB peak (goal < {GOAL_SECONDS:g} s, < {GOAL_MB:g} MB)"
            + ("" if code == 0 else f" EXIT {code}")
        )
        ok = code == 0 and wall < GOAL_SECONDS and peak < GOAL_MB
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

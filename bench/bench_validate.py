"""Benchmark: `omi-batch validate` on a generated 100,000-row offboarding CSV, and its peak
memory on 1,000,000 invalid rows.

Runs `python -m omi_batch validate FILE --json > /dev/null` as a subprocess and prints its wall
and CPU time and peak memory (ru_maxrss of the child). Goal: under 5 s and under 250 MB. Then
validates a file of 1,000,000 rows that are all wrong (every row a bad address, every other one
a bad flag): the checks stream, so peak memory stays near 3x the file's size (goal: under 4x)
and stderr tells the first 100 problems, not a million lines.

    .venv/bin/python bench/bench_validate.py [--rows N] [--bad-rows N]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

GOAL_SECONDS = 5.0
GOAL_MB = 250.0
GOAL_BAD_RATIO = 4.0  # peak memory / file size on the all-invalid file


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


def write_bad_roster(path: Path, rows: int) -> None:
    """Every row wrong: a source address without a domain suffix; every other flag unreadable."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        handle.write("source_email,target_email,replace_existing_members,conv_ids,note\n")
        for i in range(rows):
            flag = "maybe" if i % 2 else ""
            handle.write(f"nhan.vien.{i}@acme-corp,agent.{i % 5000}@stay.acme-corp.vn,{flag},,\n")


def run_validate(path: Path, *extra: str, expect: int = 0) -> tuple[float, float, float, bytes]:
    """Wall seconds, CPU seconds and peak MB of a child (in a fresh process, so the peak is its
    own), and its stderr."""
    code = (
        "import resource, subprocess, sys, time\n"
        "started = time.perf_counter()\n"
        "done = subprocess.run([sys.executable, '-m', 'omi_batch', 'validate', *sys.argv[1:]],"
        " stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=1800, check=False)\n"
        "wall = time.perf_counter() - started\n"
        "use = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "sys.stdout.write(f'{wall} {use.ru_utime + use.ru_stime} {use.ru_maxrss / 1024} "
        "{done.returncode}\\n')\n"
        "sys.stdout.flush(); sys.stdout.buffer.write(done.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), *extra],
        capture_output=True,
        timeout=1900,
        check=True,
    )
    first, _, stderr = done.stdout.partition(b"\n")
    wall, cpu, peak, returncode = first.split()
    if int(returncode) != expect:
        sys.stderr.write(stderr.decode("utf-8", "replace")[-2000:])
        raise SystemExit(f"validate exited {int(returncode)}, expected {expect}")
    return float(wall), float(cpu), float(peak), stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--bad-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as folder:
        path = Path(folder) / "departures.csv"
        write_roster(path, args.rows)
        size_mb = path.stat().st_size / 1e6
        wall, cpu, peak, _ = run_validate(path, "--json")
        print(
            f"validate {label(args.rows)} rows ({size_mb:.1f} MB file) --json: {wall:.2f} s wall, "
            f"{cpu:.2f} s CPU, {peak:.0f} MB peak (goal < {GOAL_SECONDS:g} s, < {GOAL_MB:g} MB)"
        )
        ok = wall < GOAL_SECONDS and peak < GOAL_MB
        path.unlink()
        bad = Path(folder) / "all-wrong.csv"
        write_bad_roster(bad, args.bad_rows)
        size_mb = bad.stat().st_size / 1e6
        wall, cpu, peak, stderr = run_validate(bad, expect=2)
        ratio = peak / size_mb
        lines = stderr.count(b"\n")
        print(
            f"validate {label(args.bad_rows)} invalid rows ({size_mb:.1f} MB file): "
            f"{wall:.2f} s wall, {cpu:.2f} s CPU, {peak:.0f} MB peak = {ratio:.1f}x the file "
            f"(goal < {GOAL_BAD_RATIO:g}x), {lines} lines on stderr"
        )
        ok = ok and ratio < GOAL_BAD_RATIO
    return 0 if ok else 1


def label(rows: int) -> str:
    if rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    return f"{rows // 1000}k" if rows % 1000 == 0 else str(rows)


if __name__ == "__main__":
    sys.exit(main())

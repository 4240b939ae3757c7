"""Run every benchmark in bench/ (each a bench_*.py script) and print their figures.

    make bench                     # all of them
    .venv/bin/python bench/run.py validate ledger   # only those whose name contains a word

Each script is bounded, talks only to 127.0.0.1 and prints one line per figure.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(words: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if words:
        scripts = [s for s in scripts if any(w in s.stem for w in words)]
    failed = 0
    for script in scripts:
        print(f"## {script.stem}", flush=True)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(script)], cwd=HERE.parent, timeout=900)
        print(f"   ({time.perf_counter() - started:.1f} s, exit {done.returncode})", flush=True)
        failed += done.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

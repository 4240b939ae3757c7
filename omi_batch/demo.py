"""``make demo``: the whole flow against the built-in OMI simulator, with no configuration.

It starts ``omi-batch simulator serve --port 0`` as a real subprocess and reads its address,
then, with a random API key and webhook secret, in a fresh folder (``data/demo/<time>/``:
ledger, reports, logs):

1. ``omi-batch validate data/sample_offboarding.csv --check-agents``: the sample's last row (8)
   names a target agent with no OMI account, and the directory check catches it (exit 2,
   nothing sent);
2. as an operator would, it writes a copy of the sample without the rows caught into that
   folder (the caught row is the last, so every other row keeps its number in the run);
3. ``omi-batch run COPY --yes --listen 127.0.0.1:0`` (preview, execute, callbacks, reports);

then checks the outcome in the ledger, and stops the simulator whatever happens.

The sample has a chain (a→b, b→c), a source split by ``conv_ids``, a row whose open tickets move
with its conversations (``scope=both``: two transfers, the tickets after the conversations),
Vietnamese names, and that one row caught by the directory check. The demo exits 0 when the
flow behaved as designed (that row caught, every other row succeeded), 1 when anything else
happened, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import csv
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

ADDRESS = re.compile(r"OMI simulator listening on (http://\S+)")
PROBLEM = re.compile(r"^\s*row (\d+): (\w+): (.*)$", re.M)
# What the directory check may catch in the demo's input, as designed: an agent with no account.
DESIGNED = ("target_not_found",)
VALIDATE_TIMEOUT = 60.0
START_TIMEOUT = 30.0  # seconds for the simulator to print its address
RUN_TIMEOUT = 180.0  # seconds for the whole `omi-batch run`
STOP_TIMEOUT = 15.0
# The variables the demo sets itself; anything the caller has under these names is ignored.
OMI_VARIABLES = ("OMI_BASE_URL", "OMI_API_KEY", "OMI_WEBHOOK_URL", "OMI_WEBHOOK_SECRET",
                 "OMI_BATCH_LEDGER")  # fmt: skip


class DemoFailed(Exception):
    """The flow did not behave as designed; the message says how."""


def project_root() -> Path:
    """The folder holding ``data/``: the current one when it has the sample, else the source tree."""
    here = Path.cwd()
    if (here / "data" / "sample_offboarding.csv").exists():
        return here
    return Path(__file__).resolve().parent.parent


def command(*args: str) -> list[str]:
    """``omi-batch ARGS`` run with this interpreter (works from a venv without activating it)."""
    return [sys.executable, "-m", "omi_batch", *args]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OMI_VARIABLES}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class SimulatorProcess:
    """``omi-batch simulator serve --port 0`` in a subprocess; ``url`` once it listens."""

    def __init__(self, api_key: str, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            command("simulator", "serve", "--host", "127.0.0.1", "--port", "0"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=clean_env(OMI_API_KEY=api_key),
        )
        self.url = self._read_address()

    def _read_address(self) -> str:
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        try:
            line = lines.get(timeout=START_TIMEOUT)
        except queue.Empty:
            raise DemoFailed(f"the simulator printed no address within {START_TIMEOUT:g} s "
                             f"(its log: {self.log_path})") from None  # fmt: skip
        match = ADDRESS.search(line or "")
        if not match:
            raise DemoFailed(f"the simulator did not start (its log: {self.log_path})")
        return match.group(1)

    def stop(self) -> None:
        """SIGTERM (the simulator stops cleanly on it), then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        self._log.close()


def caught_rows(validate_code: int, output: str) -> dict[int, str]:
    """``{row: problem}`` the directory check caught as designed (a target agent with no OMI
    account); DemoFailed when ``validate --check-agents`` said anything else."""
    if validate_code == 0:
        return {}
    if validate_code != 2:
        raise DemoFailed(f"omi-batch validate exited {validate_code}")
    found = PROBLEM.findall(output)
    others = [f"row {row}: {code}: {text}" for row, code, text in found if code not in DESIGNED]
    if others or not found:
        raise DemoFailed("omi-batch validate found a problem other than the designed one: "
                         + ("; ".join(others) or output.strip().splitlines()[-1]))  # fmt: skip
    return {int(row): f"{code}: {text}" for row, code, text in found}


def without_rows(source: Path, target: Path, rows: set[int]) -> Path:
    """A copy of the CSV ``source`` at ``target`` without ``rows`` (numbered as Excel shows
    them: the header is row 1), every other cell as it was."""
    with source.open(encoding="utf-8-sig", newline="") as handle:
        records = list(csv.reader(handle))
    kept = [r for number, r in enumerate(records, start=1) if number not in rows]
    with target.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(kept)
    return target


def check_outcome(ledger_path: Path, reports_dir: Path, run_code: int) -> list:
    """The transfers that succeeded (every one must have: conversations and tickets, each
    confirmed by its own callback); DemoFailed when anything else happened."""
    from omi_batch.ledger import Ledger

    if run_code != 0:
        raise DemoFailed(f"omi-batch run exited {run_code}")
    if not ledger_path.exists():
        raise DemoFailed("omi-batch run wrote no ledger")
    with Ledger(ledger_path) as ledger:
        batches = ledger.batches()
        if len(batches) != 1:
            raise DemoFailed(f"expected one batch in the ledger, found {len(batches)}")
        batch_id = batches[0]["id"]
        rows = ledger.rows(batch_id)
        verified = ledger.verify()
    # The demo says "confirmed by OMI's callbacks": only rows a SUCCESS callback decided count.
    succeeded = [r for r in rows if r["state"] == "succeeded" and r["verified_by"] == "callback"]
    others = [r for r in rows if r not in succeeded]
    if others:
        listed = "; ".join(f"row {r['row']}{' (tickets)' if r['kind'] == 'tickets' else ''} "
                           f"is {r['state']}: {r['error'] or r['preview_error']}"
                           for r in others)  # fmt: skip
        raise DemoFailed(f"unexpected outcome: {listed}")
    if not succeeded:
        raise DemoFailed("no transfer succeeded")
    for kind in ("preview", "targets", "results", "retry"):
        if not (reports_dir / f"{batch_id}-{kind}.csv").exists():
            raise DemoFailed(f"the {kind} report was not written")
    if not verified.ok:
        raise DemoFailed(f"the ledger does not verify (first bad event {verified.first_bad})")
    return succeeded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m omi_batch.demo",
        description="Run the whole offboarding flow against the built-in OMI simulator.",
    )
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the ledger, reports and logs "
                             "(default: data/demo/<UTC time>/)")  # fmt: skip
    parser.add_argument("--csv", type=Path, default=None,
                        help="input file (default: data/sample_offboarding.csv)")  # fmt: skip
    args = parser.parse_args(argv)

    root = project_root()
    csv_path = (args.csv or root / "data" / "sample_offboarding.csv").resolve()
    out = args.out
    if out is None:
        demo_dir = root / "data" / "demo"
        demo_dir.mkdir(parents=True, exist_ok=True)
        ignore = demo_dir / ".gitignore"
        if not ignore.exists():  # demo output never ends up in a commit
            ignore.write_text("*\n", encoding="utf-8")
        out = demo_dir / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ledger_path, reports_dir = out / "ledger.db", out / "reports"
    api_key = "demo-" + secrets.token_hex(8)

    def say(text: str = "") -> None:
        print(text, flush=True)

    say(f"omi-batch demo: the whole flow on {_show(csv_path)} against the built-in OMI "
        "simulator (no configuration, no network).")  # fmt: skip
    say(f"Everything goes to {_show(out)}")
    simulator = None
    try:
        simulator = SimulatorProcess(api_key, out / "simulator.log")
        say(f"OMI simulator listening on {simulator.url} (sample fixture: 15 agents, "
            "300 conversations, 90 tickets)")  # fmt: skip
        env = clean_env(OMI_BASE_URL=simulator.url, OMI_API_KEY=api_key,
                        OMI_WEBHOOK_SECRET=secrets.token_urlsafe(32))  # fmt: skip
        validate_args = ["validate", str(csv_path), "--check-agents"]
        say("$ omi-batch " + " ".join(_show(a) for a in validate_args))
        try:
            checked = subprocess.run(command(*validate_args), env=env, stdin=subprocess.DEVNULL,
                                     capture_output=True, text=True, timeout=VALIDATE_TIMEOUT,
                                     check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise DemoFailed(
                f"omi-batch validate took longer than {VALIDATE_TIMEOUT:g} s"
            ) from None
        print(checked.stderr, end="", file=sys.stderr, flush=True)  # its problems, by row
        caught = caught_rows(checked.returncode, checked.stderr)
        for row, problem in sorted(caught.items()):
            agent = re.search(r"\S+@\S+", problem)
            say(f"Row {row} caught before anything moved, as designed: "
                f"{agent.group(0) if agent else 'its target'} has no OMI account (exit 2, "
                "nothing was sent, no batch was created).")  # fmt: skip
        run_path = csv_path
        if caught:
            numbers = "-".join(str(row) for row in sorted(caught))
            run_path = without_rows(csv_path, out / f"{csv_path.stem}-without-row-{numbers}.csv",
                                    set(caught))  # fmt: skip
            say(f"As an operator would, the demo writes a copy without it and runs that: "
                f"{_show(run_path)}")  # fmt: skip
        run_args = ["run", str(run_path), "--yes", "--listen", "127.0.0.1:0",
                    "--ledger", str(ledger_path), "--reports", str(reports_dir),
                    "--wait", "30"]  # fmt: skip
        say("$ omi-batch " + " ".join(_show(a) for a in run_args))
        try:
            finished = subprocess.run(command(*run_args), env=env, stdin=subprocess.DEVNULL,
                                      timeout=RUN_TIMEOUT, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise DemoFailed(f"omi-batch run took longer than {RUN_TIMEOUT:g} s") from None
        succeeded = check_outcome(ledger_path, reports_dir, finished.returncode)
    except KeyboardInterrupt:
        say("Interrupted: the simulator is stopped.")
        return 130
    except DemoFailed as error:
        say(f"The demo did not behave as designed: {error}.")
        say(f"Look at {_show(out)} (ledger.db, reports/, simulator.log).")
        return 1
    finally:
        if simulator is not None:
            simulator.stop()

    say()
    say(f"Reports in {_show(reports_dir)}:")
    for path in sorted(p for p in reports_dir.iterdir() if p.suffix in (".csv", ".xlsx")):
        say(f"  {path.name}")  # the CSV reports for scripts, the workbooks for people
    say(f"Ledger: {_show(ledger_path)}   (omi-batch status --ledger {_show(ledger_path)})")
    conversations = [r for r in succeeded if r["kind"] != "tickets"]
    tickets = [r for r in succeeded if r["kind"] == "tickets"]
    moved = sum(r["updated_records"] or 0 for r in conversations)
    what = f"{moved} conversation(s)"
    if tickets:
        what += f" and {sum(r['updated_records'] or 0 for r in tickets)} ticket(s)"
    say(f"{len(succeeded)} transfer(s) succeeded, confirmed by OMI's callbacks: {what} moved.")
    for row in tickets:
        say(f"Row {row['row']} moved {row['source_email']}'s {row['updated_records']} open "
            f"ticket(s) to {row['target_email']} too, after its conversations.")  # fmt: skip
    for row in conversations:
        if row["via"]:
            say(f"Row {row['row']} was a chain: {row['requested_target']} is leaving too, so "
                f"{row['source_email']}'s conversations went straight to {row['target_email']}.")  # fmt: skip
        if row["conv_ids"]:
            say(f"Row {row['row']} moved only {len(row['conv_ids'])} chosen conversation(s) of "
                f"{row['source_email']} to {row['target_email']}, before the row that takes "
                "the rest.")  # fmt: skip
    say("Demo finished as designed" + (" (the row caught above is expected)." if caught else "."))
    return 0


def _show(value: object) -> str:
    """A path relative to the current folder when it is inside it (shorter to read)."""
    text = str(value)
    try:
        return str(Path(text).relative_to(Path.cwd()))
    except ValueError:
        return text


if __name__ == "__main__":
    sys.exit(main())

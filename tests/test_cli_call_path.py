"""Where a batch id goes in `omi-batch execute`: the command's own work first, in one stay in
cli, then one call into the library."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from helpers import FAST, invoke, where

PACKAGE = Path(__file__).resolve().parent.parent / "omi_batch"


def modules_given(runner, batch: str, *args: object) -> list[str]:
    """The omi_batch modules whose functions are called with ``batch`` as an argument while
    ``omi-batch ARGS`` runs, in order, up to and including the first call into the pipeline;
    a module called several times in a row is listed once."""
    seen: list[str] = []

    def profile(frame, event, _arg):
        if event != "call" or (seen and seen[-1].startswith("omi_batch.pipeline")):
            return
        path = Path(frame.f_code.co_filename).resolve()
        if PACKAGE not in path.parents:
            return
        code = frame.f_code
        named = code.co_argcount + code.co_kwonlyargcount
        given = [frame.f_locals.get(name) for name in code.co_varnames[:named]]
        if code.co_flags & inspect.CO_VARARGS:  # resume_with("execute", batch, ...)
            given += frame.f_locals.get(code.co_varnames[named], ())
        if batch not in given:
            return
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if not seen or seen[-1] != module:
            seen.append(module)

    sys.setprofile(profile)
    try:
        done = invoke(runner, *args)
    finally:
        sys.setprofile(None)
    assert done.exit_code == 0, done.output
    return seen


def test_execute_does_its_cli_work_with_the_batch_first_then_calls_the_pipeline_once(
    runner, env, departures, ledger_path, reports_dir
):
    files = where(ledger_path, reports_dir)
    done = invoke(runner, "preview", departures, *files, *FAST)
    assert done.exit_code == 0, done.output
    batch = done.stdout.strip().splitlines()[-1]
    assert invoke(runner, "approve", batch, "--all", "--ledger", ledger_path).exit_code == 0
    modules = modules_given(runner, batch, "execute", batch, "--yes", *files, *FAST)
    # cli.batch (the command, its confirm), cli.output (how to resume), then the library:
    # no return to cli.batch in between.
    assert modules == ["omi_batch.cli.batch", "omi_batch.cli.output", "omi_batch.pipeline.execute"]

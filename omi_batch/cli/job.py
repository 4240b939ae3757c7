"""The job commands: one scheduled tick over a job's folders."""

from __future__ import annotations

import logging
import os
import sys

import click

from omi_batch.cli.options import log_format, log_format_option, use_log_format, verbosity
from omi_batch.cli.output import tell


@click.group()
def job() -> None:
    """Scheduled pipeline jobs (see jobs/).

    \b
    Example:
        omi-batch job run jobs/offboarding.toml
    """


@job.command("run")
@click.argument("jobfile", type=click.Path(exists=True, dir_okay=False))
@log_format_option
def job_run(jobfile: str) -> None:
    """Run one tick of the job JOBFILE: safe to run every few minutes.

    New files in the inbox are validated and previewed (their reports go to the review
    folder, or are approved at once under an auto policy within its ceilings); edited preview
    reports in the approved folder are executed; finished batches move to the archive. One
    log line per step on stderr (--log-format json, or log_format in the job file, for one
    JSON object a line). A tick that finds another one running says so and exits 0.

    \b
    Example:
        omi-batch job run jobs/offboarding.toml
    """
    from omi_batch import logs
    from omi_batch.errors import LockedError
    from omi_batch.jobs import load_job, run_tick

    verbose = verbosity()
    # The job's log is its one line per step, so it shows without -v.
    logging.getLogger("omi_batch.jobs").setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    job = load_job(jobfile)
    logs.add_secrets_from(os.environ, (job.api_key_env, job.webhook_secret_env))
    if job.log_format == "json" and log_format() is None:
        use_log_format("json")
    try:
        result = run_tick(job)
    except LockedError as busy:
        tell([str(busy)], "locked", logging.WARNING)
        return
    if result.exit_code:
        sys.exit(result.exit_code)

"""Scheduled pipeline jobs: a small TOML job file, and one tick of work over its folders.

A job file names the folders a batch travels through (inbox → review → approved → archive,
with rejected files set aside), the reports folder, the ledger, the approval policy, how hard
to talk to OMI, and which environment variables hold the secrets. ``run_tick`` does what is
due once and returns; a timer or cron runs it every few minutes. Every tick is safe to repeat:
the ledger and the folders say where each batch is, so a tick that died is resumed by the next.

Where a batch's files live while it is open: the input file and every report sit in the
reports folder as ``<batch>-…``; the review folder gets a copy of the preview and targets
reports for a person; the approved folder is where that person puts the edited preview report.
When no row is left to preview, approve or execute, ``archive/<batch>/`` receives them all.
"""

from __future__ import annotations

from omi_batch.jobs.jobfile import FOLDERS, POLICIES, Job, load_job, looks_like_secret
from omi_batch.jobs.tick import JobLock, TickResult, run_tick

__all__ = ["FOLDERS", "POLICIES", "Job", "JobLock", "TickResult", "load_job", "looks_like_secret",
           "run_tick"]  # fmt: skip

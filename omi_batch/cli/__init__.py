"""The ``omi-batch`` command line: options, prompts, output and exit codes; nothing else.

The group and ``main`` live here; the commands live in ``batch``, ``status``, ``services``,
``ledger`` and ``job``, the shared options in ``options`` and everything printed in
``output``. Every library import happens inside the command that needs it, so
``omi-batch --help`` stays light (no pandas, sqlite_utils, requests or waitress).
"""

from __future__ import annotations

import click

from omi_batch.cli import batch, job, ledger, services, status
from omi_batch.cli.options import add_verbose_option, setup_logging
from omi_batch.cli.output import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="omi-batch")
@click.option("-v", "--verbose", count=True, help="More detail on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """Offboard contact-centre agents on OMICall.

    Validate a CSV of source → target agent emails, preview every transfer into a report,
    approve, execute, confirm each through OMI's callback, and keep every step in an audited
    SQLite ledger.

    \b
    Example:
        omi-batch validate departures.csv
        omi-batch run departures.csv --listen 127.0.0.1:8080
    """
    setup_logging(verbose)


def main() -> None:
    cli(prog_name="omi-batch")


for _command in (
    batch.validate, batch.preview, batch.approve, batch.execute, batch.run, batch.reconcile,
    status.status, status.cancel, status.report, services.webhook, ledger.ledger_group,
    services.simulator, job.job,
):  # fmt: skip
    cli.add_command(_command)
add_verbose_option(cli)

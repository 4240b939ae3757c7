"""The ledger commands: verify the audit chain, export a batch's trail."""

from __future__ import annotations

import json
import sys

import click

from omi_batch.cli.options import ledger_option


@click.group("ledger")
def ledger_group() -> None:
    """Check and export the audit ledger.

    \b
    Example:
        omi-batch ledger verify --ledger data/ledger.db
        omi-batch ledger export 20261125-093000-ab12 > trail.jsonl
    """


@ledger_group.command("verify")
@ledger_option
def ledger_verify(ledger_path: str) -> None:
    """Check the ledger: SQLite's integrity check, the audit log's hash chain, and every row
    rebuilt from the audit events; exit 1 naming what is damaged or was edited.

    \b
    Example:
        omi-batch ledger verify --ledger data/ledger.db
    """
    from omi_batch.errors import LedgerDamaged
    from omi_batch.ledger import Ledger

    try:
        with Ledger(ledger_path, create=False, read_only=True, check_head=False) as led:
            result = led.verify()
    except LedgerDamaged as error:
        click.echo(f"Ledger damaged: {error}")
        sys.exit(1)
    if result.damaged:
        click.echo(f"Ledger damaged: {result.problem}")
        sys.exit(1)
    if not result.ok:
        for line in result.rows or (result.problem,):
            click.echo(f"Ledger tampered: {line}")
        sys.exit(1)
    if result.problem:
        click.echo(f"Warning: {result.problem}", err=True)
    head = result.head[:16] if result.head else "none"
    click.echo(f"Ledger intact: {result.events} events, head {head}")


@ledger_group.command("export")
@click.argument("batch")
@ledger_option
def ledger_export(batch: str, ledger_path: str) -> None:
    """Print BATCH's whole audit trail as JSON lines.

    \b
    Example:
        omi-batch ledger export 20261125-093000-ab12 > trail.jsonl
    """
    from omi_batch.ledger import Ledger

    with Ledger(ledger_path, create=False, read_only=True) as led:
        for item in led.export(batch):
            click.echo(json.dumps(item, ensure_ascii=False, sort_keys=True, default=str))

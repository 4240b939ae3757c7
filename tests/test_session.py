"""The runtime as every command and job tick opens it (``omi_batch.session.Session``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import API_KEY, WEBHOOK_SECRET

from omi_batch.client import RetryPolicy
from omi_batch.config import Secret, Settings
from omi_batch.errors import InputError
from omi_batch.ledger import Ledger
from omi_batch.roster import read_plan
from omi_batch.session import Session

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample_offboarding.csv"


def test_a_session_with_a_receiver_settles_each_row_by_its_callback(tmp_path, simulator):
    # No polling to fall back on (an hour between looks): each row's wait ends when the
    # in-process receiver wakes it (else only at `wait`). A job with `listen` runs this path too.
    _, server = simulator
    settings = Settings(
        base_url=server.url, api_key=Secret(API_KEY), webhook_secret=Secret(WEBHOOK_SECRET)
    )
    ledger = Ledger(tmp_path / "ledger.db")
    said: list[str] = []
    with Session(settings, ledger, listen=("127.0.0.1", 0), say=said.append, rate=1000,
                 wait=20, poll_interval=3600, retry=RetryPolicy(max_attempts=2, base=0.0, max_wait=0.0)) as session:  # fmt: skip
        pipeline = session.pipeline
        # the sample's row 8 names a target absent from the directory: its preview fails
        batch_id = pipeline.create_batch(read_plan(SAMPLE), check_agents=False)
        pipeline.preview(batch_id)
        pipeline.approve(batch_id, approve_all=True)
        pipeline.execute(batch_id)
        rows = ledger.rows(batch_id)
    assert len(said) == 1 and said[0].startswith("Webhook receiver listening on http://127.0.0.1:")
    executed = [r for r in rows if r["approved_at"]]
    assert len(executed) >= 3
    assert {r["state"] for r in executed} == {"succeeded"}
    assert {r["verified_by"] for r in executed} == {"callback"}
    ledger.close()


def test_a_library_caller_creating_a_batch_is_checked_against_the_directory_by_default(
    tmp_path, simulator
):
    # The library says what the CLI says: the directory check is on unless turned off.
    _, server = simulator
    settings = Settings(base_url=server.url, api_key=Secret(API_KEY))
    ledger = Ledger(tmp_path / "ledger.db")
    with Session(settings, ledger, rate=1000) as session, pytest.raises(InputError) as caught:
        session.pipeline.create_batch(read_plan(SAMPLE))
    assert str(caught.value).startswith("1 problem(s) in OMI's agent directory: nothing was "
                                        "sent and no batch was created")  # fmt: skip
    assert [(p.row, p.code) for p in caught.value.problems] == [(8, "target_not_found")]
    assert ledger.batches() == []
    ledger.close()

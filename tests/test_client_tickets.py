"""The ticket transfer over real loopback: the conversation transfer's envelope and count
variants, and a key without the tickets permission failing the row, not the run."""

from __future__ import annotations

import pytest
from helpers import API_KEY

from omi_batch.client import TICKET_PATH, ApiError, Attempt, AuthError, OmiClient
from omi_batch.config import Secret


def first_ticket_pair(sim) -> tuple[str, str]:
    for ticket in sim.tickets:
        source = ticket["assignee"]
        target = next(a for a in sim.agents if a != source)
        if sim.count_tickets(source, target):
            return source, target
    raise AssertionError("the fixture has no ticket to move")


def test_a_ticket_preview_counts_and_an_execute_moves_them(make_simulator):
    sim, server = make_simulator()
    source, target = first_ticket_pair(sim)
    expected = sim.count_tickets(source, target)
    with OmiClient(server.url, Secret(API_KEY)) as client:
        preview = client.transfer_tickets(source, target, preview=True)
        result = client.transfer_tickets(source, target, preview=False)
    assert preview.count == expected
    assert result.http_status == 202 and result.request_id
    assert sim.wait_idle(10)
    assert sim.count_tickets(source, target) == 0
    bodies = [e["body"] for e in sim.events if e["path"] == TICKET_PATH]
    assert bodies[0] == {"sourceEmail": source, "targetEmail": target, "previewChanges": True}


def test_a_ticket_transfer_sends_the_callback_config(make_simulator):
    sim, server = make_simulator()
    source, target = first_ticket_pair(sim)
    callback = {"url": "http://127.0.0.1:9/cb", "headers": {"X-Omi-Batch-Token": "t" * 20}}
    with OmiClient(server.url, Secret(API_KEY)) as client:
        client.transfer_tickets(source, target, preview=True, callback=callback)
    (event,) = [e for e in sim.events if e["path"] == TICKET_PATH]
    assert event["body"]["callbackResultConfig"] == callback


@pytest.mark.parametrize("fault", ["permission_denied", "forbidden"])
def test_a_key_without_the_tickets_permission_fails_the_row_not_the_run(make_simulator, fault):
    sim, server = make_simulator()
    sim.faults.ticket_fault = fault
    source, target = first_ticket_pair(sim)
    attempts: list[Attempt] = []
    with OmiClient(server.url, Secret(API_KEY), on_attempt=attempts.append) as client:
        with pytest.raises(ApiError) as caught:
            client.transfer_tickets(source, target, preview=True, context={"row": 2})
        assert client.transfer_conversations(source, target, preview=True).count is not None
    error = caught.value
    assert not isinstance(error, AuthError)
    assert (error.code, error.exit_code, error.retryable) == ("permission_denied", 1, False)
    assert str(error).endswith(
        "permission_denied: your key lacks the permission to assign other agents' tickets"
    )
    assert (attempts[0].endpoint, attempts[0].error) == (TICKET_PATH, "api")

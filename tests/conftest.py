"""Shared fixtures: a real simulator on a free loopback port, a fresh ledger file, secrets
that tests can grep for."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from helpers import API_KEY, SAMPLE_TEXT, departures_csv, use_simulator


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "ledger.db"


@pytest.fixture
def ledger(ledger_path):
    """A fresh ledger file, open, closed after the test."""
    from omi_batch.ledger import Ledger

    ledger = Ledger(ledger_path)
    yield ledger
    ledger.close()


@pytest.fixture
def led(ledger):
    """The ``ledger`` fixture under the short name the ledger tests use."""
    return ledger


@pytest.fixture
def receiver(ledger):
    """The webhook receiver on ``ledger`` in this process, on a free loopback port, stopped at
    the end of the test."""
    from helpers import SECRET

    from omi_batch.webhook import make_app, start

    with start(make_app(ledger, SECRET), "127.0.0.1", 0) as server:
        yield server


@pytest.fixture
def reports_dir(tmp_path):
    path = tmp_path / "reports"
    path.mkdir()
    return path


@pytest.fixture
def make_simulator():
    """Start simulators with chosen options; each is stopped at the end of the test."""
    from omi_batch.simulator import Simulator

    running = []

    def start(**options):
        options.setdefault("api_key", API_KEY)
        sim = Simulator(**options)
        server = sim.start(host="127.0.0.1", port=0)
        running.append(server)
        return sim, server

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def simulator(make_simulator):
    """A simulator with the sample fixture and no faults: ``(sim, server)``."""
    return make_simulator()


@pytest.fixture
def env(monkeypatch, simulator):
    """OMI_* pointing at the sample simulator, for commands run in this process; no
    OMI_WEBHOOK_URL (tests use --listen). Returns ``(sim, server)``."""
    sim, server = simulator
    use_simulator(monkeypatch, server)
    return sim, server


@pytest.fixture
def departures(tmp_path):
    """Rows 2-6 of the sample file (every agent known to the simulator), as a CSV to read."""
    return departures_csv(tmp_path, SAMPLE_TEXT)


@pytest.fixture
def make_stack(tmp_path):
    """``make_stack(server, **options)``: a ``helpers.Stack`` on ``tmp_path/ledger.db``, closed at
    the end of the test."""
    from helpers import Stack

    made = []

    def make(server, **options):
        made.append(Stack(tmp_path, server, **options))
        return made[-1]

    yield make
    for stack in made:
        stack.close()

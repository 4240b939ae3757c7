"""The directory check over real loopback against the simulator's directory (with inactive and
deleted agents): the problems with their rows, one warning when the directory cannot be read,
and how many requests each way of looking agents up costs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from helpers import API_KEY

from omi_batch import directory
from omi_batch.cli import cli
from omi_batch.client import AGENTS_PATH, AUTH_PATH, Agent, OmiClient
from omi_batch.config import Secret
from omi_batch.ledger import Ledger
from omi_batch.roster import read_plan

ACTIVE = ["lan.nguyen", "minh.tran", "hong.le", "bao.pham", "mai.hoang", "anh.vu", "thu.dang"]


def email(name: str) -> str:
    return f"{name}@example.vn"


def plan_of(tmp_path, rows: list[tuple[str, str]]):
    path = tmp_path / "departures.csv"
    lines = ["source_email,target_email"] + [f"{s},{t}" for s, t in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return read_plan(path)


def directory_requests(sim) -> list[tuple[str, str]]:
    found = []
    for event in sim.events:
        if event["kind"] == "request" and event["path"] in (AGENTS_PATH, AUTH_PATH):
            found.append((event["path"], event["status"]))
    return found


@pytest.mark.parametrize("shape", ["items", "data", "list"])
def test_the_whole_directory_is_read_page_by_page(make_simulator, shape):
    sim, server = make_simulator(directory_shape=shape, auth="both", directory_auth="both")
    with OmiClient(server.url, Secret(API_KEY)) as client:
        agents = list(client.list_agents(size=4))
    assert [a.email for a in agents] == [a["email"] for a in sim.directory]
    assert Agent("yen.ly@example.vn", False, True, "Lý Hải Yến") in agents
    assert directory_requests(sim) == [(AGENTS_PATH, 200)] * 5  # 15 agents: 4 pages + 1 empty


def test_the_directory_takes_a_token_when_it_refuses_the_key(make_simulator):
    sim, server = make_simulator(directory_auth="bearer")  # as the vendor documents it
    with OmiClient(server.url, Secret(API_KEY)) as client:
        assert len(list(client.list_agents())) == 15
        assert len(list(client.list_agents(keyword="lan"))) == 1
        client.transfer_conversations(email("lan.nguyen"), email("minh.tran"), preview=True)
    assert directory_requests(sim) == [
        (AGENTS_PATH, 401), (AUTH_PATH, 200), (AGENTS_PATH, 200), (AGENTS_PATH, 200),
        (AGENTS_PATH, 200), (AGENTS_PATH, 200),  # from then on straight with the token
    ]  # fmt: skip
    transfer = [e for e in sim.events if e["path"].endswith("/conversation/transfer")]
    assert transfer[-1]["status"] == 200  # conversations still go with the x-api-key


def test_targets_missing_inactive_or_deleted_are_problems_with_their_rows(make_simulator, tmp_path):
    _, server = make_simulator()
    plan = plan_of(
        tmp_path,
        [
            (email("lan.nguyen"), email("quang.trinh")),  # row 2: inactive target
            (email("minh.tran"), email("yen.ly")),  # row 3: deleted target
            (email("hong.le"), "ghost@example.vn"),  # row 4: unknown target
            ("stranger@example.vn", email("bao.pham")),  # row 5: unknown source
            (email("phuong.mac"), email("mai.hoang")),  # row 6: deactivated source: fine
        ],
    )
    with OmiClient(server.url, Secret(API_KEY)) as client:
        problems, warnings = directory.check_agents(plan, client)
    assert warnings == []
    assert [(p.row, p.code) for p in problems] == [
        (2, "target_inactive"),
        (3, "target_deleted"),
        (4, "target_not_found"),
        (5, "source_not_found"),
    ]
    assert str(problems[0]) == (
        "row 2: target_inactive: target quang.trinh@example.vn is deactivated in OMI: customers "
        "moved there would reach nobody; choose another target"
    )


def test_a_clean_plan_has_no_problem(make_simulator, tmp_path):
    _, server = make_simulator()
    plan = plan_of(tmp_path, [(email("lan.nguyen"), email("minh.tran"))])
    with OmiClient(server.url, Secret(API_KEY)) as client:
        assert directory.check_agents(plan, client) == ([], [])


def test_a_few_agents_are_searched_one_by_one(make_simulator, tmp_path):
    sim, server = make_simulator(auth="both", directory_auth="both")
    plan = plan_of(tmp_path, [(email("lan.nguyen"), email("minh.tran"))])
    with OmiClient(server.url, Secret(API_KEY)) as client:
        directory.check_agents(plan, client)
    searched = [e for e in sim.events if e["path"] == AGENTS_PATH]
    assert len(searched) == 2  # one keyword search per agent, each found on its first page


def test_many_agents_read_the_whole_directory_once(make_simulator, tmp_path):
    sim, server = make_simulator(auth="both", directory_auth="both")
    rows = [(email(s), email(t)) for s, t in zip(ACTIVE, ACTIVE[1:], strict=False)]
    plan = plan_of(tmp_path, rows)
    with OmiClient(server.url, Secret(API_KEY)) as client:
        assert directory.check_agents(plan, client) == ([], [])
    assert len([e for e in sim.events if e["path"] == AGENTS_PATH]) == 2  # 15 agents + empty


def test_an_agent_a_keyword_misses_is_looked_for_in_the_whole_directory(make_simulator, tmp_path):
    sim, server = make_simulator(auth="both", directory_auth="both")
    plan = plan_of(tmp_path, [(email("lan.nguyen"), "ghost@example.vn")])
    with OmiClient(server.url, Secret(API_KEY)) as client:
        problems, _ = directory.check_agents(plan, client)
    assert [(p.row, p.code) for p in problems] == [(2, "target_not_found")]
    keywords = [e for e in sim.events if e["path"] == AGENTS_PATH]
    assert len(keywords) == 1 + 1 + 2  # lan found; ghost: empty page; whole: 15 + empty


@pytest.mark.parametrize(
    "fault", ["permission_denied", "forbidden", "not_found", "unavailable", "error"]
)
def test_a_directory_that_cannot_be_read_is_one_warning(make_simulator, tmp_path, fault):
    sim, server = make_simulator(auth="both", directory_auth="both")
    sim.faults.directory_fault = fault
    plan = plan_of(tmp_path, [(email("lan.nguyen"), "ghost@example.vn")] * 1)
    with OmiClient(server.url, Secret(API_KEY), sleep=lambda s: None) as client:
        problems, warnings = directory.check_agents(plan, client)
    assert problems == []
    assert [(w.row, w.code) for w in warnings] == [(None, "directory_unavailable")]
    assert warnings[0].message.startswith("OMI's agent directory could not be read (OMI answered")
    assert warnings[0].message.endswith("the preview still catches agents OMI does not know")


def test_an_unreachable_directory_is_one_warning(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plan = plan_of(tmp_path, [(email("lan.nguyen"), email("minh.tran"))])
    with OmiClient(f"http://127.0.0.1:{port}", Secret(API_KEY), sleep=lambda s: None) as client:
        problems, warnings = directory.check_agents(plan, client)
    assert problems == [] and [w.code for w in warnings] == ["directory_unavailable"]
    assert "connection_refused" in warnings[0].message


def test_a_directory_repeating_its_page_is_not_read_forever(make_simulator):
    sim, server = make_simulator()
    page = {
        "status": 200,
        "body": {"status_code": 9999, "payload": {"items": [
            {"identify_info": "A@Example.vn", "is_active": 1, "is_deleted": "false"},
            {"email": "b@example.vn"},
            {"name": "no email"},
        ]}},
    }  # fmt: skip
    sim.script(page, page)
    with OmiClient(server.url, Secret(API_KEY)) as client:
        agents = list(client.list_agents())
    assert agents == [Agent("a@example.vn", True, False), Agent("b@example.vn", None, None)]
    assert len([e for e in sim.events if e["path"] == AGENTS_PATH]) == 2


def page_of(*items: dict) -> dict:
    return {"status": 200, "body": {"status_code": 9999, "payload": {"items": list(items)}}}


EMPTY = page_of()


def test_a_full_page_repeated_is_a_warning_not_agents_missing(make_simulator, tmp_path):
    # OMI ignoring ``page``: the agents after the first page can never be read, so calling them
    # missing would be false problems.
    sim, server = make_simulator()
    first = page_of(*({"identify_info": f"agent{i}@example.vn"} for i in range(50)))
    sim.script(first, first)
    rows = [(f"s{i}@example.vn", f"t{i}@example.vn") for i in range(3)]  # 6: the whole list
    with OmiClient(server.url, Secret(API_KEY)) as client:
        problems, warnings = directory.check_agents(plan_of(tmp_path, rows), client)
    assert problems == []
    assert [w.code for w in warnings] == ["directory_unavailable"]
    assert "page 2 of the agent list repeats the agents of the pages before it (50 of them)" in (
        warnings[0].message
    )


def test_a_page_without_any_email_does_not_end_the_directory(make_simulator):
    sim, server = make_simulator()
    phones = page_of(*({"identify_info": f"+8490000{i:04d}"} for i in range(50)))
    sim.script(phones, page_of({"identify_info": "lan.nguyen@example.vn", "is_active": True},
                               {"identify_info": "+84901234567", "email": "minh.tran@example.vn"}),
               EMPTY)  # fmt: skip
    wanted = [email("lan.nguyen"), email("minh.tran"), *(f"x{i}@example.vn" for i in range(4))]
    with OmiClient(server.url, Secret(API_KEY)) as client:
        found = directory.look_up(client, wanted)  # 6 agents: the whole directory is read
    assert sorted(found) == [email("lan.nguyen"), email("minh.tran")]
    assert len([e for e in sim.events if e["path"] == AGENTS_PATH]) == 3


@pytest.mark.parametrize("listed", ["nguyễn@xn--cng-ty-ixa.vn", "NFD", " Nguyễn@Công-Ty.VN "])
def test_an_address_written_another_way_in_the_directory_is_found(make_simulator, listed):
    sim, server = make_simulator()
    wanted = "nguyễn@công-ty.vn"
    if listed == "NFD":
        listed = unicodedata.normalize("NFD", wanted)
    sim.script(page_of({"identify_info": listed, "is_active": 1}), EMPTY)
    with OmiClient(server.url, Secret(API_KEY)) as client:
        found = directory.look_up(client, [wanted])
    assert list(found) == [wanted] and found[wanted].is_active is True


@pytest.mark.parametrize("order", ["deleted first", "active first"])
@pytest.mark.parametrize("agents", [1, 6])  # searched by keyword / the whole directory read
def test_an_agent_listed_twice_counts_as_its_best_entry(make_simulator, order, agents):
    sim, server = make_simulator()
    old = {"identify_info": "lan.nguyen@example.vn", "is_active": False, "is_deleted": True}
    new = {"identify_info": "lan.nguyen@example.vn", "is_active": True, "is_deleted": False}
    entries = (old, new) if order == "deleted first" else (new, old)
    others = [f"other{i}@example.vn" for i in range(agents - 1)]
    listing = page_of(*entries, *({"identify_info": o} for o in others))
    sim.script(*[listing, EMPTY] * 2)
    with OmiClient(server.url, Secret(API_KEY)) as client:
        found = directory.look_up(client, [email("lan.nguyen"), *others])
    assert found[email("lan.nguyen")] == Agent(email("lan.nguyen"), True, False)


@pytest.mark.parametrize(
    ("item", "active", "deleted"),
    [
        ({"is_active": "no", "is_deleted": "N"}, False, False),
        ({"is_active": "Yes", "is_deleted": 0.0}, True, False),
        ({"status": "INACTIVE"}, False, None),
        ({"status": "Active"}, True, None),
        ({"status": "deleted"}, None, True),
        ({"is_active": True, "status": "INACTIVE"}, True, None),  # the flag says more
        ({"is_active": 2}, None, None),  # not a yes/no: unknown, not a guess
    ],
)
def test_yes_no_fields_and_a_status_are_read(make_simulator, item, active, deleted):
    sim, server = make_simulator()
    sim.script(page_of({"identify_info": "a@example.vn", **item}), EMPTY)
    with OmiClient(server.url, Secret(API_KEY)) as client:
        [agent] = client.list_agents()
    assert (agent.is_active, agent.is_deleted) == (active, deleted)


def test_a_null_list_key_does_not_hide_the_next_one(make_simulator):
    sim, server = make_simulator()
    sim.script({"status": 200, "body": {"status_code": 9999, "payload": {
        "data": None, "content": [{"identify_info": "a@example.vn"}]}}}, EMPTY)  # fmt: skip
    with OmiClient(server.url, Secret(API_KEY)) as client:
        assert [a.email for a in client.list_agents()] == ["a@example.vn"]


# --------------------------------------------------------------------------- in the commands


def write_csv(tmp_path, rows) -> str:
    path = tmp_path / "departures.csv"
    lines = ["source_email,target_email"] + [f"{s},{t}" for s, t in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


BAD_ROWS = [(email("lan.nguyen"), email("minh.tran")), (email("hong.le"), email("yen.ly"))]


def transfers_sent(sim) -> list[dict]:
    return [e for e in sim.events if e["kind"] == "request" and "transfer" in e["path"]]


def test_validate_check_agents_lists_the_problems_and_sends_nothing(runner, env, tmp_path):
    sim, _ = env
    result = runner.invoke(cli, ["validate", write_csv(tmp_path, BAD_ROWS), "--check-agents"])
    assert result.exit_code == 2, result.output
    assert "row 3: target_deleted: target yen.ly@example.vn is deleted in OMI" in result.output
    assert transfers_sent(sim) == []
    assert not list(tmp_path.glob("*.db"))


@pytest.mark.parametrize("command", [["preview"], ["run", "--yes"]])
def test_preview_and_run_create_no_batch_when_a_target_is_deleted(
    runner, env, tmp_path, ledger_path, reports_dir, command
):
    sim, _ = env
    # The directory check is on by default.
    args = [*command, write_csv(tmp_path, BAD_ROWS), "--ledger", str(ledger_path), "--reports",
            str(reports_dir), "--listen", "127.0.0.1:0"]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "1 problem(s) in OMI's agent directory: nothing was sent and no batch was created" in (
        result.output
    )
    assert [e["body"]["previewChanges"] for e in transfers_sent(sim)] == [True]  # preflight only
    if ledger_path.exists():
        with Ledger(ledger_path) as ledger:
            assert ledger.batches() == []


def test_no_check_agents_leaves_an_unknown_target_to_its_preview(
    runner, env, tmp_path, ledger_path, reports_dir
):
    sim, _ = env
    rows = [(email("lan.nguyen"), email("minh.tran")), (email("thu.dang"), email("long.ly"))]
    args = ["preview", write_csv(tmp_path, rows), "--no-check-agents", "--ledger",
            str(ledger_path), "--reports", str(reports_dir), "--listen", "127.0.0.1:0"]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 1, result.output  # row 3 failed its preview
    assert directory_requests(sim) == []
    with Ledger(ledger_path) as ledger:
        [batch] = ledger.batches()
        states = {r["row"]: (r["state"], r["preview_error"]) for r in ledger.rows(batch["id"])}
    assert states[2] == ("previewed", None)
    assert states[3][0] == "preview_failed" and "user_not_found" in states[3][1]


def test_preview_goes_on_with_one_warning_when_the_directory_is_forbidden(
    runner, env, tmp_path, ledger_path, reports_dir
):
    sim, _ = env
    sim.faults.directory_fault = "permission_denied"
    args = ["preview", write_csv(tmp_path, BAD_ROWS[:1]), "--ledger",
            str(ledger_path), "--reports", str(reports_dir), "--listen", "127.0.0.1:0"]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    # logged (the CLI shows the log on stderr, a job writes it), not echoed a second time
    assert result.output.count("OMI's agent directory could not be read") == 0


def test_preview_says_the_directory_warning_once_on_stderr(simulator, tmp_path):
    sim, server = simulator
    sim.faults.directory_fault = "permission_denied"
    env = dict(os.environ, OMI_BASE_URL=server.url, OMI_API_KEY=API_KEY,
               OMI_WEBHOOK_SECRET="whsec-directory-test",
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))  # fmt: skip
    env.pop("OMI_WEBHOOK_URL", None)
    args = [sys.executable, "-m", "omi_batch", "preview", write_csv(tmp_path, BAD_ROWS[:1]),
            "--ledger", str(tmp_path / "ledger.db"), "--reports", str(tmp_path / "reports"),
            "--listen", "127.0.0.1:0"]  # fmt: skip
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("OMI's agent directory could not be read") == 1, done.stderr
    assert (
        "directory_unavailable: OMI's agent directory could not be read (OMI answered 200 "
        "permission_denied" in done.stderr
    )


class Told:
    """A progress that keeps what it was told, as (what, phase, total or count)."""

    rate = None

    def __init__(self):
        self.calls: list[tuple] = []

    def start(self, phase, total):
        self.calls.append(("start", phase, total))

    def advance(self, phase, n=1):
        self.calls.append(("advance", phase, n))

    def done(self, phase):
        self.calls.append(("done", phase))


def test_the_directory_look_up_tells_progress_of_each_entry_read(make_simulator, tmp_path):
    sim, server = make_simulator(auth="both", directory_auth="both")
    rows = [(email(s), email(t)) for s, t in zip(ACTIVE, ACTIVE[1:], strict=False)]
    told = Told()
    with OmiClient(server.url, Secret(API_KEY)) as client:
        assert directory.check_agents(plan_of(tmp_path, rows), client, progress=told) == ([], [])
    # the whole directory once: its 15 entries, no total known ahead
    assert told.calls == [("start", "directory", None), *[("advance", "directory", 1)] * 15,
                          ("done", "directory")]  # fmt: skip


def test_a_directory_that_cannot_be_read_still_ends_its_progress(make_simulator, tmp_path):
    sim, server = make_simulator(auth="both", directory_auth="both")
    sim.faults.directory_fault = "permission_denied"
    told = Told()
    plan = plan_of(tmp_path, [(email("lan.nguyen"), email("minh.tran"))])
    with OmiClient(server.url, Secret(API_KEY), sleep=lambda s: None) as client:
        _, warnings = directory.check_agents(plan, client, progress=told)
    assert [w.code for w in warnings] == ["directory_unavailable"]
    assert told.calls == [("start", "directory", None), ("done", "directory")]


def test_validate_check_agents_on_a_terminal_shows_the_directory_progress(simulator, tmp_path):
    """What a person at a terminal sees while the directory is read: a bar counting agents
    (rich draws it only when stderr is a terminal, so it runs under a pseudo-terminal)."""
    import pty
    import select

    sim, server = simulator
    env = dict(os.environ, OMI_BASE_URL=server.url, OMI_API_KEY=API_KEY, COLUMNS="120",
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))  # fmt: skip
    rows = [(email(s), email(t)) for s, t in zip(ACTIVE, ACTIVE[1:], strict=False)]
    args = [sys.executable, "-m", "omi_batch", "validate", write_csv(tmp_path, rows),
            "--check-agents"]  # fmt: skip
    leader, follower = pty.openpty()
    child = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    seen = b""
    try:
        while True:  # bounded: the child ends (its pty closes) or the 60 s select gives up
            ready, _, _ = select.select([leader], [], [], 60)
            if not ready:
                break
            try:
                piece = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not piece:
                break
            seen += piece
    finally:
        os.close(leader)
        assert child.wait(timeout=60) == 0, seen
    text = seen.decode("utf-8", "replace")
    assert "directory" in text and "15/?" in text and "agents/s" in text, text

"""Notifications: sent with apprise to a json:// receiver on loopback; failures wait in the
outbox for the next call; secrets in a URL come from the environment and never show."""

from __future__ import annotations

import base64
import csv
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import API_KEY, GOOD_CSV, REPO, make_job, write_job

from omi_batch import notify
from omi_batch.errors import ConfigError, UsageError
from omi_batch.jobs import load_job, run_tick
from omi_batch.notify import Message, Notifier

TOKEN = "notify-token-9f3e71c2ab54"
BATCH = "20261201-093000-ab12"


class Receiver:
    """A json:// receiver on 127.0.0.1: keeps every POST (path, headers, JSON body)."""

    def __init__(self, port: int = 0, status: int = 200, delay: float = 0.0):
        self.posts: list[dict] = []
        self.status = status
        self.delay = delay
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                if outer.delay:
                    time.sleep(outer.delay)
                outer.posts.append({"path": self.path, "headers": dict(self.headers),
                                    "body": body})  # fmt: skip
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "hook", query: str = "") -> str:
        return f"json://127.0.0.1:{self.port}/{path}" + (f"?{query}" if query else "")

    def delivered(self, message: Message) -> dict:
        """Send ``message`` here with a plain notifier; the JSON body of the one POST it made."""
        Notifier([self.url()]).send(message)
        [post] = self.posts
        return post["body"]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    running = Receiver()
    yield running
    running.stop()


@pytest.fixture
def closed_port():
    """A loopback port that refuses connections (bound, not listening) until released."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    yield port, sock.close
    sock.close()


ROWS = [
    {"row": 1, "state": "previewed", "source_email": "an.nguyen@example.vn",
     "target_email": "binh.tran@example.vn", "conversations_previewed": 40,
     "updated_records": None, "error": None},
    {"row": 2, "state": "previewed", "source_email": "cuong.le@example.vn",
     "target_email": "binh.tran@example.vn", "conversations_previewed": 2,
     "updated_records": None, "error": None},
    {"row": 3, "state": "previewed", "source_email": "dung.pham@example.vn",
     "target_email": "hoa.vo@example.vn", "conversations_previewed": 7,
     "updated_records": None, "error": None},
    {"row": 4, "state": "preview_failed", "source_email": "em.ho@example.vn",
     "target_email": "hoa.vo@example.vn", "conversations_previewed": None,
     "updated_records": None, "error": "target agent not found"},
]  # fmt: skip


def finished_rows() -> list[dict]:
    rows = [dict(r) for r in ROWS]
    rows[0].update(state="succeeded", updated_records=40)
    rows[1].update(state="failed", error="ERROR callback: conversation locked")
    rows[2].update(state="unconfirmed", error="no callback within 300 s")
    return rows


# --------------------------------------------------------------------------- messages


def test_review_waiting_reaches_the_receiver_with_the_workbook_attached(receiver, tmp_path):
    workbook = tmp_path / f"{BATCH}-review.xlsx"
    workbook.write_bytes(b"PK\x03\x04 a workbook")
    message = notify.review_waiting(BATCH, ROWS, file="departures.csv", workbook=workbook,
                                    job="offboarding")  # fmt: skip
    notifier = Notifier([receiver.url(query="+X-Hook-Token=${OMI_NOTIFY_TOKEN}")],
                        env={"OMI_NOTIFY_TOKEN": TOKEN})  # fmt: skip

    outcome = notifier.send(message)

    assert (outcome.sent, outcome.kept, outcome.given_up) == (1, 0, 0)
    [post] = receiver.posts
    assert post["path"] == "/hook"
    assert post["headers"]["X-Hook-Token"] == TOKEN
    body = post["body"]
    assert body["title"] == f"omi-batch: batch {BATCH} is waiting for review"
    assert body["type"] == "info"
    assert body["message"].splitlines() == [
        f"Batch {BATCH} (job offboarding) is waiting for review.",
        "File: departures.csv",
        "Rows: 4 (3 previewed, 1 failed their preview)",
        "Conversations to move: 49",
        "Targets: 2 agents",
        "  binh.tran@example.vn: 42 conversations from 2 sources",
        "  hoa.vo@example.vn: 7 conversations from 1 source",
        f"Review workbook: {workbook}",
        f"Approve: omi-batch approve {BATCH} --report FILE",
    ]
    [attachment] = body["attachments"]
    assert attachment["filename"] == workbook.name
    assert base64.b64decode(attachment["base64"]) == b"PK\x03\x04 a workbook"


def test_batch_finished_gives_the_summary_line_and_the_totals_per_target(receiver):
    body = receiver.delivered(notify.batch_finished(BATCH, finished_rows()))

    assert (body["type"], body["title"]) == (
        "success",
        f"omi-batch: batch {BATCH} finished: 1 failed, 1 preview_failed, 1 succeeded, 1 unconfirmed",
    )
    assert body["message"].splitlines() == [
        f"Batch {BATCH} finished: 1 failed, 1 preview_failed, 1 succeeded, 1 unconfirmed.",
        "Per target:",
        "  binh.tran@example.vn: 1 of 2 rows succeeded, 40 conversations moved",
        "  hoa.vo@example.vn: 0 of 2 rows succeeded, 0 conversations moved",
    ]
    assert body["attachments"] == []


def test_needs_attention_lists_the_rows_a_person_must_look_at_with_their_errors(receiver):
    message = notify.rows_need_attention(BATCH, finished_rows(), retry_report="r/x-retry.csv")
    assert message is not None

    body = receiver.delivered(message)

    assert (body["type"], body["title"]) == (
        "warning",
        f"omi-batch: batch {BATCH} needs attention: 1 failed, 1 preview_failed, 1 unconfirmed",
    )
    assert body["message"].splitlines() == [
        f"Batch {BATCH}: 1 failed, 1 preview_failed, 1 unconfirmed.",
        "  row 2 cuong.le@example.vn -> binh.tran@example.vn: failed: "
        "ERROR callback: conversation locked",
        "  row 3 dung.pham@example.vn -> hoa.vo@example.vn: unconfirmed: no callback within 300 s",
        "  row 4 em.ho@example.vn -> hoa.vo@example.vn: preview_failed: target agent not found",
        "Retry report: r/x-retry.csv",
    ]


def test_a_batch_where_every_row_succeeded_needs_no_attention():
    rows = [dict(r, state="succeeded", updated_records=1) for r in ROWS]
    assert notify.rows_need_attention(BATCH, rows) is None


def test_a_rejected_file_needs_attention_with_its_first_errors(receiver):
    class Problem:
        def __init__(self, row: int, message: str):
            self.row, self.message = row, message

    problems = [Problem(n, f"bad email on line {n}") for n in range(2, 10)]
    message = notify.file_rejected("departures.csv", "8 problems in departures.csv", problems,
                                   errors_report="rejected/departures.csv.errors.csv")  # fmt: skip

    body = receiver.delivered(message)

    assert body["title"] == "omi-batch: file departures.csv was rejected"
    assert body["message"].splitlines() == [
        "File departures.csv was rejected: 8 problems in departures.csv",
        *[f"  row {n}: bad email on line {n}" for n in range(2, 7)],
        "  … and 3 more",
        "Every error: rejected/departures.csv.errors.csv",
    ]


# --------------------------------------------------------------------------- the outbox


def test_a_receiver_that_is_down_keeps_the_notification_for_the_next_call(closed_port, tmp_path):
    port, release = closed_port
    outbox = tmp_path / "offboarding.notify-outbox.jsonl"
    url = f"json://127.0.0.1:{port}/hook?-token=${{OMI_NOTIFY_TOKEN}}"
    notifier = Notifier([url], outbox=outbox, env={"OMI_NOTIFY_TOKEN": TOKEN})
    message = notify.batch_finished(BATCH, finished_rows())

    first = notifier.send(message)

    assert (first.sent, first.kept, first.given_up) == (0, 1, 0)
    [kept] = [json.loads(line) for line in outbox.read_text().splitlines()]
    assert (kept["url"], kept["kind"], kept["batch"], kept["attempts"]) == (
        url, "batch_finished", BATCH, 1,
    )  # fmt: skip
    assert "Connection error" in kept["last_error"]
    assert TOKEN not in outbox.read_text()

    release()
    receiver = Receiver(port=port)
    try:
        second = notifier.flush()
    finally:
        receiver.stop()

    assert (second.sent, second.kept, second.given_up) == (1, 0, 0)
    assert outbox.read_text() == ""
    [post] = receiver.posts
    assert post["path"] == f"/hook?token={TOKEN}"
    assert post["body"]["title"] == message.title


def test_the_outbox_is_tried_before_the_new_notification(closed_port, tmp_path):
    port, release = closed_port
    notifier = Notifier([f"json://127.0.0.1:{port}/hook"], outbox=tmp_path / "outbox.jsonl")
    notifier.send(notify.batch_finished(BATCH, finished_rows()))
    release()
    receiver = Receiver(port=port)
    try:
        outcome = notifier.send(notify.review_waiting(BATCH, ROWS))
    finally:
        receiver.stop()

    assert outcome.sent == 2
    assert [p["body"]["type"] for p in receiver.posts] == ["success", "info"]
    assert notifier.pending() == []


def test_a_receiver_answering_500_keeps_the_notification(tmp_path):
    receiver = Receiver(status=500)
    try:
        notifier = Notifier([receiver.url()], outbox=tmp_path / "outbox.jsonl")
        outcome = notifier.send(notify.review_waiting(BATCH, ROWS))
    finally:
        receiver.stop()
    assert (outcome.sent, outcome.kept) == (0, 1)
    assert len(receiver.posts) == 1
    assert "error=500" in notifier.pending()[0]["last_error"]


def test_a_slow_receiver_does_not_hold_the_caller_past_the_timeout(tmp_path):
    receiver = Receiver(delay=3.0)
    try:
        notifier = Notifier([receiver.url()], outbox=tmp_path / "outbox.jsonl", timeout=0.5)
        outcome = notifier.send(notify.review_waiting(BATCH, ROWS))
    finally:
        receiver.stop()
    assert (outcome.sent, outcome.kept) == (0, 1)
    assert notifier.pending()[0]["attempts"] == 1


def test_an_entry_is_given_up_after_its_last_attempt_and_said_so(closed_port, tmp_path, caplog):
    port, _ = closed_port
    outbox = tmp_path / "outbox.jsonl"
    notifier = Notifier([f"json://127.0.0.1:{port}/hook"], outbox=outbox)
    notifier.send(notify.review_waiting(BATCH, ROWS))
    entry = json.loads(outbox.read_text())
    entry["attempts"] = notify.MAX_ATTEMPTS - 1
    outbox.write_text(json.dumps(entry) + "\n")
    caplog.clear()

    with caplog.at_level(logging.ERROR, logger="omi_batch.notify"):
        outcome = notifier.flush()

    assert (outcome.sent, outcome.kept, outcome.given_up) == (0, 0, 1)
    assert notifier.pending() == []
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"notification given up after {notify.MAX_ATTEMPTS} attempts"
    ]


def test_a_manual_run_without_an_outbox_logs_the_failure_and_goes_on(closed_port, caplog):
    port, _ = closed_port
    notifier = Notifier([f"json://127.0.0.1:{port}/hook"])
    with caplog.at_level(logging.ERROR, logger="omi_batch.notify"):
        outcome = notifier.send(notify.review_waiting(BATCH, ROWS))
    assert (outcome.sent, outcome.kept, outcome.given_up) == (0, 0, 1)
    [record] = caplog.records
    assert record.getMessage().startswith(
        f"notification not sent: review_waiting to json://127.0.0.1:{port}/…: "
    )


# --------------------------------------------------------------------------- secrets


def test_a_secret_in_the_url_never_reaches_the_log_the_outbox_or_an_error(closed_port, tmp_path,
                                                                          caplog):  # fmt: skip
    port, _ = closed_port
    outbox = tmp_path / "outbox.jsonl"
    url = f"json://user:${{OMI_NOTIFY_TOKEN}}@127.0.0.1:{port}/hook?-token=${{OMI_NOTIFY_TOKEN}}"
    notifier = Notifier([url], outbox=outbox, env={"OMI_NOTIFY_TOKEN": TOKEN})
    with caplog.at_level(logging.DEBUG):
        outcome = notifier.send(notify.review_waiting(BATCH, ROWS))
    assert outcome.kept == 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "token=***" in logged  # apprise did log the URL, scrubbed
    assert TOKEN not in logged
    assert TOKEN not in outbox.read_text()
    assert TOKEN not in " ".join(outcome.errors)
    assert TOKEN not in repr(notifier)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("hooks.example/x", "a notification URL looks like scheme://"),
        ("mailto://hr:hunter2@mail.example.vn", "carries a password"),
        ("json://hooks.example/x?-token=abc123", "-token= holds a value"),
        ("slack://hooks?apikey=xyz", "apikey= holds a value"),
        ("json://hooks.example/x?-token=${1TOKEN}", "${1TOKEN} is not the name"),
        ("json://hooks.example/x?-token=${TOKEN", "a ${ is not closed"),
    ],
)
def test_a_url_with_a_literal_secret_or_a_bad_reference_is_refused(url, says):
    with pytest.raises(UsageError, match=None) as raised:
        notify.check_url(url)
    assert says in str(raised.value)
    assert "hunter2" not in str(raised.value) and "abc123" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "json://hooks.example/x?-token=${OMI_NOTIFY_TOKEN}",
        "mailto://hr:${SMTP_PASSWORD}@mail.example.vn?to=hr@example.vn",
        "slack://${SLACK_TOKENS}/#offboarding",
        "json://127.0.0.1:8080/hook",
    ],
)
def test_a_url_with_references_for_its_secrets_is_accepted(url):
    notify.check_url(url)


def test_an_unset_variable_is_a_configuration_error_naming_it():
    with pytest.raises(ConfigError) as raised:
        notify.notifier_for(["json://h/x?-token=${OMI_NOTIFY_TOKEN}"], env={})
    assert str(raised.value) == (
        "OMI_NOTIFY_TOKEN is not set: a notification URL reads a secret from it"
    )


def test_a_service_apprise_does_not_know_is_a_configuration_error():
    with pytest.raises(ConfigError) as raised:
        notify.notifier_for(["nosuchservice://hooks.example/x"], env={})
    assert str(raised.value) == (
        "notification URL nosuchservice://hooks.example/…: apprise knows no service "
        "nosuchservice://"
    )


def test_no_url_means_no_notifier():
    assert notify.notifier_for([]) is None


def test_a_message_kind_is_one_of_the_three():
    with pytest.raises(ValueError):
        Message(kind="hello", title="t", body="b")


# --------------------------------------------------------------------------- a scheduled job


def notifying_job(tmp_path, url: str):
    return make_job(tmp_path, top=(f'notify = ["{url}"]',))


def job_env(server) -> dict[str, str]:
    return {"OMI_BASE_URL": server.url, "OMI_API_KEY": API_KEY, "OMI_NOTIFY_TOKEN": TOKEN}


def drop(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder.parent / f".{name}.tmp").write_text(text, encoding="utf-8")
    (folder.parent / f".{name}.tmp").replace(folder / name)


def approve_all(job, batch_id: str) -> None:
    """What a person does: approve every previewed row of the report, save it in approved/."""
    with open(job.review / f"{batch_id}-preview.csv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["approved"] = "yes" if row["preview_status"] == "previewed" else ""
    with open(job.approved / f"{batch_id}-preview.csv", "w", encoding="utf-8-sig",
              newline="") as f:  # fmt: skip
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_a_job_says_a_review_waits_once_and_then_that_the_batch_finished(
    tmp_path, simulator, receiver
):
    _, server = simulator
    job = notifying_job(tmp_path, receiver.url(query="+X-Hook-Token=${OMI_NOTIFY_TOKEN}"))
    drop(job.inbox, "departures.csv", GOOD_CSV)

    first = run_tick(job, env=job_env(server))
    [batch_id] = first.created
    assert [p["body"]["title"] for p in receiver.posts] == [
        f"omi-batch: batch {batch_id} is waiting for review"
    ]
    post = receiver.posts[0]
    assert post["headers"]["X-Hook-Token"] == TOKEN
    lines = post["body"]["message"].splitlines()
    assert lines[:3] == [
        f"Batch {batch_id} (job offboarding) is waiting for review.",
        "File: departures.csv",
        "Rows: 5 (5 previewed, 0 failed their preview)",
    ]
    assert lines[-1].startswith(f"Approve: fill the approved column and save the report in "
                                f"{job.approved}")  # fmt: skip
    [attachment] = post["body"]["attachments"]
    assert attachment["filename"] in (f"{batch_id}-review.xlsx", f"{batch_id}-preview.csv")

    run_tick(job, env=job_env(server))  # still waiting: said once is enough
    assert len(receiver.posts) == 1

    approve_all(job, batch_id)
    last = run_tick(job, env=job_env(server))
    assert last.archived == [batch_id]
    assert [p["body"]["title"] for p in receiver.posts[1:]] == [
        f"omi-batch: batch {batch_id} finished: 5 succeeded"
    ]
    assert not job.outbox_path.exists() or job.outbox_path.read_text() == ""


def test_a_job_keeps_what_it_could_not_send_and_sends_it_on_the_next_tick(
    tmp_path, simulator, closed_port
):
    _, server = simulator
    port, release = closed_port
    job = notifying_job(tmp_path, f"json://127.0.0.1:{port}/hook?-token=${{OMI_NOTIFY_TOKEN}}")
    drop(job.inbox, "departures.csv", GOOD_CSV)

    first = run_tick(job, env=job_env(server))

    assert first.exit_code == 0  # a notification that fails never fails the tick
    [kept] = [json.loads(line) for line in job.outbox_path.read_text().splitlines()]
    assert kept["kind"] == "review_waiting" and kept["batch"] == first.created[0]
    assert TOKEN not in job.outbox_path.read_text()

    release()
    receiver = Receiver(port=port)
    try:
        second = run_tick(job, env=job_env(server))
    finally:
        receiver.stop()
    assert second.exit_code == 0
    assert [p["body"]["title"] for p in receiver.posts] == [kept["title"]]
    assert receiver.posts[0]["path"] == f"/hook?token={TOKEN}"
    assert job.outbox_path.read_text() == ""


def test_a_job_says_a_rejected_file_needs_attention(tmp_path, simulator, receiver):
    _, server = simulator
    job = notifying_job(tmp_path, receiver.url())
    drop(job.inbox, "bad.csv", "source_email,target_email\nan.nguyen@example,binh@example.vn\n")

    result = run_tick(job, env=job_env(server))

    assert result.rejected == [job.rejected / "bad.csv"]
    [post] = receiver.posts
    assert post["body"]["type"] == "warning"
    assert post["body"]["title"] == "omi-batch: file bad.csv was rejected"
    lines = post["body"]["message"].splitlines()
    assert lines[0].startswith("File bad.csv was rejected by job offboarding: ")
    assert lines[1].startswith("  row 2: ")
    assert lines[-1] == f"Every error: {job.rejected / 'bad.csv.errors.csv'}"


def test_a_job_file_with_a_literal_secret_in_a_notify_url_is_refused(tmp_path):
    path = write_job(tmp_path / "offboarding.toml",
                     top=('notify = ["json://hooks.example.vn/x?-token=abc"]',))  # fmt: skip
    with pytest.raises(UsageError) as raised:
        load_job(path)
    assert str(raised.value) == (
        "offboarding.toml: notify: notification URL json://hooks.example.vn/…: -token= holds a "
        "value; write ${NAME} there and keep the value in the environment variable NAME"
    )


def test_run_declined_at_the_prompt_says_a_review_waits_with_the_workbook_attached(
    tmp_path, simulator, receiver
):
    """`run --notify URL` at a terminal, answered "n": the review-waiting notification carries
    the review workbook, as a job's does (it attached the preview CSV before)."""
    import os
    import re
    import subprocess
    import sys

    from helpers import WEBHOOK_SECRET

    _, server = simulator
    source = tmp_path / "departures.csv"
    source.write_text(GOOD_CSV, encoding="utf-8")
    env = {**os.environ, "OMI_BASE_URL": server.url, "OMI_API_KEY": API_KEY,
           "OMI_WEBHOOK_SECRET": WEBHOOK_SECRET}  # fmt: skip
    env.pop("OMI_WEBHOOK_URL", None)
    terminal, stdin = os.openpty()  # the prompt needs a terminal; the answer is typed ahead
    try:
        os.write(terminal, b"n\n")
        done = subprocess.run(
            [sys.executable, "-m", "omi_batch", "run", str(source), "--listen", "127.0.0.1:0",
             "--rate", "1000", "--notify", receiver.url(), "--ledger", str(tmp_path / "l.db"),
             "--reports", str(tmp_path / "reports")],
            stdin=stdin, capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
    finally:
        os.close(stdin)
        os.close(terminal)
    assert done.returncode == 0, done.stderr
    assert "Nothing executed. Approve later: omi-batch approve " in done.stderr
    [post] = receiver.posts
    title = re.fullmatch(r"omi-batch: batch (\S+) is waiting for review", post["body"]["title"])
    book = tmp_path / "reports" / f"{title[1]}-review.xlsx"
    [attachment] = post["body"]["attachments"]
    assert attachment["filename"] == book.name
    assert base64.b64decode(attachment["base64"]) == book.read_bytes()


def test_a_job_whose_notify_variable_is_unset_stops_before_anything_is_sent(tmp_path, simulator):
    _, server = simulator
    job = notifying_job(tmp_path, "json://127.0.0.1:9/hook?-token=${OMI_NOTIFY_TOKEN}")
    drop(job.inbox, "departures.csv", GOOD_CSV)
    env = {"OMI_BASE_URL": server.url, "OMI_API_KEY": API_KEY}
    with pytest.raises(ConfigError) as raised:
        run_tick(job, env=env)
    assert str(raised.value) == (
        "OMI_NOTIFY_TOKEN is not set: a notification URL of job offboarding reads a secret "
        "from it (notify in offboarding.toml)"
    )
    assert (job.inbox / "departures.csv").exists()


def test_the_example_job_files_optional_keys_parse_once_uncommented(tmp_path):
    text = (REPO / "jobs" / "offboarding.toml").read_text(encoding="utf-8")
    for key in ("notify = ", "metrics_file = ", "log_format = "):
        text = text.replace(f"# {key}", key)
    text = text.replace('#           "json://', '           "json://')
    path = tmp_path / "jobs" / "offboarding.toml"
    path.parent.mkdir()
    path.write_text(text.replace('root = ".."', f'root = "{REPO}"'), encoding="utf-8")
    job = load_job(path)
    assert job.notify == (
        "mailto://hr-bot:${SMTP_PASSWORD}@mail.example.vn?to=hr@example.vn",
        "json://hooks.example.vn/omi-batch?-token=${OMI_NOTIFY_TOKEN}",
    )
    assert job.metrics_file == Path("/var/lib/node_exporter/textfile/omi_batch.prom")
    assert job.log_format == "json"


# --------------------------------------------------------------------------- by hand


def test_run_with_notify_says_the_batch_finished(tmp_path, runner, env, receiver):
    from omi_batch.cli import cli

    csv_file = tmp_path / "departures.csv"
    csv_file.write_text(GOOD_CSV, encoding="utf-8")
    url = receiver.url(query="+X-Hook-Token=${OMI_NOTIFY_TOKEN}")
    result = runner.invoke(
        cli,
        ["run", str(csv_file), "--yes", "--listen", "127.0.0.1:0", "--wait", "10",
         "--ledger", str(tmp_path / "ledger.db"), "--reports", str(tmp_path / "reports"),
         "--notify", url],
        env={"OMI_NOTIFY_TOKEN": TOKEN},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [post] = receiver.posts
    assert post["headers"]["X-Hook-Token"] == TOKEN
    assert post["body"]["title"].endswith(" finished: 5 succeeded")
    assert post["body"]["message"].splitlines()[1] == "Per target:"
    assert TOKEN not in result.output


def test_execute_with_a_notify_variable_unset_exits_3_before_sending(tmp_path, runner, env):
    from omi_batch.cli import cli

    result = runner.invoke(
        cli,
        ["execute", "20261201-093000-ab12", "--yes", "--ledger", str(tmp_path / "ledger.db"),
         "--notify", "json://127.0.0.1:9/hook?-token=${OMI_NOTIFY_TOKEN}"],
        env={"OMI_NOTIFY_TOKEN": None},
    )  # fmt: skip
    assert result.exit_code == 3
    assert result.output.splitlines()[-1] == (
        "Error: OMI_NOTIFY_TOKEN is not set: a notification URL reads a secret from it"
    )
    assert not (tmp_path / "ledger.db").exists()


def test_batch_finished_counts_a_row_with_tickets_once_and_says_how_many_tickets_moved():
    both = {"row": 2, "source_email": "tuan.ho@example.vn", "target_email": "hanh.ngo@example.vn",
            "state": "succeeded", "updated_records": 12, "kind": "conversations"}  # fmt: skip
    rows = [both, dict(both, kind="tickets", updated_records=2),
            dict(both, row=3, kind="tickets", state="failed", updated_records=None)]  # fmt: skip

    message = notify.batch_finished(BATCH, rows, summary="done")

    assert message.body.splitlines()[2:] == [
        "  hanh.ngo@example.vn: 1 of 2 rows succeeded, 12 conversations and 2 tickets moved"
    ]

"""Logs on stderr: plain text by default, one JSON object a line with --log-format json, and
never a secret in either."""

from __future__ import annotations

import io
import json
import logging

import pytest
from helpers import API_KEY, GOOD_CSV, WEBHOOK_SECRET, make_batch, webhook_serve, write_job

from omi_batch import callbacks, logs
from omi_batch.config import Secret

BATCH = "20261201-093000-ab12"
ENV = {"OMI_API_KEY": API_KEY, "OMI_WEBHOOK_SECRET": WEBHOOK_SECRET}
TOKEN = callbacks.token(Secret(WEBHOOK_SECRET), BATCH, 3, "execute")


@pytest.fixture
def stream():
    """setup_logging writing into a buffer; the handler is removed after the test."""
    buffer = io.StringIO()
    yield buffer
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logs.StderrHandler)]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_logs_are_one_object_a_line_with_the_context_fields(stream):
    logs.setup_logging(1, "json", stream=stream, env=ENV)
    log = logging.getLogger("omi_batch.webhook")

    log.info("callback batch=%s row=%s phase=%s verdict=%s status=%d", BATCH, 3, "execute",
             "applied", 200)  # fmt: skip
    log.warning("answered late", extra={"event": "callback_late", "batch": BATCH, "row": 4,
                                        "request_id": "req-77"})  # fmt: skip
    log.debug("not shown at -v")

    first, second = lines(stream)
    assert list(first) == ["time", "level", "logger", "event", "batch", "row", "request_id",
                           "message"]  # fmt: skip
    assert first["time"].endswith("Z") and first["time"][10] == "T"
    assert {k: v for k, v in first.items() if k != "time"} == {
        "level": "INFO", "logger": "omi_batch.webhook", "event": "callback", "batch": BATCH,
        "row": 3, "request_id": None,
        "message": f"callback batch={BATCH} row=3 phase=execute verdict=applied status=200",
    }  # fmt: skip
    assert {k: v for k, v in second.items() if k != "time"} == {
        "level": "WARNING", "logger": "omi_batch.webhook", "event": "callback_late",
        "batch": BATCH, "row": 4, "request_id": "req-77", "message": "answered late",
    }  # fmt: skip


def test_plain_text_stays_the_default(stream):
    logs.setup_logging(1, stream=stream, env=ENV)
    logging.getLogger("omi_batch.jobs").info("job offboarding: batch %s: waiting", BATCH)
    [line] = stream.getvalue().splitlines()
    assert line.endswith(f" INFO omi_batch.jobs: job offboarding: batch {BATCH}: waiting")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_secret_reaches_the_log_in_either_format(stream, fmt):
    logs.setup_logging(2, fmt, stream=stream, env=ENV)
    log = logging.getLogger("omi_batch.client")

    log.info("the key is %s and the secret %s", API_KEY, WEBHOOK_SECRET)
    log.info("headers {'X-Omi-Batch-Token': '%s', 'x-api-key': 'other-key-1234567'}", TOKEN)
    log.info("callback batch=%s row=3 phase=execute: presented %s", BATCH, TOKEN)
    log.info("Authorization: Bearer bearer-token-0a9b8c7d")
    try:
        raise RuntimeError(f"POST failed with x-api-key={API_KEY}")
    except RuntimeError:
        log.exception("request failed")

    output = stream.getvalue()
    for secret in (API_KEY, WEBHOOK_SECRET, TOKEN, "other-key-1234567", "bearer-token-0a9b8c7d"):
        assert secret not in output
    assert output.count("***") >= 7
    if fmt == "json":
        assert [line["message"] for line in lines(stream)][:3] == [
            "the key is *** and the secret ***",
            "headers {'X-Omi-Batch-Token': '***', 'x-api-key': '***'}",
            f"callback batch={BATCH} row=3 phase=execute: presented ***",
        ]
        assert "RuntimeError: POST failed with x-api-key=***" in lines(stream)[-1]["error"]


def test_a_secret_added_later_is_scrubbed_too(stream):
    logs.setup_logging(1, "json", stream=stream, env={})
    logs.add_secret(Secret("job-specific-key-44a1"))
    logging.getLogger("omi_batch.jobs").warning("saw job-specific-key-44a1")
    assert lines(stream)[0]["message"] == "saw ***"


def test_setting_up_again_replaces_its_own_handler_only(stream):
    other = logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(other)
    try:
        logs.setup_logging(0, "text", stream=io.StringIO(), env={})
        logs.setup_logging(1, "json", stream=stream, env={})
        ours = [h for h in root.handlers if isinstance(h, logs.StderrHandler)]
        assert len(ours) == 1 and other in root.handlers
        assert root.level == logging.INFO
    finally:
        root.removeHandler(other)


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="log format must be one of text, json, not 'xml'"):
        logs.setup_logging(0, "xml")


def test_webhook_serve_logs_json_lines_without_a_secret(ledger_path):
    import requests

    from omi_batch.ledger import Ledger

    with Ledger(ledger_path) as ledger:
        batch_id = make_batch(ledger, rows=1)
    token = callbacks.token(Secret(WEBHOOK_SECRET), batch_id, 2, "execute")
    body = b'{"requestId": "req-2", "status": "SUCCESS", "payload": {"updatedRecords": 3}}'
    with webhook_serve(ledger_path, "--metrics", "--log-format", "json", "-vv", env=ENV) as served:
        answers = [
            requests.post(f"{served.url}/callbacks/{batch_id}/2/execute", data=body,
                          headers={callbacks.HEADER: token}, timeout=10).status_code,
            requests.post(f"{served.url}/callbacks/{batch_id}/2/execute", data=body,
                          headers={callbacks.HEADER: token[::-1]}, timeout=10).status_code,
        ]  # fmt: skip
        assert served.stop() == 0
    stderr = served.stderr
    assert answers == [200, 401]
    records = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
    callbacks_logged = [r for r in records if r["event"] == "callback"]
    assert [(r["batch"], r["row"], r["level"]) for r in callbacks_logged] == [
        (batch_id, 2, "INFO"), (batch_id, 2, "INFO"),
    ]  # fmt: skip
    assert "verdict=applied status=200" in callbacks_logged[0]["message"]
    assert "verdict=refused:bad_credential status=401" in callbacks_logged[1]["message"]
    assert records[-1]["message"] == "Webhook receiver stopped."
    for secret in (API_KEY, WEBHOOK_SECRET, token, token[::-1]):
        assert secret not in stderr


@pytest.mark.parametrize("asked", ["option", "job file"])
def test_a_job_tick_logs_json_lines_without_a_secret(tmp_path, runner, simulator, stream, asked):

    from omi_batch.cli import cli

    _, server = simulator
    extra = ('log_format = "json"',) if asked == "job file" else ()
    job_file = write_job(tmp_path / "offboarding.toml", policy="auto", top=extra)
    (tmp_path / "work" / "inbox").mkdir(parents=True)
    (tmp_path / "work" / "inbox" / "departures.csv").write_text(GOOD_CSV, encoding="utf-8")
    args = ["job", "run", str(job_file), "-vv"] + (["--log-format", "json"] if asked == "option"
                                                    else [])  # fmt: skip
    env = {"OMI_BASE_URL": server.url, **ENV, "OMI_WEBHOOK_URL": None}

    result = runner.invoke(cli, args, env=env)

    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    jobs = [r for r in records if r["logger"] == "omi_batch.jobs"]
    assert jobs[-1]["message"].startswith("job offboarding: tick done: 1 new batch(es)")
    [created] = [r for r in jobs if "created with" in r["message"]]
    assert created["batch"] and created["level"] == "INFO"
    assert any(r["event"] == "callback" for r in records)  # the tick's receiver logged too
    for secret in (API_KEY, WEBHOOK_SECRET):
        assert secret not in result.stderr
    tokens = [callbacks.token(Secret(WEBHOOK_SECRET), created["batch"], row, phase)
              for row in range(2, 8) for phase in callbacks.PHASES]  # fmt: skip
    assert not [t for t in tokens if t in result.stderr]


def test_a_usage_error_is_one_json_line_when_the_log_is_json(runner, stream):
    from omi_batch.cli import cli

    result = runner.invoke(cli, ["webhook", "serve", "--log-format", "json", "--port", "nope"])

    assert result.exit_code == 2
    assert result.stdout == ""
    [record] = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    assert (record["level"], record["event"], record["message"]) == (
        "ERROR",
        "usage_error",
        "Invalid value for '--port': 'nope' is not a valid integer range. "
        "(see: cli webhook serve --help)",
    )


def test_a_usage_error_stays_clicks_own_text_without_json_logs(runner):
    from omi_batch.cli import cli

    result = runner.invoke(cli, ["webhook", "serve", "--port", "nope"])

    assert result.exit_code == 2
    assert result.stderr == (
        "Usage: cli webhook serve [OPTIONS]\nTry 'cli webhook serve --help' for help.\n\n"
        "Error: Invalid value for '--port': 'nope' is not a valid integer range.\n"
    )


def test_a_job_whose_file_asks_for_json_logs_reports_its_error_as_json(tmp_path, runner, stream):
    from omi_batch.cli import cli

    job_file = write_job(tmp_path / "offboarding.toml", top=('log_format = "json"',))
    (tmp_path / "work" / "inbox").mkdir(parents=True)
    (tmp_path / "work" / "inbox" / "departures.csv").write_text(GOOD_CSV, encoding="utf-8")
    env = {"OMI_BASE_URL": None, "OMI_API_KEY": API_KEY, "OMI_WEBHOOK_SECRET": WEBHOOK_SECRET}

    result = runner.invoke(cli, ["job", "run", str(job_file)], env=env)

    assert result.exit_code == 3
    records = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    assert (records[-1]["level"], records[-1]["event"]) == ("ERROR", "error")
    assert records[-1]["message"].startswith("OMI_BASE_URL is not set")
    for secret in (API_KEY, WEBHOOK_SECRET):
        assert secret not in result.stderr

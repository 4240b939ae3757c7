"""Logs on stderr: plain text by default, one JSON object a line with --log-format json, and
never a secret in either."""

from __future__ import annotations

import io
import json
import logging

import pytest
from conftest import API_KEY, WEBHOOK_SECRET

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
    for handler in [h for h in root.handlers if isinstance(h, logs._Handler)]:
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
        ours = [h for h in root.handlers if isinstance(h, logs._Handler)]
        assert len(ours) == 1 and other in root.handlers
        assert root.level == logging.INFO
    finally:
        root.removeHandler(other)


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="log format must be one of text, json, not 'xml'"):
        logs.setup_logging(0, "xml")

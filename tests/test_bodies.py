"""Hostile callback bodies: nesting, lone surrogates and counts that are not counts (issue 12)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from omi_batch.bodies import MAX_DEPTH, BodyError, parse_body, safe_text, too_deep
from omi_batch.verdicts import whole_count


def test_a_body_nested_30000_deep_is_refused_as_too_deep_without_recursing():
    raw = b'{"requestId": "r", "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    with pytest.raises(BodyError) as refused:
        parse_body(raw)
    assert refused.value.reason == "too_deep"


def test_nesting_up_to_the_limit_is_read_and_brackets_in_strings_do_not_count():
    inner = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    raw = json.dumps({"requestId": "r", "note": "[" * 500, "x": json.loads(inner)}).encode()
    assert not too_deep(raw)
    assert parse_body(raw)["note"] == "[" * 500
    assert too_deep(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))


def test_a_lone_surrogate_is_kept_escaped_and_stores_in_sqlite():
    body = parse_body(b'{"requestId": "r-\\ud800", "payload": {"message": ["\\udfff"]}}')
    assert body["requestId"] == "r-\\ud800"
    assert body["payload"]["message"] == ["\\udfff"]
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (v TEXT)")
    conn.execute("INSERT INTO t VALUES (?)", (body["requestId"],))  # no UnicodeEncodeError


def test_a_surrogate_pair_stays_the_character_it_spells():
    assert parse_body(b'{"requestId": "\\ud83d\\ude00"}')["requestId"] == "\U0001f600"
    assert safe_text("ok \u00e9") == "ok \u00e9"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b"nope", "bad_json"), (b"[1]", "bad_json"), (b"{}", "no_request_id"),
     (b'{"requestId": 5}', "no_request_id"), (b'{"requestId": "\xff"}', "bad_json")],
)  # fmt: skip
def test_bodies_that_are_not_callbacks_are_refused_by_name(raw, reason):
    with pytest.raises(BodyError) as refused:
        parse_body(raw)
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [(7, 7), (0, 0), (None, None), (2**63 - 1, 2**63 - 1), (2**63, None), (10**400, None),
     (-1, None), (1.5, None), (7.0, None), ("3", None), (True, None), ([3], None)],
)  # fmt: skip
def test_only_a_non_negative_64_bit_integer_is_a_count(value, expected):
    assert whole_count(value) == expected

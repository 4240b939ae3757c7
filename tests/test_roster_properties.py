"""Properties of the roster: any random mapping of agents is either resolved into a plan that
routes every conversation once to someone who stays, or refused with the cycle or conflict
named. Checked against a small, slow, obviously-correct model of the rules."""

from __future__ import annotations

import csv
import re
import tempfile
from pathlib import Path

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omi_batch.errors import InputError
from omi_batch.roster import _FAST_EMAIL, _fast_valid, read_plan

AGENTS = [f"{name}@acme.vn" for name in ("an", "binh", "chi", "dung", "em", "giang")]
CONVERSATIONS = ["c1", "c2", "c3"]

row_strategy = st.tuples(
    st.sampled_from(AGENTS),
    st.sampled_from(AGENTS),
    st.lists(st.sampled_from(CONVERSATIONS), max_size=2, unique=True).map(tuple),
    st.booleans(),
)
mapping_strategy = st.lists(row_strategy, min_size=1, max_size=10)


def model(rows: list[tuple]) -> tuple[set[str], list[tuple]]:
    """The rules, written plainly: the problem codes a file must get, and the rows kept."""
    codes: set[str] = set()
    kept, seen = [], set()
    for number, (source, target, ids, replace) in enumerate(rows, start=2):
        if source == target:
            codes.add("source_is_target")
            continue
        if (source, target, ids, replace) in seen:
            continue  # an exact duplicate: a warning, kept once
        seen.add((source, target, ids, replace))
        kept.append((number, source, target, ids, replace))
    catch_all: dict[str, str] = {}
    for _, source, target, ids, _ in kept:
        if not ids:
            if source in catch_all:
                codes.add("two_catch_alls")
            else:
                catch_all[source] = target
    pairs = [(source, c) for _, source, _, ids, _ in kept for c in ids]
    if len(pairs) != len(set(pairs)):
        codes.add("duplicate_conversation")
    for _, source, target, _, _ in kept:
        path, current = [source], target
        for _ in range(len(AGENTS) + 2):  # bounded walk along the catch-all rows
            if current in path:
                codes.add("cycle")
                break
            if current not in catch_all:
                break
            path.append(current)
            current = catch_all[current]
    return codes, kept


def write(folder: str, rows: list[tuple]) -> Path:
    path = Path(folder) / "departures.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source_email", "target_email", "conv_ids", "replace_existing_members"])
        for source, target, ids, replace in rows:
            writer.writerow([source, target, " ".join(ids), "yes" if replace else "no"])
    return path


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=mapping_strategy)
def test_a_mapping_is_resolved_or_refused_with_the_reason(rows):
    expected, kept = model(rows)
    with tempfile.TemporaryDirectory() as folder:
        path = write(folder, rows)
        try:
            plan = read_plan(path)
        except InputError as error:
            reported = {p.code for p in error.problems}
            assert expected, f"refused a good mapping: {[str(p) for p in error.problems]}"
            # Conflicts are always named; a cycle may hide behind a row already refused.
            assert expected - {"cycle"} <= reported <= expected
            for problem in error.problems:
                if problem.code == "cycle":
                    check_cycle_is_real(problem.message, rows)
            return
    assert not expected, f"accepted a mapping with {expected}"
    check_plan(plan, rows, kept)


def check_cycle_is_real(message: str, rows: list[tuple]) -> None:
    """The named loop starts and ends at one agent, and every step is a row of the file."""
    loop = message.split(" (rows ")[0].split(" → ")
    assert loop[0] == loop[-1] and len(loop) >= 3
    edges = {(source, target) for source, target, _, _ in rows}
    for step in zip(loop, loop[1:], strict=False):
        assert step in edges


def check_plan(plan, rows: list[tuple], kept: list[tuple]) -> None:
    catch_all = {t.source_email: t for t in plan.transfers if t.catch_all}
    # Every row is in the plan once, or was an exact duplicate of one that is.
    assert sorted(t.row for t in plan.transfers) == [number for number, *_ in kept]
    duplicates = [w.row for w in plan.warnings if w.code == "duplicate_row"]
    assert sorted(duplicates + [t.row for t in plan.transfers]) == list(range(2, len(rows) + 2))
    routed = set()
    for t in plan.transfers:
        # Nobody receives conversations while leaving, and nobody gets their own back.
        assert t.target_email not in catch_all
        assert t.target_email != t.source_email
        # The chain is exactly the catch-all rows followed from the requested target.
        walk, current = [], t.requested_target
        while current in catch_all:
            walk.append(current)
            current = catch_all[current].requested_target
        assert (t.target_email, t.via) == (current, tuple(walk))
        has_warning = any(w.row == t.row and w.code == "chain" for w in plan.warnings)
        assert has_warning == bool(t.via)
        for conversation in t.conv_ids:
            assert (t.source_email, conversation) not in routed
            routed.add((t.source_email, conversation))
    # Sources in order of first appearance; per source its conv_ids rows first, catch-all last.
    first_seen = list(dict.fromkeys(source for _, source, *_ in kept))
    assert plan.sources() == first_seen
    for source in first_seen:
        own = [t for t in plan.transfers if t.source_email == source]
        assert [t.catch_all for t in own] == sorted(t.catch_all for t in own)
        assert [t.row for t in own if t.conv_ids] == sorted(t.row for t in own if t.conv_ids)
    positions = [first_seen.index(t.source_email) for t in plan.transfers]
    assert positions == sorted(positions)


@pytest.mark.parametrize(
    "rows",
    [
        [("an@acme.vn", "binh@acme.vn", (), False), ("binh@acme.vn", "an@acme.vn", (), False)],
        [
            ("an@acme.vn", "binh@acme.vn", ("c1",), False),
            ("binh@acme.vn", "chi@acme.vn", (), False),
            ("chi@acme.vn", "an@acme.vn", (), False),
        ],
        [
            ("an@acme.vn", "binh@acme.vn", (), False),
            ("an@acme.vn", "chi@acme.vn", ("c1",), False),
            ("chi@acme.vn", "an@acme.vn", (), False),
        ],
    ],
    ids=["a-b-a", "conv-row-a-b-c-a", "conv-row-back-to-a-leaving"],
)
def test_known_cycles_agree_with_the_model(rows):
    assert model(rows)[0] == {"cycle"}
    with tempfile.TemporaryDirectory() as folder, pytest.raises(InputError) as caught:
        read_plan(write(folder, rows))
    assert [p.code for p in caught.value.problems] == ["cycle"]


# --------------------------------------------------------------------------- email fast path


def accepted_by_email_validator(email: str) -> bool:
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


@settings(max_examples=500, deadline=None)
@given(
    email=st.one_of(
        st.emails().map(str.lower),
        st.from_regex(_FAST_EMAIL, fullmatch=True),
        st.from_regex(re.compile(r"[a-z0-9.\-]{1,70}@[a-z0-9.\-]{1,70}"), fullmatch=True),
    )
)
def test_fast_email_check_accepts_only_what_email_validator_accepts(email):
    if _fast_valid(email):
        assert accepted_by_email_validator(email), email

"""What a row moves (`scope`), one mailbox written two ways, and warnings beside their row."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from omi_batch.errors import InputError, UsageError
from omi_batch.roster import read_plan


def write(path: Path, *lines: str) -> Path:
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    return path


def refused(path: Path, **options) -> list:
    """The problems ``read_plan`` refuses ``path`` with (it must refuse it)."""
    with pytest.raises(InputError) as caught:
        read_plan(path, **options)
    return caught.value.problems


def problems(path: Path, **options) -> list[tuple[int | None, str]]:
    return [(p.row, p.code) for p in refused(path, **options)]


def told(path: Path, **options) -> list[str]:
    """Each problem as the person reads it: ``row N: code: message``."""
    return [str(p) for p in refused(path, **options)]


def plan_rows(path: Path, **options) -> list[tuple]:
    return [(t.row, t.source_email, t.target_email, t.conv_ids, t.scope)
            for t in read_plan(path, **options).transfers]  # fmt: skip


# --------------------------------------------------------------------------- scope


@pytest.mark.parametrize(
    "cell,scope",
    [("", "conversations"), ("conversations", "conversations"), ("Conversation", "conversations"),
     ("conv", "conversations"), ("CHAT", "conversations"), ("tickets", "tickets"),
     ("Ticket", "tickets"), ("both", "both"), ("ALL", "both"), (" Both ", "both")],
)  # fmt: skip
def test_the_scope_column_says_what_a_row_moves(tmp_path, cell, scope):
    path = write(tmp_path / "d.csv", "source_email,target_email,scope", f"a@x.vn,b@x.vn,{cell}")
    assert plan_rows(path) == [(2, "a@x.vn", "b@x.vn", (), scope)]


def test_an_unknown_scope_is_a_problem_with_its_row(tmp_path):
    path = write(tmp_path / "d.csv", "source_email,target_email,scope", "a@x.vn,b@x.vn,phones")
    assert told(path) == [
        "row 2: bad_scope: scope is 'phones': use conversations, tickets or both "
        "(blank = conversations)"
    ]


def test_a_file_without_the_column_takes_the_scope_it_is_given(tmp_path):
    path = write(tmp_path / "d.csv", "source_email,target_email", "a@x.vn,b@x.vn")
    assert plan_rows(path, scope="both") == [(2, "a@x.vn", "b@x.vn", (), "both")]
    assert plan_rows(path, scope="Tickets") == [(2, "a@x.vn", "b@x.vn", (), "tickets")]
    assert plan_rows(path) == [(2, "a@x.vn", "b@x.vn", (), "conversations")]


def test_the_given_scope_fills_blank_cells_only(tmp_path):
    path = write(tmp_path / "d.csv", "source_email,target_email,scope", "a@x.vn,b@x.vn,",
                 "c@x.vn,d@x.vn,conversations")  # fmt: skip
    assert [t.scope for t in read_plan(path, scope="both").transfers] == ["both", "conversations"]


def test_an_unknown_scope_option_is_a_usage_error(tmp_path):
    path = write(tmp_path / "d.csv", "source_email,target_email", "a@x.vn,b@x.vn")
    with pytest.raises(
        UsageError, match="scope 'phones' is not one of: conversations, tickets, both"
    ):
        read_plan(path, scope="phones")


@pytest.mark.parametrize("scope", ["tickets", "both"])
def test_tickets_with_conv_ids_is_a_problem_with_its_row(tmp_path, scope):
    path = write(tmp_path / "d.csv", "source_email,target_email,conv_ids,scope",
                 "a@x.vn,b@x.vn,,", f"c@x.vn,d@x.vn,c1;c2,{scope}")  # fmt: skip
    assert problems(path) == [(3, "tickets_with_conv_ids")]


def test_conv_ids_rows_move_conversations_whatever_the_given_scope(tmp_path):
    path = write(tmp_path / "d.csv", "source_email,target_email,conv_ids", "a@x.vn,b@x.vn,c1")
    assert problems(path, scope="tickets") == [(2, "tickets_with_conv_ids")]


def test_two_rows_of_one_source_may_not_both_carry_tickets(tmp_path):
    path = write(tmp_path / "d.csv", "source_email,target_email,scope",
                 "a@x.vn,b@x.vn,tickets", "a@x.vn,c@x.vn,both")  # fmt: skip
    assert told(path) == [
        "row 3: two_ticket_rows: the tickets of a@x.vn already go to b@x.vn in row 2; tickets "
        "move from a source as a whole, so only one row of a source may have scope tickets or both"
    ]


def test_a_source_splits_its_conversations_and_its_tickets(tmp_path):
    path = write(tmp_path / "d.csv", "source_email,target_email,conv_ids,replace_existing_members,scope",
                 "a@x.vn,t@x.vn,,,tickets", "a@x.vn,b@x.vn,,,", "a@x.vn,c@x.vn,c1,true,")  # fmt: skip
    # conv_ids rows first, then the catch-all, then the tickets (after its conversation rows)
    assert plan_rows(path) == [
        (4, "a@x.vn", "c@x.vn", ("c1",), "conversations"),
        (3, "a@x.vn", "b@x.vn", (), "conversations"),
        (2, "a@x.vn", "t@x.vn", (), "tickets"),
    ]


def test_a_tickets_row_is_not_a_second_catch_all(tmp_path):
    path = write(tmp_path / "d.csv", "source_email,target_email,scope",
                 "a@x.vn,b@x.vn,conversations", "a@x.vn,c@x.vn,tickets")  # fmt: skip
    assert [t.catch_all for t in read_plan(path).transfers] == [True, False]


def test_a_both_row_and_a_conversations_row_of_one_source_are_two_catch_alls(tmp_path):
    path = write(tmp_path / "d.csv", "source_email,target_email,scope",
                 "a@x.vn,b@x.vn,both", "a@x.vn,c@x.vn,")  # fmt: skip
    assert problems(path) == [(3, "two_catch_alls")]


def test_tickets_follow_the_chain_of_ticket_rows(tmp_path):
    # b leaves too: a's tickets go on to where b's tickets go; b's conversations are not asked.
    path = write(tmp_path / "d.csv", "source_email,target_email,scope",
                 "a@x.vn,b@x.vn,tickets", "b@x.vn,c@x.vn,tickets")  # fmt: skip
    plan = read_plan(path)
    assert [(t.row, t.target_email, t.via) for t in plan.transfers] == [
        (2, "c@x.vn", ("b@x.vn",)),
        (3, "c@x.vn", ()),
    ]
    assert [(w.row, w.code) for w in plan.warnings] == [(2, "chain")]


def test_a_conversations_chain_does_not_move_tickets(tmp_path):
    path = write(tmp_path / "d.csv", "source_email,target_email,scope",
                 "a@x.vn,b@x.vn,tickets", "b@x.vn,c@x.vn,conversations")  # fmt: skip
    assert [(t.row, t.target_email) for t in read_plan(path).transfers] == [
        (2, "b@x.vn"),
        (3, "c@x.vn"),
    ]


def test_a_both_row_whose_chains_part_ways_is_a_problem(tmp_path):
    path = write(tmp_path / "d.csv", "source_email,target_email,scope",
                 "a@x.vn,b@x.vn,both", "b@x.vn,c@x.vn,conversations", "b@x.vn,d@x.vn,tickets")  # fmt: skip
    assert told(path) == [
        "row 2: split_chain: b@x.vn is leaving too: its conversations go on to c@x.vn but its "
        "tickets to d@x.vn; give this row's conversations and tickets one row each"
    ]


def test_a_cycle_of_ticket_rows_is_named(tmp_path):
    path = write(tmp_path / "d.csv", "source_email,target_email,scope",
                 "a@x.vn,b@x.vn,tickets", "b@x.vn,a@x.vn,tickets")  # fmt: skip
    assert problems(path) == [(2, "cycle")]


def test_scope_is_in_the_plan_json(tmp_path):
    path = write(tmp_path / "d.csv", "source_email,target_email,scope", "a@x.vn,b@x.vn,both")
    assert read_plan(path).to_dict()["transfers"][0]["scope"] == "both"


# --------------------------------------------------------------------------- one mailbox

IDN = "nguyễn@công-ty.vn"
PUNY = "nguyễn@xn--cng-ty-ixa.vn"
NFD = unicodedata.normalize("NFD", IDN)


@pytest.mark.parametrize(
    "other", [PUNY, NFD, "NGUYỄN@CÔNG-TY.VN"], ids=["punycode", "nfd", "upper"]
)
def test_one_mailbox_written_two_ways_is_one_agent(tmp_path, other):
    two_catch_alls = write(tmp_path / "a.csv", "source_email,target_email",
                           f"{IDN},b@x.vn", f"{other},c@x.vn")  # fmt: skip
    assert problems(two_catch_alls) == [(3, "two_catch_alls")]
    cycle = write(tmp_path / "b.csv", "source_email,target_email", f"{IDN},b@x.vn",
                  f"b@x.vn,{other}")  # fmt: skip
    assert problems(cycle) == [(2, "cycle")]
    same = write(tmp_path / "c.csv", "source_email,target_email", f"{IDN},{other}")
    assert problems(same) == [(2, "source_is_target")]
    conversation = write(tmp_path / "d.csv", "source_email,target_email,conv_ids",
                         f"{IDN},b@x.vn,c1", f"{other},c@x.vn,c1")  # fmt: skip
    assert problems(conversation) == [(3, "duplicate_conversation")]


def test_duplicates_and_chains_see_one_mailbox_in_two_spellings(tmp_path):
    path = write(tmp_path / "d.csv", "source_email,target_email",
                 f"a@x.vn,{IDN}", f"a@x.vn,{PUNY}", f"{NFD},c@x.vn")  # fmt: skip
    plan = read_plan(path)
    assert [(w.row, w.code) for w in plan.warnings] == [(2, "chain"), (3, "duplicate_row")]
    assert [
        (t.row, t.source_email, t.target_email, t.requested_target) for t in plan.transfers
    ] == [
        (2, "a@x.vn", "c@x.vn", IDN),
        (4, IDN, "c@x.vn", "c@x.vn"),
    ]


def test_the_plan_holds_each_address_in_its_normalized_form(tmp_path):
    path = write(tmp_path / "d.csv", "source_email,target_email", f"{PUNY},b@x.vn")
    (transfer,) = read_plan(path).transfers
    assert transfer.source_email == IDN
    assert unicodedata.is_normalized("NFC", transfer.source_email)


# --------------------------------------------------------------------------- warnings by row


def test_each_warning_is_found_beside_its_row(tmp_path):
    path = write(tmp_path / "d.csv", "source_email,target_email,conv_ids",
                 "a@x.vn,b@x.vn,c1", "a@x.vn,c@x.vn,", "c@x.vn,d@x.vn,", "c@x.vn,d@x.vn,")  # fmt: skip
    plan = read_plan(path)
    assert plan.warnings_by_row() == {
        2: ["shared_split: replace_existing_members is false, so a@x.vn stays in these 1 "
            "conversation(s) and the catch-all row 3 will also add c@x.vn to them; set it to "
            "true to hand them to this target alone"],
        3: ["chain: c@x.vn is leaving too (row 4), so this transfer goes to d@x.vn via c@x.vn"],
        5: ["duplicate_row: same transfer as row 4: kept once"],
    }  # fmt: skip

"""Rebuild the simulator's sample fixture, ``fixture.json``, from a fixed seed.

The fixture is checked in; this script only documents how it was made and regenerates the same
bytes: ``python -m omi_batch.simulator.make_fixture omi_batch/simulator/fixture.json`` (and the
same into ``data/simulator_fixture.json``).

The twelve working agents and their conversations come first and from the original seed, so the
counts the sample CSV and the tests rely on never move; agents who already left (inactive or
deleted) and the tickets come after, from their own seed.
"""

from __future__ import annotations

import json
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

AS_OF = datetime(2026, 11, 25, tzinfo=UTC)
SEED = 2026
CONVERSATIONS = 300
TICKET_SEED = 2015
TICKETS = 90

AGENTS = [
    ("lan.nguyen@example.vn", "Nguyễn Thị Lan"),
    ("minh.tran@example.vn", "Trần Văn Minh"),
    ("hong.le@example.vn", "Lê Thị Hồng"),
    ("bao.pham@example.vn", "Phạm Quốc Bảo"),
    ("mai.hoang@example.vn", "Hoàng Thị Mai"),
    ("anh.vu@example.vn", "Vũ Đức Anh"),
    ("thu.dang@example.vn", "Đặng Thị Thu"),
    ("hung.bui@example.vn", "Bùi Văn Hùng"),
    ("ngoc.do@example.vn", "Đỗ Thị Ngọc"),
    ("tuan.ho@example.vn", "Hồ Văn Tuấn"),
    ("hanh.ngo@example.vn", "Ngô Thị Hạnh"),
    ("khoa.duong@example.vn", "Dương Minh Khoa"),
]

# Agents who are no longer working: OMI still knows them (a transfer to one is accepted and
# moves customers to nobody), its directory says so. (email, name, is_active, is_deleted)
FORMER_AGENTS = [
    ("quang.trinh@example.vn", "Trịnh Văn Quang", False, False),
    ("phuong.mac@example.vn", "Mạc Thị Phương", False, False),
    ("yen.ly@example.vn", "Lý Hải Yến", False, True),
]

_TICKET_SUBJECTS = [
    "Đổi địa chỉ giao hàng",
    "Hoàn tiền đơn hàng",
    "Không nhận được mã OTP",
    "Nâng cấp gói dịch vụ",
    "Khiếu nại chất lượng sản phẩm",
    "Hỏi về hóa đơn VAT",
    "Lỗi thanh toán thẻ",
    "Yêu cầu gọi lại",
]
_TICKET_STATUSES = ["open", "open", "open", "in_progress", "closed"]

_FAMILY = ["Nguyễn", "Trần", "Lê", "Phạm", "Võ", "Phan", "Huỳnh", "Trương", "Lý", "Cao"]
_MIDDLE = ["Văn", "Thị", "Minh", "Ngọc", "Hữu", "Thanh", "Quang", "Kim"]
_GIVEN = [
    "An",
    "Bình",
    "Châu",
    "Dũng",
    "Giang",
    "Hà",
    "Khánh",
    "Linh",
    "Nam",
    "Phúc",
    "Quyên",
    "Sơn",
]


def _age_days(rng: random.Random) -> float:
    """An age within 12 months, kept clear of the 183-day window edge."""
    age_days = rng.uniform(0.5, 364.5)
    return age_days + 7 if 180 <= age_days <= 186 else age_days


def _tickets(seed: int, count: int) -> list[dict]:
    """``count`` tickets over 12 months, each with one assignee (a former agent may have some)."""
    rng = random.Random(seed)
    assignees = [email for email, _ in AGENTS] + [FORMER_AGENTS[0][0]]
    tickets = []
    for _ in range(count):
        created = (AS_OF - timedelta(days=_age_days(rng))).replace(second=0, microsecond=0)
        tickets.append(
            {
                "id": "",  # numbered below, in date order
                "subject": rng.choice(_TICKET_SUBJECTS),
                "assignee": rng.choice(assignees),
                "status": rng.choice(_TICKET_STATUSES),
                "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    tickets.sort(key=lambda t: t["created_at"])
    for number, ticket in enumerate(tickets, 1):
        ticket["id"] = f"TK-{number:04d}"
    return tickets


def build(seed: int = SEED, count: int = CONVERSATIONS) -> dict:
    """Agents (working and former), ``count`` LiveTalk conversations and the tickets, spread
    over the 12 months before AS_OF."""
    rng = random.Random(seed)
    emails = [email for email, _ in AGENTS]
    conversations = []
    for _ in range(count):
        created = (AS_OF - timedelta(days=_age_days(rng))).replace(second=0, microsecond=0)
        members = rng.sample(emails, 1 if rng.random() < 0.6 else 2)
        guest = f"{rng.choice(_FAMILY)} {rng.choice(_MIDDLE)} {rng.choice(_GIVEN)}"
        conversations.append(
            {
                "id": f"{int(created.timestamp()):08x}{rng.getrandbits(64):016x}",
                "uuid": "",  # numbered below, in date order
                "channel": "livetalk",
                "guest_info": {"full_name": guest, "phone": f"09{rng.randrange(10**8):08d}"},
                "members": members,
                "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    conversations.sort(key=lambda c: c["created_at"])
    for number, conversation in enumerate(conversations, 1):
        conversation["uuid"] = f"livetalk-{number:04d}"
    return {
        "about": (
            "Sample data for the OMI simulator: agents (three of them no longer working), "
            "chat conversations and tickets. Dates are relative to as_of: the simulator moves "
            "them so that as_of is today."
        ),
        "as_of": AS_OF.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "agents": [
            *({"email": e, "name": n, "is_active": True, "is_deleted": False} for e, n in AGENTS),
            *(
                {"email": e, "name": n, "is_active": active, "is_deleted": deleted}
                for e, n, active, deleted in FORMER_AGENTS
            ),
        ],
        "conversations": conversations,
        "tickets": _tickets(TICKET_SEED, TICKETS),
    }


def dumps(fixture: dict) -> str:
    """JSON with one agent, conversation or ticket a line, so diffs and citations stay readable."""

    def items(values: list) -> str:
        return ",\n".join("  " + json.dumps(v, ensure_ascii=False) for v in values)

    lists = ("agents", "conversations", "tickets")
    head = {k: v for k, v in fixture.items() if k not in lists}
    lines = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in head.items()]
    lines += [f' "{name}": [\n{items(fixture[name])}\n ]' for name in lists if name in fixture]
    return "{\n" + ",\n".join(lines) + "\n}\n"


if __name__ == "__main__":
    text = dumps(build())
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)

"""Rebuild the simulator's sample fixture, ``fixture.json``, from a fixed seed.

The fixture is checked in; this script only documents how it was made and regenerates the same
bytes: ``python -m omi_batch.simulator.make_fixture omi_batch/simulator/fixture.json``.
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


def build(seed: int = SEED, count: int = CONVERSATIONS) -> dict:
    """Agents plus ``count`` LiveTalk conversations spread over the 12 months before AS_OF."""
    rng = random.Random(seed)
    emails = [email for email, _ in AGENTS]
    conversations = []
    for _ in range(count):
        age_days = rng.uniform(0.5, 364.5)
        if 180 <= age_days <= 186:  # keep clear of the 183-day window edge
            age_days += 7
        created = (AS_OF - timedelta(days=age_days)).replace(second=0, microsecond=0)
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
            "Sample data for the OMI simulator: agents and chat conversations. Dates are "
            "relative to as_of: the simulator moves them so that as_of is today."
        ),
        "as_of": AS_OF.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "agents": [{"email": email, "name": name} for email, name in AGENTS],
        "conversations": conversations,
    }


def dumps(fixture: dict) -> str:
    """JSON with one agent or conversation a line, so diffs and citations stay readable."""

    def items(values: list) -> str:
        return ",\n".join("  " + json.dumps(v, ensure_ascii=False) for v in values)

    head = {k: v for k, v in fixture.items() if k not in ("agents", "conversations")}
    lines = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in head.items()]
    return (
        "{\n"
        + "\n".join(lines)
        + f'\n "agents": [\n{items(fixture["agents"])}\n ],'
        + f'\n "conversations": [\n{items(fixture["conversations"])}\n ]\n}}\n'
    )


if __name__ == "__main__":
    text = dumps(build())
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)

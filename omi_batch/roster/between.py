"""The checks between rows and the resolution into transfers: duplicates, catch-alls, chains
(A→B, B→C becomes A→C), cycles, split chains, ticket rows, and the run order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from omi_batch.roster.checks import _Problems
from omi_batch.roster.plan import Transfer, _Row
from omi_batch.tables import (
    Problem,
)


class _Cycle:
    """Marks a leaving agent whose chain of catch-all rows loops back on itself."""

    def __init__(self, agents: tuple[str, ...]):
        self.agents = agents  # the loop, first agent not repeated


_End = tuple[str, tuple[str, ...]] | _Cycle


def _chains(moves: dict[str, _Row]) -> Any:
    """``end_of(agent)``: where the chain of ``moves`` (leaving agent → its row) starting at
    ``agent`` ends, and the leaving agents it passes (or a :class:`_Cycle`)."""
    ends: dict[str, _End] = {}

    def end_of(agent: str) -> _End:
        if agent in ends:
            return ends[agent]
        path: list[str] = []
        on_path: set[str] = set()
        current = agent
        tail: _End
        while True:  # bounded: each turn adds a new agent to on_path, or stops
            if current in ends:
                tail = ends[current]
                break
            if current in on_path:
                tail = _Cycle(tuple(path[path.index(current) :]))
                break
            if current not in moves:
                tail = (current, ())
                break
            on_path.add(current)
            path.append(current)
            current = moves[current].target
        # Memoise every agent on the path: each one's chain is the rest of this one.
        for index, member in enumerate(path):
            if isinstance(tail, _Cycle):
                ends[member] = tail
            else:
                ends[member] = (tail[0], tuple(path[index:]) + tail[1])
        return ends[agent]

    return end_of


def _same_row(r: _Row, before: Sequence[_Row], seen: dict[str, dict[tuple, int]]) -> int | None:
    """The row of ``r``'s source saying exactly what ``r`` says, if any (then ``r`` is kept once).
    A source's few rows are compared one by one; one with many gets an index."""
    key = (r.target, r.conv_ids, r.replace, r.scope)
    if len(before) < 16:
        return next(
            (b.row for b in before if (b.target, b.conv_ids, b.replace, b.scope) == key), None
        )
    index = seen.get(r.source)
    if index is None:
        index = seen[r.source] = {}
        for b in before:
            index.setdefault((b.target, b.conv_ids, b.replace, b.scope), b.row)
    first = index.setdefault(key, r.row)
    return None if first == r.row else first


def _resolve(rows: list[_Row], problems: _Problems, warnings: list[Problem]) -> list[Transfer]:
    """Drop duplicate rows, check conflicts between rows, follow chains, order the plan.

    A row without ``conv_ids`` whose scope has conversations is its source's catch-all (one per
    source); a row whose scope has tickets moves all its source's tickets (one per source).
    Conversations follow the chain of catch-all rows, tickets the chain of ticket rows."""
    add = problems.add
    seen: dict[str, dict[tuple, int]] = {}  # per source with many rows: its rows by content
    catch_all: dict[str, _Row] = {}
    tickets: dict[str, _Row] = {}
    routed: dict[tuple[str, str], int] = {}
    by_source: dict[str, list[_Row]] = {}
    for r in rows:
        first_row = _same_row(r, by_source.get(r.source, ()), seen)
        if first_row is not None:
            warnings.append(
                Problem(r.row, "duplicate_row", f"same transfer as row {first_row}: kept once")
            )
            continue
        if r.scope != "conversations":
            other = tickets.get(r.source)
            if other is not None:
                add(Problem(r.row, "two_ticket_rows",
                            f"the tickets of {r.source} already go to {other.target} in row "
                            f"{other.row}; tickets move from a source as a whole, so only one "
                            "row of a source may have scope tickets or both"))  # fmt: skip
                continue
        if r.conv_ids:
            clash = [(c, routed[(r.source, c)]) for c in r.conv_ids if (r.source, c) in routed]
            for conv_id, other_row in clash:
                add(Problem(r.row, "duplicate_conversation",
                            f"conversation {conv_id!r} of {r.source} is already in row {other_row}"))  # fmt: skip
            if clash:
                continue
            for conv_id in r.conv_ids:
                routed[(r.source, conv_id)] = r.row
        elif r.scope != "tickets":
            first = catch_all.get(r.source)
            if first is not None:
                what = (
                    f"this row sends them to {r.target}"
                    if first.target != r.target
                    else "this row has another replace_existing_members"
                )
                add(Problem(r.row, "two_catch_alls",
                            f"{r.source} already goes to {first.target} in row {first.row} "
                            f"(a row without conv_ids); {what}"))  # fmt: skip
                continue
            catch_all[r.source] = r
        if r.scope != "conversations":
            tickets[r.source] = r
        by_source.setdefault(r.source, []).append(r)
    del seen, routed

    kinds = {"conversations": (catch_all,), "tickets": (tickets,), "both": (catch_all, tickets)}
    end_of = {id(catch_all): _chains(catch_all), id(tickets): _chains(tickets)}
    cycles: dict[tuple[str, ...], set[int]] = {}

    def add_cycle(agents: Sequence[str], rows_in: Iterable[int]) -> None:
        turn = min(range(len(agents)), key=lambda i: agents[i])
        key = tuple(agents[turn:]) + tuple(agents[:turn])
        cycles.setdefault(key, set()).update(rows_in)

    def follow(r: _Row, source: str, moves: dict[str, _Row]) -> tuple[str, tuple[str, ...]] | None:
        """Where row ``r``'s kind of work ends along ``moves``; None (a cycle noted) if it loops."""
        if r.target not in moves:
            return r.target, ()
        end = end_of[id(moves)](r.target)
        if isinstance(end, _Cycle):
            add_cycle(end.agents, (moves[a].row for a in end.agents))
            return None
        final, via = end
        if final == source or source in via:
            # the chain comes back to the agent who is leaving: a cycle through this row
            loop = via[: via.index(source)] if source in via else via
            add_cycle((source, *loop), [r.row, *(moves[a].row for a in loop)])
            return None
        return end

    def run_order(r: _Row) -> int:
        return 0 if r.conv_ids else (2 if r.scope == "tickets" else 1)

    transfers: list[Transfer] = []
    for source, source_rows in by_source.items():
        for r in sorted(source_rows, key=run_order) if len(source_rows) > 1 else source_rows:
            ends = [(moves, follow(r, source, moves)) for moves in kinds[r.scope]]
            if any(end is None for _, end in ends):
                continue
            (moves, (final, via)), *more = ends  # type: ignore[misc]
            if more and more[0][1][0] != final:  # type: ignore[index]
                add(Problem(r.row, "split_chain",
                            f"{r.target} is leaving too: its conversations go on to {final} but "
                            f"its tickets to {more[0][1][0]}; give this row's conversations "  # type: ignore[index]
                            "and tickets one row each"))  # fmt: skip
                continue
            if r.conv_ids and not r.replace and source in catch_all:
                # OMI cannot exclude conversations from a transfer: the source stays a member of
                # these, so its catch-all row will add its own target to them as well.
                warnings.append(
                    Problem(
                        r.row,
                        "shared_split",
                        f"replace_existing_members is false, so {source} stays in these "
                        f"{len(r.conv_ids)} conversation(s) and the catch-all row "
                        f"{catch_all[source].row} will also add {catch_all[source].target} to "
                        "them; set it to true to hand them to this target alone",
                    )
                )
            if via:
                warnings.append(
                    Problem(
                        r.row,
                        "chain",
                        f"{r.target} is leaving too (row {moves[r.target].row}), so this "
                        f"transfer goes to {final} via {', '.join(via)}",
                    )
                )
            transfers.append(
                Transfer(
                    row=r.row,
                    source_email=source,
                    target_email=final,
                    requested_target=r.target,
                    via=via,
                    conv_ids=r.conv_ids,
                    replace_existing_members=r.replace,
                    note=r.note,
                    scope=r.scope,
                )
            )

    for agents, cycle_rows in cycles.items():
        first = min(cycle_rows)
        # Name the loop starting from the agent whose row comes first in the file.
        starts = [a for a in agents if a in by_source and any(x.row == first for x in by_source[a])]
        start = agents.index(starts[0]) if starts else 0
        loop = agents[start:] + agents[:start] + (agents[start],)
        rows_text = ", ".join(str(n) for n in sorted(cycle_rows))
        add(
            Problem(
                first,
                "cycle",
                f"{' → '.join(loop)} (rows {rows_text}): someone in the loop must go to an agent who stays",
            )
        )
    return transfers

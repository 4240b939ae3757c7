"""The directory check before anything moves: every source and target looked up in OMI's
agent directory (issue 13).

A transfer to a deactivated or deleted agent is accepted by OMI and moves customers to nobody,
so a target that is missing, inactive or deleted is a problem of its row, and so is a source
missing from the directory. A source already deactivated is fine: that is who leaves.

How it looks agents up (measured against the simulator's 15-agent directory, see the tests):
a plan naming at most ``KEYWORD_MAX`` agents searches each by ``keyword`` (one request per
agent when OMI finds it); a bigger plan pages through the whole directory once (one request per
50 agents, plus the empty page that ends it). An agent a keyword search did not find is looked
for in the whole directory before it is called missing, since OMI's keyword may match names
only. Addresses are compared in the plan's normalized form (``roster.normalized_email``); an
agent listed twice counts as its best entry; a directory whose paging cannot be followed (OMI
repeating a full page) cannot be read. If the directory cannot be read (unreachable, refused,
``permission_denied``, an answer we cannot read), the check says so in one warning and the run
goes on: the preview still catches agents OMI does not know.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from omi_batch.client import Agent, ApiError, OmiClient
from omi_batch.roster import Plan, Problem, normalized_email

if TYPE_CHECKING:
    from collections.abc import Iterable

log = logging.getLogger("omi_batch.directory")

KEYWORD_MAX = 5  # agents searched one by one; more: the whole directory, once
PAGE_SIZE = 50

CODES = ("source_not_found", "target_not_found", "target_inactive", "target_deleted")
WARNING = "directory_unavailable"
PHASE = "directory"  # what progress bars call the look-up


def check_agents(
    plan: Plan, client: OmiClient, *, context: dict | None = None, progress: Any = None
) -> tuple[list[Problem], list[Problem]]:
    """(problems, warnings) from OMI's agent directory for every row of ``plan``: problems
    carry their row number and one of :data:`CODES`; the one possible warning
    (``directory_unavailable``) means the directory could not be read and nothing was checked.
    ``context`` goes with every attempt (see ``OmiClient.on_attempt``). ``progress`` (a
    ``pipeline.outcome.Progress``) is told of each directory entry read (phase :data:`PHASE`,
    no total: the directory's size is unknown)."""
    sources, targets = plan.sources(), plan.targets()
    wanted = list(dict.fromkeys([*sources, *targets]))
    if not wanted:
        return [], []
    if progress is not None:
        progress.start(PHASE, None)
    try:
        found = look_up(client, wanted, context=context, progress=progress)
    except ApiError as error:  # AuthError, TransportError, permission_denied, bad answers
        log.debug("agent directory unavailable: %s", error)
        return [], [
            Problem(
                None,
                WARNING,
                f"OMI's agent directory could not be read ({error}): sources and targets were "
                "not checked there; the preview still catches agents OMI does not know",
            )
        ]
    finally:
        if progress is not None:
            progress.done(PHASE)
    return _problems(plan, found), []


def look_up(
    client: OmiClient,
    emails: Iterable[str],
    *,
    context: dict | None = None,
    progress: Any = None,
) -> dict[str, Agent]:
    """The directory entries of ``emails``, keyed by the address as the plan spells it
    (:func:`~omi_batch.roster.normalized_email`: lower case, NFC, one spelling of an
    internationalized domain), those OMI has; the directory's addresses are compared in that
    form too. An agent listed more than once counts as its best entry (active over inactive
    over deleted), whichever order OMI lists them in. Raises ApiError when the directory cannot
    be read."""
    wanted = {normalized_email(e) for e in emails}
    found: dict[str, Agent] = {}
    if len(wanted) <= KEYWORD_MAX:
        for email in sorted(wanted):
            for agent in client.list_agents(keyword=email, size=PAGE_SIZE, context=context):
                _keep(found, wanted, agent, progress)
                if email in found and _rank(found[email]) == 0:
                    break  # no entry can be better than one that takes customers
    missing = wanted - set(found)
    if missing:
        for agent in client.list_agents(size=PAGE_SIZE, context=context):
            _keep(found, missing, agent, progress)
    return found


def _keep(found: dict[str, Agent], wanted: set[str], agent: Agent, progress: Any = None) -> None:
    """Put ``agent`` in ``found`` if it is one of ``wanted`` and better than the entry there."""
    if progress is not None:
        progress.advance(PHASE)
    email = normalized_email(agent.email)
    if email in wanted and (email not in found or _rank(agent) < _rank(found[email])):
        found[email] = agent


def _rank(agent: Agent) -> int:
    """0 for an entry that can take customers, 1 deactivated, 2 deleted."""
    if agent.is_deleted:
        return 2
    return 1 if agent.is_active is False else 0


def _problems(plan: Plan, found: dict[str, Agent]) -> list[Problem]:
    problems = []
    for transfer in plan.transfers:
        source = normalized_email(transfer.source_email)
        target = normalized_email(transfer.target_email)
        if source not in found:
            problems.append(Problem(transfer.row, "source_not_found",
                                    f"source {source} is not in OMI's agent directory"))  # fmt: skip
        agent = found.get(target)
        if agent is None:
            problems.append(Problem(transfer.row, "target_not_found",
                                    f"target {target} is not in OMI's agent directory"))  # fmt: skip
        elif agent.is_deleted:
            problems.append(Problem(transfer.row, "target_deleted",
                                    f"target {target} is deleted in OMI: choose another "
                                    "target"))  # fmt: skip
        elif agent.is_active is False:
            problems.append(Problem(transfer.row, "target_inactive",
                                    f"target {target} is deactivated in OMI: customers moved "
                                    "there would reach nobody; choose another target"))  # fmt: skip
    return problems

"""Scheduled pipeline jobs: the job file, and ticks against the simulator over real folders."""

from __future__ import annotations

import csv
import fcntl
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import API_KEY, GOOD_CSV, REPO, SAMPLE, WEBHOOK_SECRET, make_job, write_job

from omi_batch.cli import cli
from omi_batch.errors import UsageError
from omi_batch.jobs import load_job, looks_like_secret, run_tick
from omi_batch.ledger import Ledger

# What the review folder gets: the workbook for a person, the CSV reports for scripts.
REVIEW_FILES = ("preview.csv", "review.xlsx", "targets.csv")
BAD_CSV = "source_email,target_email\nan.nguyen@example,binh.tran@example.vn\n"


@pytest.fixture(autouse=True)
def job_log(caplog):
    caplog.set_level(logging.INFO, logger="omi_batch.jobs")
    return caplog


def env_for(server) -> dict[str, str]:
    return {"OMI_BASE_URL": server.url, "OMI_API_KEY": API_KEY}


def drop(folder: Path, name: str, text: str) -> Path:
    """Put a file in a folder the way a person should: write elsewhere, then rename in."""
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder.parent / f".{name}.tmp"
    temporary.write_text(text, encoding="utf-8")
    return temporary.replace(folder / name)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def approve_in_report(job, batch_id: str) -> Path:
    """What a person does: fill `approved` for every previewed row, save into approved/."""
    source = job.review / f"{batch_id}-preview.csv"
    with open(source, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["approved"] = "yes" if row["preview_status"] == "previewed" else ""
    target = job.approved / source.name
    with open(target, "w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return target


def job_batches(job) -> list[dict]:
    with Ledger(job.ledger) as ledger:
        return [b for b in ledger.batches() if b["options"].get("job") == job.name]


def states(job, batch_id: str) -> dict[int, str]:
    with Ledger(job.ledger) as ledger:
        return {r["row"]: r["state"] for r in ledger.rows(batch_id)}


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "omi_batch.jobs"]


# --------------------------------------------------------------------------- the job file


def test_the_example_job_file_parses():
    job = load_job(REPO / "jobs" / "offboarding.toml")
    assert job.name == "offboarding"
    assert job.root == REPO
    assert job.ledger == REPO / "data" / "ledger.db"
    base = REPO / "data" / "jobs" / "offboarding"
    assert (job.inbox, job.review, job.approved, job.archive, job.rejected, job.reports) == (
        base / "inbox", base / "review", base / "approved", base / "archive",
        base / "rejected", base / "reports",
    )  # fmt: skip
    assert job.lock_path == base / "inbox" / ".omi-batch-job.lock"
    assert (job.policy, job.max_conversations_per_row, job.max_conversations_per_batch) == (
        "manual", 200, 2000,
    )  # fmt: skip
    assert (job.concurrency, job.rate, job.timeout, job.wait, job.listen) == (
        4,
        5.0,
        30.0,
        300.0,
        None,
    )
    assert (job.api_key_env, job.webhook_secret_env) == ("OMI_API_KEY", "OMI_WEBHOOK_SECRET")
    assert job.check_agents is True


def test_relative_paths_are_taken_from_root_relative_to_the_job_file(tmp_path):
    path = write_job(tmp_path / "jobs" / "nightly.toml", top=('root = ".."',))
    job = load_job(path)
    assert job.name == "nightly"
    assert job.inbox == tmp_path / "work" / "inbox"
    assert job.rejected == tmp_path / "work" / "rejected"  # the default: beside the inbox
    assert job.listen == ("127.0.0.1", 0)


HEX_SECRET = "9f3c1a7e5b2d4f6a8c0e1b3d5f7a9c2e"

BAD_JOB_FILES = [
    (
        "[run]\nspeed = 3\n",
        "unknown key run.speed (known here: check_agents, concurrency, listen, rate, timeout, wait)",
    ),
    ("[later]\nx = 1\n", "unknown section [later] (known: [folders], [approval], [run], [omi])"),
    (
        'TOP:colour = "blue"\n',
        "unknown key colour (known here: ledger, log_format, metrics_file, name, notify, root, folders, approval, run, omi)",
    ),
    (
        '[approval]\npolicy = "sometimes"\n',
        'approval.policy must be "manual" or "auto", not \'sometimes\'',
    ),
    (
        '[approval]\npolicy = "auto"\nmax_conversations_per_batch = 9\n',
        'approval.max_conversations_per_row is required when approval.policy is "auto" '
        "(the ceiling above which a batch waits for a person)",
    ),
    (
        "[approval]\nmax_conversations_per_row = 0\n",
        "approval.max_conversations_per_row must be a whole number of conversations, at least 1, not 0",
    ),
    ("[run]\nconcurrency = 0\n", "run.concurrency must be a whole number from 1 to 64, not 0"),
    (
        "[run]\nconcurrency = true\n",
        "run.concurrency must be a whole number from 1 to 64, not True",
    ),
    ('[run]\nrate = "fast"\n', "run.rate must be requests per second, at least 0.01, not 'fast'"),
    ("[run]\nwait = -1\n", "run.wait must be seconds, 0 or more, not -1"),
    (
        '[run]\nlisten = "nowhere"\n',
        "run.listen must be \"HOST:PORT\" (port 0 picks a free one), not 'nowhere'",
    ),
    (
        '[omi]\nbase_url = "public-v1.omicall.com"\n',
        "omi.base_url must be an http:// or https:// URL, not 'public-v1.omicall.com'",
    ),
    (
        '[omi]\napi_key_env = "OMI API KEY"\n',
        "omi.api_key_env does not look like the name of an environment variable (upper case "
        "letters, digits and _, not starting with a digit) and may be the secret itself, so it is "
        "not shown; keep the OMI API key in the environment and name its variable there (e.g. "
        "OMI_API_KEY)",
    ),
    ("REVIEW:work/inbox", "folders.review and folders.inbox are the same folder"),
    ("LEDGER:", "ledger must be a non-empty string, not ''"),
    ("[approval\n", None),  # not TOML: the parser's own words follow
]


def _job_text(case: str) -> str:
    if case.startswith("TOP:"):
        return minimal(top=case[4:])
    if case.startswith("REVIEW:"):
        return minimal(review=case[7:])
    if case.startswith("LEDGER:"):
        return minimal(ledger=case[7:])
    return minimal(case)


@pytest.mark.parametrize("extra, message", BAD_JOB_FILES)
def test_a_bad_job_file_is_refused_naming_the_key(tmp_path, extra, message):
    text = _job_text(extra)
    path = tmp_path / "job.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as refused:
        load_job(path)
    if message is None:
        assert str(refused.value).startswith("job.toml is not valid TOML: ")
    else:
        assert str(refused.value) == f"job.toml: {message}"
    assert refused.value.exit_code == 2


def test_a_required_key_missing_is_named(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('ledger = "l.db"\n[folders]\nreview = "r"\napproved = "a"\n')
    with pytest.raises(UsageError, match=r"^job\.toml: folders\.inbox is required$"):
        load_job(path)


ADVICE = ("keep secrets in the environment and name the variable with omi.api_key_env or "
          "omi.webhook_secret_env")  # fmt: skip

SECRET_JOB_FILES = [
    (
        f'[omi]\napi_key = "{HEX_SECRET}"\n',
        "omi.api_key: a job file never holds a secret; keep it in the environment and name the "
        "variable with omi.api_key_env or omi.webhook_secret_env",
    ),
    (
        f'[omi]\napi_key_env = "{HEX_SECRET}"\n',
        f"omi.api_key_env looks like a secret value; {ADVICE}",
    ),
    (
        f'[omi]\nwebhook_secret_env = "OMI_{HEX_SECRET.upper()}"\n',
        f"omi.webhook_secret_env looks like a secret value; {ADVICE}",
    ),
    (f'TOP:name = "{HEX_SECRET}"\n', f"name looks like a secret value; {ADVICE}"),
    (f"# OMI_API_KEY={HEX_SECRET}\n", f"line 8 looks like it holds a secret value; {ADVICE}"),
    (
        '[omi]\nbase_url = "https://user:hunter2@public-v1.omicall.com"\n',
        f"omi.base_url carries credentials or a query string; {ADVICE}",
    ),
    (
        '[omi]\nwebhook_url = "https://hooks.example.vn/omi?token=abc"\n',
        f"omi.webhook_url carries credentials or a query string; {ADVICE}",
    ),
]


@pytest.mark.parametrize("extra, message", SECRET_JOB_FILES)
def test_a_job_file_holding_a_secret_is_refused_without_showing_it(
    tmp_path, runner, extra, message
):
    path = tmp_path / "job.toml"
    path.write_text(_job_text(extra))
    with pytest.raises(UsageError) as refused:
        load_job(path)
    assert str(refused.value) == f"job.toml: {message}"
    result = runner.invoke(cli, ["job", "run", str(path)])
    assert result.exit_code == 2
    assert result.output == f"Error: job.toml: {message}\n"
    for secret in (HEX_SECRET, HEX_SECRET.upper(), "hunter2", "token=abc"):
        assert secret not in result.output


def test_a_job_whose_root_is_a_random_temporary_folder_is_not_taken_for_a_secret(tmp_path):
    root = tmp_path / f"tmp{HEX_SECRET}"  # what mkdtemp-like tools make: random letters and digits
    assert looks_like_secret(root.name)
    path = tmp_path / "job.toml"
    path.write_text(minimal(top=f'root = "{root}"\n'))
    job = load_job(path)
    assert job.root == root
    assert job.inbox == root / "work" / "inbox"


@pytest.mark.parametrize("text, expected", [
    (HEX_SECRET, True),
    (API_KEY, True),
    (WEBHOOK_SECRET, True),
    ("550e8400-e29b-41d4-a716-446655440000", True),
    ("OMI_WEBHOOK_SECRET", False),
    ("20261125-093000-ab12", False),  # a batch id
    ("data/jobs/offboarding-2026/inbox", False),
    ("OffboardingInbox2026", False),
    ("sim-key", False),
])  # fmt: skip
def test_what_looks_like_a_secret(text, expected):
    assert looks_like_secret(text) is expected


def minimal(
    extra: str = "", *, ledger: str = "work/ledger.db", review: str = "work/review", top: str = ""
) -> str:
    """The smallest valid job file, with ``extra`` sections appended."""
    return (f'{top}ledger = "{ledger}"\n[folders]\ninbox = "work/inbox"\nreview = "{review}"\n'
            'approved = "work/approved"\narchive = "work/archive"\nreports = "work/reports"\n'
            + extra)  # fmt: skip


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("env, extra, message", [
    ({"OMI_API_KEY": "k"}, "",
     "OMI_BASE_URL is not set: use https://public-v1.omicall.com (or "
     "https://public-v1-stg.omicall.com for staging), or set omi.base_url in offboarding.toml"),
    ({"OMI_BASE_URL": "http://127.0.0.1:9", "OMI_API_KEY": "k"}, '[omi]\napi_key_env = "OMI_PROD_KEY"\n',
     "OMI_PROD_KEY is not set: job offboarding reads the OMI API key from it (omi.api_key_env); "
     "create a key in the OMI web app (Account > Settings > API management)"),
    ({"OMI_BASE_URL": "http://127.0.0.1:9", "OMI_API_KEY": "k"}, "NO_LISTEN",
     "job offboarding has no webhook receiver: set OMI_WEBHOOK_URL (with `omi-batch webhook "
     'serve` running on the same ledger), or set listen = "127.0.0.1:0" under [run] in '
     "offboarding.toml"),
    ({"OMI_BASE_URL": "http://127.0.0.1:9", "OMI_API_KEY": "k",
      "OMI_WEBHOOK_URL": "https://hooks.example.vn"}, "NO_LISTEN",
     "OMI_WEBHOOK_SECRET is not set: the webhook receiver checks callbacks with it "
     "(omi.webhook_secret_env in offboarding.toml)"),
    ({"OMI_BASE_URL": "http://127.0.0.1:9", "OMI_API_KEY": "k",
      "OMI_WEBHOOK_URL": "https://hooks.example.vn"}, "",
     "OMI_WEBHOOK_SECRET is not set: callbacks go to OMI_WEBHOOK_URL, whose receiver checks "
     "them with it (omi.webhook_secret_env in offboarding.toml)"),
])  # fmt: skip
def test_missing_configuration_is_named_and_exits_3(tmp_path, runner, env, extra, message):
    text = minimal('[run]\nlisten = "127.0.0.1:0"\n' + extra) if extra != "NO_LISTEN" else minimal()
    path = tmp_path / "offboarding.toml"
    path.write_text(text)
    blank = {name: None for name in ("OMI_BASE_URL", "OMI_API_KEY", "OMI_WEBHOOK_URL",
                                     "OMI_WEBHOOK_SECRET", "OMI_PROD_KEY")}  # fmt: skip
    result = runner.invoke(cli, ["job", "run", str(path)], env={**blank, **env})
    assert result.exit_code == 3
    assert result.output == f"Error: {message}\n"
    assert not (tmp_path / "work").exists()  # nothing was changed


# A key pasted where a job file names the variable that holds it: never shown, whatever its shape.
NOT_SHOWN = ("does not look like the name of an environment variable (upper case letters, "
             "digits and _, not starting with a digit) and may be the secret itself, so it is not "
             "shown")  # fmt: skip
PASTED = [
    ('[omi]\napi_key_env = "demo-key-1234567890abcdef"\n', {}, 2,
     f"offboarding.toml: omi.api_key_env {NOT_SHOWN}; keep the OMI API key in the environment "
     "and name its variable there (e.g. OMI_API_KEY)"),
    ('[omi]\nwebhook_secret_env = "demo-secret-0011223344556677"\n', {}, 2,
     f"offboarding.toml: omi.webhook_secret_env {NOT_SHOWN}; keep the webhook secret in the "
     "environment and name its variable there (e.g. OMI_WEBHOOK_SECRET)"),
    ('[omi]\napi_key_env = "sk_live_51HxAbCdEf"\n', {}, 3,
     f"omi.api_key_env in offboarding.toml {NOT_SHOWN}; no variable of that name is set: keep "
     "the OMI API key in the environment and name its variable there (e.g. OMI_API_KEY)"),
    ('[omi]\nwebhook_secret_env = "whsec_live_Abc"\n', {"OMI_WEBHOOK_URL": "https://hooks.example.vn"},
     3, f"omi.webhook_secret_env in offboarding.toml {NOT_SHOWN}; no variable of that name is set: "
     "keep the webhook secret in the environment and name its variable there (e.g. "
     "OMI_WEBHOOK_SECRET)"),
    ('NO_LISTEN[omi]\nwebhook_secret_env = "whsec_live_Abc"\n',
     {"OMI_WEBHOOK_URL": "https://hooks.example.vn"}, 3,
     f"omi.webhook_secret_env in offboarding.toml {NOT_SHOWN}; no variable of that name is set: "
     "keep the webhook secret in the environment and name its variable there (e.g. "
     "OMI_WEBHOOK_SECRET)"),
    ('notify = ["json://hooks.example.vn/x?token=${sk-live-51HxAbCdEf}"]\n', {}, 2,
     "offboarding.toml: notify: notification URL json://hooks.example.vn/…: a ${…} reference "
     f"{NOT_SHOWN}; write ${{NAME}}, NAME the variable that holds the secret"),
    ('notify = ["slack://${xoxb-1234-5678-abcdefghijkl}/#general"]\n', {}, 2,
     "offboarding.toml: notify: notification URL slack://${…}/…: a ${…} reference "
     f"{NOT_SHOWN}; write ${{NAME}}, NAME the variable that holds the secret"),
    ('notify = ["json://hooks.example.vn/x?token=${sk_live_51HxAbCdEf}"]\n', {}, 3,
     f"a notification URL of job offboarding names with ${{…}} a variable that {NOT_SHOWN}; no "
     "variable of that name is set (notify in offboarding.toml)"),
]  # fmt: skip


@pytest.mark.parametrize("extra, env, code, message", PASTED)
def test_a_secret_pasted_for_a_variables_name_is_never_shown(
    tmp_path, runner, extra, env, code, message
):
    value = re.search(r"(?:_env = \"|\$\{)([^\"}]+)", extra).group(1)
    if extra.startswith("NO_LISTEN"):
        text = minimal(extra.removeprefix("NO_LISTEN"))
    elif extra.startswith("notify"):
        text = minimal('[run]\nlisten = "127.0.0.1:0"\n', top=extra)
    else:
        text = minimal('[run]\nlisten = "127.0.0.1:0"\n' + extra)
    path = tmp_path / "offboarding.toml"
    path.write_text(text)
    blank = {name: None for name in ("OMI_WEBHOOK_URL", "OMI_WEBHOOK_SECRET", value)}
    configured = {"OMI_BASE_URL": "http://127.0.0.1:9", "OMI_API_KEY": "k"}
    result = runner.invoke(cli, ["job", "run", str(path)], env={**blank, **configured, **env})
    assert result.exit_code == code, result.output
    assert result.stderr == f"Error: {message}\n"
    assert value not in result.stdout + result.stderr + result.output
    assert not (tmp_path / "work").exists()  # nothing was changed


def test_a_variables_name_in_upper_case_is_still_named(tmp_path, runner):
    path = tmp_path / "offboarding.toml"
    path.write_text(minimal('[run]\nlisten = "127.0.0.1:0"\n',
                            top='notify = ["json://hooks.example.vn/x?token=${HOOK_TOKEN}"]\n'))  # fmt: skip
    env = {"OMI_BASE_URL": "http://127.0.0.1:9", "OMI_API_KEY": "k", "HOOK_TOKEN": None}
    result = runner.invoke(cli, ["job", "run", str(path)], env=env)
    assert result.exit_code == 3, result.output
    assert result.stderr == ("Error: HOOK_TOKEN is not set: a notification URL of job offboarding "
                             "reads a secret from it (notify in offboarding.toml)\n")  # fmt: skip


# --------------------------------------------------------------------------- ticks


def test_a_batch_travels_inbox_review_approved_archive(tmp_path, runner, simulator, job_log):
    sim, server = simulator
    # The directory check is off: the sample's row 8 (no OMI account) reaches its preview and is
    # the journey's one failed row.
    job = make_job(tmp_path, check_agents=False)
    env = env_for(server)

    result = runner.invoke(cli, ["job", "run", str(job.path)], env=env)
    assert result.exit_code == 0, result.output
    assert messages(job_log)[-1] == "job offboarding: nothing to do"

    drop(job.inbox, "departures.csv", SAMPLE.read_text(encoding="utf-8"))
    result = runner.invoke(cli, ["job", "run", str(job.path)], env=env)
    assert result.exit_code == 0, result.output
    [batch] = job_batches(job)
    batch_id = batch["id"]
    assert batch["options"]["source_name"] == "departures.csv"
    assert names(job.inbox) == []
    assert names(job.review) == [f"{batch_id}-{kind}" for kind in REVIEW_FILES]
    assert states(job, batch_id) == {2: "previewed", 3: "previewed", 4: "previewed",
                                     5: "previewed", 6: "previewed", 7: "previewed",
                                     8: "preview_failed"}  # fmt: skip
    assert (f"job offboarding: batch {batch_id}: 6 row(s) previewed, 85 conversation(s) and 2 "
            "ticket(s) to move, 1 failed their preview") in messages(job_log)  # fmt: skip

    # A tick with nothing new: the batch waits, nothing is duplicated or sent.
    requests_before = len(sim.events)
    result = runner.invoke(cli, ["job", "run", str(job.path)], env=env)
    assert result.exit_code == 0
    assert len(job_batches(job)) == 1
    assert len(sim.events) == requests_before
    assert f"job offboarding: batch {batch_id}: still waiting for review" in messages(job_log)

    approve_in_report(job, batch_id)
    result = runner.invoke(cli, ["job", "run", str(job.path)], env=env)
    assert result.exit_code == 1  # the row without an OMI account failed its preview
    assert states(job, batch_id) == {2: "succeeded", 3: "succeeded", 4: "succeeded",
                                     5: "succeeded", 6: "succeeded", 7: "succeeded",
                                     8: "preview_failed"}  # fmt: skip
    assert names(job.review) == names(job.approved) == names(job.reports) == []
    assert names(job.archive / batch_id) == sorted(
        f"{batch_id}-{kind}" for kind in ("approved.csv", "preview.csv", "targets.csv",
                                          "results.csv", "retry.csv", "source-departures.csv",
                                          "review.xlsx", "results.xlsx")
    )  # fmt: skip
    assert f"job offboarding: batch {batch_id}: 6 row(s) approved, 0 skipped" in messages(job_log)
    retry = (job.archive / batch_id / f"{batch_id}-retry.csv").read_text(encoding="utf-8-sig")
    assert retry.splitlines()[1].startswith("thu.dang@example.vn,long.ly@example.vn,")
    with Ledger(job.ledger) as ledger:
        assert [e["kind"] for e in ledger.events(batch_id) if e["kind"].startswith("job_")] == [
            "job_review", "job_archived"]  # fmt: skip
        assert ledger.verify().ok

    # Nothing written anywhere holds the API key.
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path

    result = runner.invoke(cli, ["job", "run", str(job.path)], env=env)
    assert result.exit_code == 0
    assert messages(job_log)[-1] == "job offboarding: nothing to do"


def test_auto_within_the_ceilings_executes_in_the_same_tick(tmp_path, simulator, job_log):
    _, server = simulator
    job = make_job(tmp_path, policy="auto", per_row=20, per_batch=73)
    drop(job.inbox, "departures.csv", GOOD_CSV)
    result = run_tick(job, env=env_for(server))
    assert result.exit_code == 0
    [batch_id] = result.created
    assert result.archived == [batch_id] and result.executed == [batch_id]
    assert set(states(job, batch_id).values()) == {"succeeded"}
    assert (f"job offboarding: batch {batch_id}: 5 row(s) approved automatically (within the "
            "ceilings)") in messages(job_log)  # fmt: skip
    assert names(job.review) == []


@pytest.mark.parametrize("per_row, per_batch, reason", [
    (19, 1000, "row 6 would move 20 conversation(s), over the ceiling of 19 per row "
               "(approval.max_conversations_per_row)"),
    (1000, 72, "the batch would move 73 conversation(s), over the ceiling of 72 per batch "
               "(approval.max_conversations_per_batch)"),
])  # fmt: skip
def test_auto_over_a_ceiling_is_left_for_review_saying_why(
    tmp_path, simulator, job_log, per_row, per_batch, reason
):
    _, server = simulator
    job = make_job(tmp_path, policy="auto", per_row=per_row, per_batch=per_batch)
    drop(job.inbox, "departures.csv", GOOD_CSV)
    result = run_tick(job, env=env_for(server))
    assert result.exit_code == 0
    [batch_id] = result.created
    assert result.waiting == [batch_id] and result.executed == []
    assert set(states(job, batch_id).values()) == {"previewed"}
    assert f"job offboarding: batch {batch_id}: left for review: {reason}" in messages(job_log)
    assert names(job.review) == [f"{batch_id}-{kind}" for kind in REVIEW_FILES]


def test_a_bad_file_is_set_aside_and_the_others_go_on(tmp_path, simulator, job_log):
    _, server = simulator
    job = make_job(tmp_path, policy="auto")
    drop(job.inbox, "bad.csv", BAD_CSV)
    drop(job.inbox, "good.csv", GOOD_CSV)
    result = run_tick(job, env=env_for(server))
    assert result.exit_code == 1  # something was sent, and a file needs a person
    assert result.rejected == [job.rejected / "bad.csv"]
    assert len(result.archived) == 1
    assert names(job.rejected) == ["bad.csv", "bad.csv.errors.csv"]
    assert (job.rejected / "bad.csv").read_text(encoding="utf-8") == BAD_CSV
    report = (job.rejected / "bad.csv.errors.csv").read_text(encoding="utf-8-sig").splitlines()
    assert report[0] == "row,code,message"
    assert report[1].startswith("2,bad_email,")
    assert names(job.inbox) == []


def test_a_file_naming_an_agent_omi_does_not_have_is_rejected_before_any_batch(
    tmp_path, runner, simulator
):
    sim, server = simulator
    job = make_job(tmp_path)  # the directory check is on by default
    drop(job.inbox, "departures.csv", SAMPLE.read_text(encoding="utf-8"))
    result = runner.invoke(cli, ["job", "run", str(job.path)], env=env_for(server))
    assert result.exit_code == 2, result.output
    assert names(job.rejected) == ["departures.csv", "departures.csv.errors.csv"]
    report = (job.rejected / "departures.csv.errors.csv").read_text(encoding="utf-8-sig")
    assert report.splitlines()[1:] == [
        "8,target_not_found,target long.ly@example.vn is not in OMI's agent directory"
    ]
    assert [e["body"]["previewChanges"] for e in sim.events
            if e["kind"] == "request" and "transfer" in e["path"]] == [True]  # the preflight only  # fmt: skip
    assert job_batches(job) == []


def test_only_bad_files_exit_2_and_send_nothing(tmp_path, runner, simulator):
    sim, server = simulator
    job = make_job(tmp_path)
    drop(job.inbox, "bad.csv", BAD_CSV)
    drop(job.inbox, "bad.csv.tmp", BAD_CSV)  # still being written: left alone
    result = runner.invoke(cli, ["job", "run", str(job.path)], env=env_for(server))
    assert result.exit_code == 2
    assert sim.events == []
    assert names(job.rejected) == ["bad.csv", "bad.csv.errors.csv"]
    drop(job.inbox, "bad.csv", BAD_CSV)  # the same name again is kept apart
    assert runner.invoke(cli, ["job", "run", str(job.path)], env=env_for(server)).exit_code == 2
    assert len(names(job.rejected)) == 4


def test_an_approved_report_that_no_longer_matches_is_rejected(tmp_path, simulator, job_log):
    _, server = simulator
    job = make_job(tmp_path)
    drop(job.inbox, "departures.csv", GOOD_CSV)
    [batch_id] = run_tick(job, env=env_for(server)).created
    report = approve_in_report(job, batch_id)
    report.write_text(report.read_text(encoding="utf-8-sig").replace("hong.le@", "hang.le@"),
                      encoding="utf-8-sig")  # fmt: skip
    drop(job.approved, "approved-by-me.csv", "row,approved\n2,yes\n")  # no batch id in the name
    result = run_tick(job, env=env_for(server))
    assert result.exit_code == 2
    assert names(job.rejected) == sorted([
        report.name, f"{report.name}.errors.csv", "approved-by-me.csv",
        "approved-by-me.csv.errors.csv"])  # fmt: skip
    assert set(states(job, batch_id).values()) == {"previewed"}  # nothing approved
    assert names(job.review) == [f"{batch_id}-{kind}" for kind in REVIEW_FILES]


def test_a_second_tick_while_one_runs_says_so_and_exits_0(tmp_path, runner, simulator):
    sim, server = simulator
    job = make_job(tmp_path)
    drop(job.inbox, "departures.csv", GOOD_CSV)
    job.lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(job.lock_path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = runner.invoke(cli, ["job", "run", str(job.path)], env=env_for(server))
    assert result.exit_code == 0
    assert result.output == (f"another tick of job offboarding is running (it holds "
                             f"{job.lock_path}): this one does nothing\n")  # fmt: skip
    assert sim.events == []
    assert names(job.inbox) == ["departures.csv"]
    # Released: the next tick works.
    assert runner.invoke(cli, ["job", "run", str(job.path)], env=env_for(server)).exit_code == 0
    assert names(job.inbox) == []


def test_a_file_whose_batch_exists_already_reuses_it(tmp_path, simulator, job_log):
    """A tick that died after creating the batch, before moving the file: no second batch."""
    from omi_batch.pipeline import Pipeline
    from omi_batch.roster import read_plan

    _, server = simulator
    job = make_job(tmp_path)
    path = drop(job.inbox, "departures.csv", GOOD_CSV)
    settings = job.settings(env_for(server))
    with Ledger(job.ledger) as ledger:
        pipeline = Pipeline(ledger, settings)
        batch_id = pipeline.create_batch(read_plan(path), options={"job": "offboarding"})
        pipeline.close()
    result = run_tick(job, env=env_for(server))
    assert result.created == [] and result.waiting == [batch_id]
    assert [b["id"] for b in job_batches(job)] == [batch_id]
    assert set(states(job, batch_id).values()) == {"previewed"}
    assert (f"job offboarding: departures.csv is batch {batch_id} again (same content): "
            "resuming it") in messages(job_log)  # fmt: skip


def test_a_killed_tick_is_resumed_by_the_next(tmp_path, make_simulator, job_log):
    """Kill a tick while it waits for callbacks; the next tick submits those rows again."""
    sim, server = make_simulator()
    sim.faults.drop_callbacks = 1.0  # the callbacks never come: the tick waits
    job = make_job(tmp_path, policy="auto", wait=60)
    drop(job.inbox, "departures.csv", GOOD_CSV)
    env = {**os.environ, **env_for(server), "PYTHONUNBUFFERED": "1"}
    env.pop("OMI_WEBHOOK_URL", None)
    tick = subprocess.Popen(
        [sys.executable, "-m", "omi_batch", "job", "run", str(job.path)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        submitted: list = []
        while time.monotonic() < deadline and not submitted:
            time.sleep(0.1)
            if job.ledger.exists() and job_batches(job):
                batch_id = job_batches(job)[0]["id"]
                submitted = [n for n, s in states(job, batch_id).items() if s == "submitted"]
        assert submitted, "the tick never submitted a row"
        tick.send_signal(signal.SIGKILL)
        tick.wait(10)
    finally:
        if tick.poll() is None:
            tick.kill()
            tick.wait(10)
        tick.stderr.close()
    assert names(job.archive) == []

    sim.faults.drop_callbacks = 0.0
    result = run_tick(job, env=env_for(server))  # the lock died with the killed tick
    assert result.exit_code == 0
    assert result.archived == [batch_id]
    assert set(states(job, batch_id).values()) == {"succeeded"}
    with Ledger(job.ledger) as ledger:
        resubmitted = {e["row"] for e in ledger.events(batch_id) if e["kind"] == "resubmitted"}
    assert set(submitted) <= resubmitted
    assert any(m.startswith(f"job offboarding: batch {batch_id}: executing ") and
               "resumed after an interrupted tick" in m for m in messages(job_log))  # fmt: skip


def test_a_stale_preview_is_previewed_again_instead_of_approved(tmp_path, simulator, job_log):
    _, server = simulator
    job = make_job(tmp_path)
    drop(job.inbox, "departures.csv", GOOD_CSV)
    [batch_id] = run_tick(job, env=env_for(server)).created
    with Ledger(job.ledger) as ledger:
        for row in ledger.rows(batch_id):
            ledger.update_row(batch_id, row["row"], event="test: an old preview",
                              previewed_at="2020-01-01T00:00:00.000Z")  # fmt: skip
    report = approve_in_report(job, batch_id)
    result = run_tick(job, env=env_for(server))
    assert result.executed == [] and result.waiting == [batch_id]
    assert result.rejected == [job.rejected / report.name]
    errors = (job.rejected / f"{report.name}.errors.csv").read_text(encoding="utf-8-sig")
    assert "older than 24 h (approval.max_age_hours), so nothing was approved" in errors
    with Ledger(job.ledger) as ledger:
        assert all(r["previewed_at"] > "2025" for r in ledger.rows(batch_id))
    assert set(states(job, batch_id).values()) == {"previewed"}
    assert names(job.review) == [f"{batch_id}-{kind}" for kind in REVIEW_FILES]


def test_the_example_job_file_runs_a_whole_life_against_the_simulator(
    tmp_path, runner, simulator, job_log
):
    """jobs/offboarding.toml as shipped, with its own receiver switched on (the one line the
    comments say to change when no webhook service runs)."""
    _, server = simulator
    example = (REPO / "jobs" / "offboarding.toml").read_text(encoding="utf-8")
    assert '# listen = "127.0.0.1:0"' in example
    (tmp_path / "jobs").mkdir()
    path = tmp_path / "jobs" / "offboarding.toml"
    path.write_text(example.replace('# listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"'))
    job = load_job(path)
    assert job.inbox == tmp_path / "data" / "jobs" / "offboarding" / "inbox"
    env = {**env_for(server), "OMI_WEBHOOK_SECRET": "example-job-secret-0f3a"}

    drop(job.inbox, "departures.csv", GOOD_CSV)
    assert runner.invoke(cli, ["job", "run", str(path)], env=env).exit_code == 0
    [batch] = job_batches(job)
    approve_in_report(job, batch["id"])
    result = runner.invoke(cli, ["job", "run", str(path)], env=env)
    assert result.exit_code == 0, result.output
    assert set(states(job, batch["id"]).values()) == {"succeeded"}
    assert f"{batch['id']}-results.csv" in names(job.archive / batch["id"])


def test_a_cancelled_batch_is_never_executed_by_a_job(tmp_path, runner, simulator, job_log):
    sim, server = simulator
    job = make_job(tmp_path)
    drop(job.inbox, "departures.csv", GOOD_CSV)
    [batch_id] = run_tick(job, env=env_for(server)).created
    report = approve_in_report(job, batch_id)  # an approval that comes after the cancel
    result = runner.invoke(cli, ["cancel", batch_id, "--ledger", str(job.ledger)])
    assert result.exit_code == 0, result.output
    result = run_tick(job, env=env_for(server))
    assert result.exit_code == 2
    assert set(states(job, batch_id).values()) == {"cancelled"}
    executes = [e for e in sim.events if e["kind"] == "request" and isinstance(e.get("body"), dict)
                and e["body"].get("previewChanges") is False]  # fmt: skip
    assert executes == []
    assert names(job.rejected) == sorted([report.name, f"{report.name}.errors.csv"])
    errors = (job.rejected / f"{report.name}.errors.csv").read_text(encoding="utf-8-sig")
    assert f"batch {batch_id} was cancelled" in errors
    assert names(job.archive) == [batch_id]  # closed: no later tick looks at it again
    assert (f"job offboarding: batch {batch_id}: cancelled (omi-batch cancel): nothing of it "
            "is sent") in messages(job_log)  # fmt: skip


# --------------------------------------------------------------------------- omi.auth


def with_auth(job, mode: str):
    """``job``'s file with ``[omi] auth = mode`` added, loaded again."""
    job.path.write_text(job.path.read_text() + f'[omi]\nauth = "{mode}"\n')
    return load_job(job.path)


def test_a_job_file_chooses_bearer_auth_over_the_environment(tmp_path):
    job = with_auth(make_job(tmp_path), "bearer")
    assert job.auth == "bearer"
    assert job.settings({"OMI_AUTH": "api-key"}).auth == "bearer"
    assert make_job(tmp_path).settings({"OMI_AUTH": "bearer"}).auth == "bearer"
    assert make_job(tmp_path).settings({}).auth == "api-key"


def test_a_job_file_with_an_unknown_auth_mode_is_refused(tmp_path):
    with pytest.raises(UsageError) as caught:
        with_auth(make_job(tmp_path), "token")
    assert str(caught.value) == (
        'offboarding.toml: omi.auth must be "api-key" or "bearer", not \'token\''
    )


@pytest.mark.parametrize("mode, code", [("bearer", 0), ("api-key", 3)])
def test_a_job_against_an_omi_that_wants_a_token_runs_only_with_bearer_auth(
    tmp_path, runner, make_simulator, job_log, mode, code
):
    from omi_batch.client import AUTH_PATH

    sim, server = make_simulator(auth="bearer", directory_auth="bearer")
    job = with_auth(make_job(tmp_path), mode)
    drop(job.inbox, "departures.csv", GOOD_CSV)
    result = runner.invoke(cli, ["job", "run", str(job.path)], env=env_for(server))
    assert result.exit_code == code, result.output
    asked = [e["status"] for e in sim.events if e.get("path") == AUTH_PATH]
    if mode == "bearer":
        assert asked == [200]  # one token for the whole tick
        [batch] = job_batches(job)
        assert set(states(job, batch["id"]).values()) == {"previewed"}
    else:
        assert asked == []
        assert "Error: OMI answered 401 auth_invalid" in result.output, result.output
        assert names(job.inbox) == ["departures.csv"]  # left for the next tick
    # A sentence starting with a variable's name keeps its capitals in the job's log.
    assert ("job offboarding: OMI_WEBHOOK_SECRET is not set: using a one-off secret, so only "
            "this command's receiver can check these callbacks.") in messages(job_log)  # fmt: skip

"""Scheduled pipeline jobs: a small TOML job file, and one tick of work over its folders.

A job file names the folders a batch travels through (inbox → review → approved → archive,
with rejected files set aside), the reports folder, the ledger, the approval policy, how hard
to talk to OMI, and which environment variables hold the secrets. ``run_tick`` does what is
due once and returns; a timer or cron runs it every few minutes. Every tick is safe to repeat:
the ledger and the folders say where each batch is, so a tick that died is resumed by the next.

Where a batch's files live while it is open: the input file and every report sit in the
reports folder as ``<batch>-…``; the review folder gets a copy of the preview and targets
reports for a person; the approved folder is where that person puts the edited preview report.
When no row is left to preview, approve or execute, ``archive/<batch>/`` receives them all.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import shutil
import time
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omi_batch.callbacks import parse_listen
from omi_batch.config import PRODUCTION_URL, STAGING_URL, Settings
from omi_batch.errors import (
    EXIT_CONFIG,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    BatchCancelled,
    ConfigError,
    LockedError,
    OmiBatchError,
    UsageError,
)
from omi_batch.locks import ProcessLock
from omi_batch.states import (
    APPROVED,
    CANCELLED,
    PROBLEMS,
    blocker_before,
    is_held,
    result_status,
    stale_rows,
)

log = logging.getLogger("omi_batch.jobs")

POLICIES = ("manual", "auto")
FOLDERS = ("inbox", "review", "approved", "archive", "rejected", "reports")
LOCK_NAME = ".omi-batch-job.lock"
BATCH_ID = re.compile(r"^(\d{8}-\d{6}-[0-9a-f]{4})(?:-|\.|$)")
# Rows that still need the job: to preview, to approve, to execute.
OPEN_STATES = ("planned", "previewed", "approved", "submitted")
PROBLEM_STATUSES = PROBLEMS
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOKEN = re.compile(r"[A-Za-z0-9_+~-]{16,}")
_CREDENTIAL_WORDS = ("key", "secret", "token", "password", "passwd", "credential", "auth")
_IGNORED_PREFIXES = (".", "~$")  # hidden files, Excel's lock files
_IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")

# Every key a job file may have: section → {key: kind}. "" is the top level.
_SCHEMA: dict[str, dict[str, str]] = {
    "": {
        "name": "name",
        "root": "path",
        "ledger": "path",
        "notify": "notify",
        "metrics_file": "path",
        "log_format": "log_format",
    },
    "folders": {name: "path" for name in FOLDERS},
    "approval": {
        "policy": "policy",
        "max_conversations_per_row": "count",
        "max_conversations_per_batch": "count",
        "max_age_hours": "hours",
    },
    "run": {
        "concurrency": "concurrency",
        "rate": "rate",
        "timeout": "timeout",
        "wait": "seconds",
        "listen": "listen",
        "check_agents": "flag",
    },
    "omi": {
        "base_url": "url",
        "webhook_url": "url",
        "api_key_env": "env",
        "webhook_secret_env": "env",
    },
}
_SECTIONS = tuple(s for s in _SCHEMA if s)
_REQUIRED = ("ledger", "folders.inbox", "folders.review", "folders.approved", "folders.archive",
             "folders.reports")  # fmt: skip


# --------------------------------------------------------------------------- the job file


@dataclass(frozen=True)
class Job:
    """A job file, checked and with every path absolute. Holds no secret, only variable names."""

    path: Path
    name: str
    root: Path
    ledger: Path
    inbox: Path
    review: Path
    approved: Path
    archive: Path
    rejected: Path
    reports: Path
    policy: str = "manual"
    max_conversations_per_row: int | None = None
    max_conversations_per_batch: int | None = None
    max_age_hours: float = 24.0
    concurrency: int = 4
    rate: float = 20.0
    timeout: float = 30.0
    wait: float = 300.0
    listen: tuple[str, int] | None = None
    check_agents: bool = True  # look every source and target up in OMI's directory first
    base_url: str | None = None
    webhook_url: str | None = None
    api_key_env: str = "OMI_API_KEY"
    webhook_secret_env: str = "OMI_WEBHOOK_SECRET"
    notify: tuple[str, ...] = ()  # apprise URL templates: ${NAME} stands for a variable
    metrics_file: Path | None = None
    log_format: str = "text"

    @property
    def lock_path(self) -> Path:
        """The lock file: in the inbox, so two job files over one inbox never overlap either."""
        return self.inbox / LOCK_NAME

    @property
    def outbox_path(self) -> Path:
        """The notifications that could not be sent yet: beside the ledger, named by job."""
        return self.ledger.with_name(f"{self.ledger.name}.{self.name}.notify-outbox.jsonl")

    def settings(self, env: Mapping[str, str] | None = None) -> Settings:
        """The configuration this job runs with: the job file's URLs, else the environment's;
        the secrets from the variables the job file names."""
        env = os.environ if env is None else env
        return Settings.from_env(
            {
                "OMI_BASE_URL": self.base_url or env.get("OMI_BASE_URL", ""),
                "OMI_API_KEY": env.get(self.api_key_env, ""),
                "OMI_WEBHOOK_URL": self.webhook_url or env.get("OMI_WEBHOOK_URL", ""),
                "OMI_WEBHOOK_SECRET": env.get(self.webhook_secret_env, ""),
            }
        )

    def check_settings(self, settings: Settings, env: Mapping[str, str] | None = None) -> None:
        """ConfigError (exit 3) naming the first missing variable this job needs."""
        if not settings.base_url:
            raise ConfigError(
                f"OMI_BASE_URL is not set: use {PRODUCTION_URL} (or {STAGING_URL} for "
                f"staging), or set omi.base_url in {self.path.name}"
            )
        if not settings.api_key:
            raise ConfigError(
                f"{self.api_key_env} is not set: job {self.name} reads the OMI API key from it "
                "(omi.api_key_env); create a key in the OMI web app "
                "(Account > Settings > API management)"
            )
        settings.require_api()
        if self.listen is not None and settings.webhook_url and not settings.webhook_secret:
            raise ConfigError(
                f"{self.webhook_secret_env} is not set: callbacks go to OMI_WEBHOOK_URL, whose "
                f"receiver checks them with it (omi.webhook_secret_env in {self.path.name})"
            )
        if self.listen is None:
            if not settings.webhook_url:
                raise ConfigError(
                    f"job {self.name} has no webhook receiver: set OMI_WEBHOOK_URL (with "
                    "`omi-batch webhook serve` running on the same ledger), or set "
                    f'listen = "127.0.0.1:0" under [run] in {self.path.name}'
                )
            if not settings.webhook_secret:
                raise ConfigError(
                    f"{self.webhook_secret_env} is not set: the webhook receiver checks "
                    f"callbacks with it (omi.webhook_secret_env in {self.path.name})"
                )
        if self.notify:
            from omi_batch.notify import missing_variables

            missing = missing_variables(self.notify, os.environ if env is None else env)
            if missing:
                raise ConfigError(f"{missing[0]} is not set: a notification URL of job "
                                  f"{self.name} reads a secret from it (notify in "
                                  f"{self.path.name})")  # fmt: skip


def load_job(path: str | os.PathLike) -> Job:
    """Read and check a job file. UsageError (exit 2) names the first bad key; nothing else
    is touched. A file holding anything that looks like a secret value is refused."""
    path = Path(path).absolute()
    where = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot read the job file {where}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{where}: a job file is UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{where} is not valid TOML: {error}") from None

    values = _flatten(data, where)
    _refuse_secrets(values, text, where)
    for key in _REQUIRED:
        if key not in values:
            raise UsageError(f"{where}: {key} is required")
    checked = {key: _check_value(key, value, where) for key, value in values.items()}

    base = path.parent
    root = (base / checked.get("root", ".")).resolve()

    def place(key: str) -> Path:
        return (root / checked[key]).resolve()

    folders = {name: place(f"folders.{name}") for name in FOLDERS if f"folders.{name}" in checked}
    folders.setdefault("rejected", folders["inbox"].parent / "rejected")
    seen: dict[Path, str] = {}
    for name in FOLDERS:
        other = seen.get(folders[name])
        if other:
            raise UsageError(f"{where}: folders.{name} and folders.{other} are the same folder")
        seen[folders[name]] = name

    policy = checked.get("approval.policy", "manual")
    if policy == "auto":
        for key in ("max_conversations_per_row", "max_conversations_per_batch"):
            if f"approval.{key}" not in checked:
                raise UsageError(
                    f'{where}: approval.{key} is required when approval.policy is "auto" '
                    "(the ceiling above which a batch waits for a person)"
                )
    return Job(
        path=path,
        name=checked.get("name", path.stem),
        root=root,
        ledger=place("ledger"),
        inbox=folders["inbox"],
        review=folders["review"],
        approved=folders["approved"],
        archive=folders["archive"],
        rejected=folders["rejected"],
        reports=folders["reports"],
        policy=policy,
        max_conversations_per_row=checked.get("approval.max_conversations_per_row"),
        max_conversations_per_batch=checked.get("approval.max_conversations_per_batch"),
        max_age_hours=checked.get("approval.max_age_hours", 24.0),
        concurrency=checked.get("run.concurrency", 4),
        rate=checked.get("run.rate", 20.0),
        timeout=checked.get("run.timeout", 30.0),
        wait=checked.get("run.wait", 300.0),
        listen=checked.get("run.listen"),
        check_agents=checked.get("run.check_agents", True),
        base_url=checked.get("omi.base_url"),
        webhook_url=checked.get("omi.webhook_url"),
        api_key_env=checked.get("omi.api_key_env", "OMI_API_KEY"),
        webhook_secret_env=checked.get("omi.webhook_secret_env", "OMI_WEBHOOK_SECRET"),
        notify=checked.get("notify", ()),
        metrics_file=place("metrics_file") if "metrics_file" in checked else None,
        log_format=checked.get("log_format", "text"),
    )


def _flatten(data: dict, where: str) -> dict[str, Any]:
    """``{"section.key": value}``; unknown sections and keys refused, naming them."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in _SECTIONS:
                raise UsageError(f"{where}: unknown section [{key}] (known: "
                                 f"{', '.join(f'[{s}]' for s in _SECTIONS)})")  # fmt: skip
            for inner, item in value.items():
                full = f"{key}.{inner}"
                if isinstance(item, dict):
                    raise UsageError(f"{where}: unknown section [{full}]")
                if inner not in _SCHEMA[key]:
                    _refuse_unknown(full, inner, where, sorted(_SCHEMA[key]))
                values[full] = item
        elif key in _SECTIONS:
            raise UsageError(f"{where}: {key} must be a section ([{key}]), not a value")
        elif key not in _SCHEMA[""]:
            _refuse_unknown(key, key, where, sorted(k for k in _SCHEMA[""]) + list(_SECTIONS))
        else:
            values[key] = value
    return values


def _refuse_unknown(full: str, name: str, where: str, known: list[str]) -> None:
    if any(word in name.lower() for word in _CREDENTIAL_WORDS):
        raise UsageError(
            f"{where}: {full}: a job file never holds a secret; keep it in the environment "
            "and name the variable with omi.api_key_env or omi.webhook_secret_env"
        )
    raise UsageError(f"{where}: unknown key {full} (known here: {', '.join(known)})")


def looks_like_secret(text: str) -> bool:
    """True for a long random-looking token in ``text`` (an API key, a hex or base64 secret, a
    UUID): 16+ characters that switch between letters and digits often, with high entropy.
    Names with a number in them ("OffboardingInbox2026") and batch ids do not count."""
    for token in _TOKEN.findall(text):
        kinds = ["d" if c.isdigit() else "a" for c in token if c.isalnum()]
        switches = sum(a != b for a, b in zip(kinds, kinds[1:], strict=False))
        if switches < 4:
            continue
        counts = Counter(token)
        entropy = -sum(n / len(token) * math.log2(n / len(token)) for n in counts.values())
        if entropy >= 3.2:
            return True
    return False


def _refuse_secrets(values: dict[str, Any], text: str, where: str) -> None:
    """Refuse secret values, naming the key (or the line, for one in a comment); never the value."""
    advice = ("keep secrets in the environment and name the variable with omi.api_key_env or "
              "omi.webhook_secret_env")  # fmt: skip
    for key, value in values.items():
        if key == "notify":
            for url in value if isinstance(value, list) else []:
                if isinstance(url, str) and looks_like_secret(re.sub(r"\$\{[^}]*\}", "", url)):
                    raise UsageError(f"{where}: notify holds a URL that looks like it carries a "
                                     "secret value; write ${NAME} in its place and keep the "
                                     "value in the environment variable NAME")  # fmt: skip
            continue
        if not isinstance(value, str) or _kind(key) == "path":  # a folder may have any name
            continue
        if key.endswith("_env") and _ENV_NAME.match(value) and not looks_like_secret(value):
            continue
        if looks_like_secret(value):
            raise UsageError(f"{where}: {key} looks like a secret value; {advice}")
        if key in ("omi.base_url", "omi.webhook_url") and re.match(r"^\w+://[^/]*@|.*\?", value):
            raise UsageError(f"{where}: {key} carries credentials or a query string; {advice}")
    for number, line in enumerate(text.splitlines(), start=1):
        if looks_like_secret(_comment(line)):
            raise UsageError(f"{where}: line {number} looks like it holds a secret value; {advice}")


def _kind(key: str) -> str:
    """The schema kind of a flattened key ("" when the key is unknown)."""
    section, _, name = key.rpartition(".")
    return _SCHEMA.get(section, {}).get(name, "")


def _comment(line: str) -> str:
    """The comment of one TOML line (after a ``#`` outside quotes), or "" when it has none:
    values are checked key by key, so only comments are left for the line scan (issue 12)."""
    quote = ""
    escaped = False
    for index, char in enumerate(line):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "#":
            return line[index + 1 :]
    return ""


def _check_value(key: str, value: Any, where: str) -> Any:
    """One value, checked for its kind; UsageError naming the key otherwise."""
    section, _, name = key.rpartition(".")
    kind = _SCHEMA[section][name]

    def bad(what: str) -> UsageError:
        return UsageError(f"{where}: {key} must be {what}, not {value!r}")

    def number(low: float, what: str, *, whole: bool = False, high: float | None = None) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad(what)
        if whole and not isinstance(value, int):
            raise bad(what)
        if value < low or (high is not None and value > high) or not math.isfinite(value):
            raise bad(what)
        return value if whole else float(value)

    if kind in ("path", "name"):
        if not isinstance(value, str) or not value.strip() or "\x00" in value:
            raise bad("a non-empty string")
        if kind == "name" and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
            raise bad("a short name (letters, digits, _ . -)")
        return value
    if kind == "policy":
        if value not in POLICIES:
            raise bad('"manual" or "auto"')
        return value
    if kind == "count":
        return number(1, "a whole number of conversations, at least 1", whole=True)
    if kind == "hours":
        return number(0.01, "a number of hours above 0")
    if kind == "concurrency":
        return number(1, "a whole number from 1 to 64", whole=True, high=64)
    if kind == "rate":
        return number(0.01, "requests per second, at least 0.01")
    if kind == "timeout":
        return number(0.1, "seconds, at least 0.1")
    if kind == "seconds":
        return number(0, "seconds, 0 or more")
    if kind == "listen":
        return _parse_listen(value, bad)
    if kind == "flag":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "notify":
        from omi_batch.notify import check_url

        if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
            raise UsageError(f"{where}: notify must be a list of notification URLs "
                             '(e.g. notify = ["mailto://…"])')  # fmt: skip
        for url in value:
            try:
                check_url(url)
            except UsageError as error:
                raise UsageError(f"{where}: notify: {error}") from None
        return tuple(value)
    if kind == "log_format":
        if value not in ("text", "json"):
            raise bad('"text" or "json"')
        return value
    if kind == "url":
        if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
            raise bad("an http:// or https:// URL")
        return value.rstrip("/")
    if kind == "env":
        if not isinstance(value, str) or not _ENV_NAME.match(value):
            raise bad("the name of an environment variable")
        return value
    raise AssertionError(kind)  # pragma: no cover


def _parse_listen(value: Any, bad: Any) -> tuple[str, int]:
    address = parse_listen(value) if isinstance(value, str) else None
    if address is None:
        raise bad('"HOST:PORT" (port 0 picks a free one)')
    return address


# --------------------------------------------------------------------------- one tick


@dataclass
class TickResult:
    """What one tick did, and so its exit code."""

    job: str
    created: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    rejected: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    sent: bool = False

    @property
    def exit_code(self) -> int:
        """0 all fine; 2 a bad file and nothing sent; 1 anything else that needs a person."""
        if self.rejected and not self.sent and not self.problems:
            return EXIT_USAGE
        if self.rejected or self.problems:
            return EXIT_INCOMPLETE
        return EXIT_OK

    def summary(self) -> str:
        return (f"tick done: {len(self.created)} new batch(es), {len(self.waiting)} waiting for "
                f"review, {len(self.executed)} executed, {len(self.archived)} archived, "
                f"{len(self.rejected)} file(s) rejected, {len(self.problems)} problem(s)")  # fmt: skip


class JobLock(ProcessLock):
    """The job's lock: a second tick says so and does nothing (exit 0)."""

    def __init__(self, path: Path, job: str):
        super().__init__(path)
        self.job = job

    def busy(self, holder: str) -> Exception:
        return LockedError(
            f"another tick of job {self.job} is running (it holds {self.path}): "
            "this one does nothing"
        )


def run_tick(job: Job, *, env: Mapping[str, str] | None = None) -> TickResult:
    """One tick of ``job``: check the configuration (ConfigError, exit 3), take the lock
    (LockedError, exit 0, when another tick holds it), then do whatever is due."""
    settings = job.settings(env)
    job.check_settings(settings, env)
    with JobLock(job.lock_path, job.name):
        tick = _Tick(job, settings, env)
        started = time.time()
        failed: OmiBatchError | None = None
        try:
            return tick.run()
        except OmiBatchError as error:
            failed = error
            raise
        finally:
            tick.finish(started, failed)


class _Tick:
    """The work of one tick, holding the ledger, the receiver and the pipeline it opened."""

    def __init__(self, job: Job, settings: Settings, env: Mapping[str, str] | None = None):
        self.job = job
        self.settings = settings
        self.env = os.environ if env is None else env
        self.result = TickResult(job.name)
        self.touched: set[str] = set()
        self.messages: list[Any] = []  # notifications, sent once the tick's work is done
        self.metrics: Any = None

    # ------------------------------------------------------------------ the whole tick

    def run(self) -> TickResult:
        from omi_batch.ledger import Ledger

        job = self.job
        for folder in (job.inbox, job.review, job.approved, job.archive, job.rejected,
                       job.reports):  # fmt: skip
            folder.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(job.ledger)
        if job.metrics_file is not None:
            from omi_batch.metrics import make_metrics

            self.metrics = make_metrics(self.ledger, job=job.name)
        session = None
        try:
            if not (_files(job.inbox) or _files(job.approved) or self._open_batches()):
                log.info("job %s: nothing to do", job.name)
                return self.result
            from omi_batch.session import Session

            # With listen, callbacks wake the waits and share commits, as `--listen` does.
            session = Session(
                self.settings, self.ledger, listen=job.listen, metrics=self.metrics,
                say=lambda text: log.info("job %s: %s", job.name, text[:1].lower() + text[1:]),
                concurrency=job.concurrency, rate=job.rate, timeout=job.timeout, wait=job.wait,
            )  # fmt: skip
            self.pipeline = session.pipeline
            self._inbox()
            self._approved()
            for batch_id in self._open_batches():
                if batch_id not in self.touched:
                    self._guarded(batch_id, self._advance, batch_id)
        finally:
            if session is not None:
                session.close()
            self.ledger.close()
        log.info("job %s: %s", job.name, self.result.summary())
        return self.result

    def finish(self, started: float, failed: OmiBatchError | None) -> None:
        """Send the tick's notifications (the outbox first) and write its metrics file.
        Neither may fail the tick: a problem with either is logged."""
        job = self.job
        pending = None
        if job.notify:
            try:
                from omi_batch.notify import Notifier

                notifier = Notifier(job.notify, outbox=job.outbox_path, env=self.env)
                notifier.send(*self.messages)
                pending = len(notifier.pending())
            except Exception as error:  # noqa: BLE001 - notifications never fail a tick
                log.error("job %s: notifications not sent: %s", job.name,
                          f"{type(error).__name__}: {error}")  # fmt: skip
        if job.metrics_file is not None:
            try:
                from omi_batch.metrics import make_metrics, write_tick_metrics

                metrics = self.metrics or make_metrics(None)
                write_tick_metrics(job.metrics_file, job=job.name, result=self.result,
                                   started=started, metrics=metrics,
                                   exit_code=failed.exit_code if failed else None,
                                   notifications_pending=pending)  # fmt: skip
            except Exception as error:  # noqa: BLE001 - a metrics file never fails a tick
                log.error("job %s: metrics file %s not written: %s", job.name,
                          job.metrics_file, f"{type(error).__name__}: {error}")  # fmt: skip
            finally:
                if getattr(self, "ledger", None) is not None:
                    self.ledger.close()

    def _notify(self, build: Any, *args: Any, **options: Any) -> None:
        """Keep a notification for the end of the tick (when the job has notify URLs)."""
        if not self.job.notify:
            return
        try:
            message = build(*args, job=self.job.name, **options)
        except Exception as error:  # noqa: BLE001 - a notification never fails a tick
            log.error("job %s: notification not prepared: %s", self.job.name,
                      f"{type(error).__name__}: {error}")  # fmt: skip
            return
        if message is not None:
            self.messages.append(message)

    def _guarded(self, what: str, step: Any, *args: Any) -> None:
        """Run one step (about a batch or a file); an error about it is logged and the tick goes on.
        Configuration, authentication and an unreachable OMI stop the tick (exit 3)."""
        try:
            step(*args)
        except OmiBatchError as error:
            if error.exit_code == EXIT_CONFIG:
                raise
            log.error("job %s: %s: %s", self.job.name, what, error)
            self.result.problems.append(f"{what}: {error}")

    # ------------------------------------------------------------------ batches of the job

    def _job_batches(self) -> list[dict]:
        return [b for b in self.ledger.batches() if b["options"].get("job") == self.job.name]

    def _is_archived(self, batch_id: str) -> bool:
        return (self.job.archive / batch_id).is_dir()

    def _open_batches(self) -> list[str]:
        """This job's batches not yet in the archive, oldest first."""
        found = [b["id"] for b in self._job_batches() if not self._is_archived(b["id"])]
        return sorted(found)

    # ------------------------------------------------------------------ inbox

    def _inbox(self) -> None:
        for path in _files(self.job.inbox):
            self._guarded(path.name, self._new_file, path)

    def _new_file(self, path: Path) -> None:
        """Validate a new file, make (or find again) its batch, preview it, file it away."""
        from omi_batch.roster import read_plan

        job = self.job
        log.info("job %s: new file %s", job.name, path.name)
        try:
            plan = read_plan(path)
        except UsageError as error:
            self._reject(path, error)
            return
        for warning in plan.warnings:
            log.warning("job %s: %s: %s", job.name, path.name, warning)
        batches = self._job_batches()
        same = [b for b in batches if b["source_sha256"] == plan.sha256]
        reuse = [b["id"] for b in same if not self._is_archived(b["id"])]
        if reuse:
            batch_id = reuse[0]
            log.info("job %s: %s is batch %s again (same content): resuming it",
                     job.name, path.name, batch_id)  # fmt: skip
        else:
            if same:
                log.warning("job %s: %s has the same content as finished batch %s: "
                            "running it again as a new batch", job.name, path.name, same[0]["id"])  # fmt: skip
            options = {"command": "job run", "job": job.name, "source_name": path.name,
                       "concurrency": job.concurrency, "rate": job.rate,
                       "timeout": job.timeout, "wait": job.wait}  # fmt: skip
            try:
                batch_id = self.pipeline.create_batch(plan, options=options,
                                                      check_agents=job.check_agents)  # fmt: skip
            except UsageError as error:
                self._reject(path, error)
                return
            self.result.sent = True
            self.result.created.append(batch_id)
            log.info("job %s: %s: batch %s created with %d row(s)",
                     job.name, path.name, batch_id, len(plan.transfers))  # fmt: skip
        self.touched.add(batch_id)
        self._preview(batch_id)  # an error leaves the file in the inbox: the next tick resumes
        _move(path, job.reports / f"{batch_id}-source-{path.name}")
        self._advance(batch_id)

    def _reject(self, path: Path, error: OmiBatchError) -> None:
        """Set a bad file aside in the rejected folder with ``<name>.errors.csv`` beside it."""
        target = _free_name(self.job.rejected / path.name)
        _move(path, target)
        problems = getattr(error, "problems", []) or []
        report = target.with_name(target.name + ".errors.csv")
        _write_errors(report, str(error), problems)
        self.result.rejected.append(target)
        log.error("job %s: %s rejected: %s (%d problem(s); see %s)", self.job.name, path.name,
                  error, len(problems), report)  # fmt: skip
        from omi_batch import notify

        self._notify(notify.file_rejected, path.name, str(error), problems, errors_report=report)
        self.ledger.log("job_file_rejected", job=self.job.name, file=path.name,
                        error=str(error), problems=len(problems))  # fmt: skip

    # ------------------------------------------------------------------ preview and review

    def _preview(self, batch_id: str) -> None:
        """Preview the batch's planned rows and write its preview reports."""
        planned = self.ledger.rows(batch_id, states=["planned"])
        if planned:
            log.info("job %s: batch %s: previewing %d row(s)", self.job.name, batch_id,
                     len(planned))  # fmt: skip
            self.result.sent = True
            self.pipeline.preview(batch_id, rows=planned)
        self.pipeline.preview_summary(
            batch_id, self.job.reports, max_age_hours=self.job.max_age_hours, replace=True
        )
        rows = self.ledger.rows(batch_id)  # one per transfer: counted per row of the file
        previewed = [r for r in rows if r["conversations_previewed"] is not None]
        failed = {r["row"] for r in rows if r["state"] == "preview_failed"}
        moving = sum(r["conversations_previewed"] for r in previewed if r["kind"] != "tickets")
        tickets = [r["conversations_previewed"] for r in previewed if r["kind"] == "tickets"]
        what = f"{moving} conversation(s)" + (f" and {sum(tickets)} ticket(s)" if tickets else "")
        log.info("job %s: batch %s: %d row(s) previewed, %s to move, %d failed their preview",
                 self.job.name, batch_id, len({r["row"] for r in previewed} - failed), what,
                 len(failed))  # fmt: skip

    def _to_review(self, batch_id: str, reason: str | None = None) -> None:
        """Put the review workbook and the preview and targets reports in the review folder
        (once) and say so."""
        job = self.job
        if batch_id not in self.result.waiting:
            self.result.waiting.append(batch_id)
        wanted = [job.reports / f"{batch_id}-review.xlsx"] + [
            job.reports / f"{batch_id}-{kind}.csv" for kind in ("preview", "targets")
        ]
        if all((job.review / p.name).exists() for p in wanted):
            log.info("job %s: batch %s: still waiting for review", job.name, batch_id)
            return
        for path in wanted:
            if not path.exists():
                self.pipeline.preview_summary(
                    batch_id, job.reports, max_age_hours=job.max_age_hours, replace=True
                )
            _copy(path, job.review / path.name)
        because = f" ({reason})" if reason else ""
        log.info("job %s: batch %s: waiting for review%s: fill the approved column of %s and "
                 "save it in %s", job.name, batch_id, because, job.review / wanted[0].name,
                 job.approved)  # fmt: skip
        from omi_batch import notify

        workbook = job.review / f"{batch_id}-review.xlsx"
        self._notify(
            notify.review_waiting, batch_id, self.ledger.rows(batch_id),
            file=self.ledger.batch(batch_id)["options"].get("source_name"),
            workbook=workbook,
            approve_command=f"fill the approved column and save the report in {job.approved} "
            f"(or: omi-batch approve {batch_id} --report FILE --ledger {job.ledger})",
        )  # fmt: skip
        self.ledger.log("job_review", batch_id=batch_id, job=job.name, reason=reason or "manual")

    def _ceiling(self, rows: list[dict]) -> str | None:
        """Why this batch may not be approved automatically, or None when it may."""
        job = self.job
        # the ceilings count conversations; a ticket transfer's count is tickets
        previewed = [r for r in rows if r["state"] == "previewed" and r["kind"] != "tickets"]
        if not previewed:
            return None
        biggest = max(previewed, key=lambda r: r["conversations_previewed"] or 0)
        if (biggest["conversations_previewed"] or 0) > job.max_conversations_per_row:
            return (f"row {biggest['row']} would move {biggest['conversations_previewed']} "
                    f"conversation(s), over the ceiling of {job.max_conversations_per_row} per "
                    "row (approval.max_conversations_per_row)")  # fmt: skip
        total = sum(r["conversations_previewed"] or 0 for r in previewed)
        if total > job.max_conversations_per_batch:
            return (f"the batch would move {total} conversation(s), over the ceiling of "
                    f"{job.max_conversations_per_batch} per batch "
                    "(approval.max_conversations_per_batch)")  # fmt: skip
        return None

    # ------------------------------------------------------------------ approved reports

    def _approved(self) -> None:
        for path in _files(self.job.approved):
            self._guarded(path.name, self._approved_report, path)

    def _approved_report(self, path: Path) -> None:
        """Record the approvals of one edited preview report, then execute its batch."""
        job = self.job
        match = BATCH_ID.match(path.name)
        open_ids = set(self._open_batches())
        if not match:
            self._reject(path, UsageError(
                f"{path.name}: the name of an approved report starts with its batch id, "
                "as the preview report's does (e.g. 20261125-093000-ab12-preview.csv)"))  # fmt: skip
            return
        batch_id = match.group(1)
        if batch_id not in open_ids:
            known = batch_id in {b["id"] for b in self._job_batches()}
            why = "is finished and archived" if known else f"is not a batch of job {job.name}"
            self._reject(path, UsageError(f"{path.name}: batch {batch_id} {why}"))
            return
        try:
            self.ledger.refuse_cancelled(batch_id)  # its archiving comes with the open batches
        except BatchCancelled as error:
            self._reject(path, error)
            return
        self.touched.add(batch_id)
        log.info("job %s: batch %s: approved report %s", job.name, batch_id, path.name)
        rows = self.ledger.rows(batch_id)
        waiting = [r for r in rows if r["state"] == "previewed"]
        if waiting:
            stale = stale_rows(waiting, job.max_age_hours)
            if stale:
                from omi_batch.pipeline import rows_to_preview

                self._preview_again(batch_id, rows_to_preview(rows, job.max_age_hours))
                self._reject(path, UsageError(
                    f"{path.name}: the preview of batch {batch_id} was older than "
                    f"{job.max_age_hours:g} h (approval.max_age_hours), so nothing was approved "
                    f"and the batch was previewed again: review the new "
                    f"{batch_id}-preview.csv in {job.review}"))  # fmt: skip
                return
            try:
                chosen, skipped = self.pipeline.approve(batch_id, report_file=path,
                                                        max_age_hours=job.max_age_hours)  # fmt: skip
            except OmiBatchError as error:
                if error.exit_code == EXIT_CONFIG:
                    raise
                self._reject(path, error)
                return
            log.info("job %s: batch %s: %d row(s) approved, %d skipped", job.name, batch_id,
                     len(chosen), len(skipped))  # fmt: skip
        else:
            log.info("job %s: batch %s: its approvals were already recorded", job.name, batch_id)
        _move(path, job.reports / f"{batch_id}-approved{path.suffix.lower()}")
        for copy in job.review.glob(f"{batch_id}-*"):
            copy.unlink(missing_ok=True)
        if batch_id in self.result.waiting:
            self.result.waiting.remove(batch_id)
        self._advance(batch_id)

    def _preview_again(self, batch_id: str, rows: list[dict]) -> None:
        log.info("job %s: batch %s: previewing %d row(s) again (the preview was too old)",
                 self.job.name, batch_id, len(rows))  # fmt: skip
        self.result.sent = True
        self.pipeline.preview_again(batch_id, rows)  # the code `preview --batch` runs
        self.pipeline.preview_summary(
            batch_id, self.job.reports, max_age_hours=self.job.max_age_hours, replace=True
        )
        for copy in self.job.review.glob(f"{batch_id}-*"):
            copy.unlink(missing_ok=True)
        self._to_review(batch_id, "previewed again")

    # ------------------------------------------------------------------ execute and archive

    def _advance(self, batch_id: str) -> None:
        """Take one batch as far as it can go this tick."""
        job = self.job
        rows = self.ledger.rows(batch_id)
        states = {r["state"] for r in rows}
        if CANCELLED in states:
            log.info("job %s: batch %s: cancelled (omi-batch cancel): nothing of it is sent",
                     job.name, batch_id)  # fmt: skip
            self._archive(batch_id)
            return
        if "planned" in states:  # a tick died while previewing
            self._preview(batch_id)
            rows = self.ledger.rows(batch_id)
            states = {r["state"] for r in rows}
        if "previewed" in states:
            reason = None
            if job.policy == "auto":
                reason = self._ceiling(rows)
                if reason is None and stale_rows(
                    [r for r in rows if r["state"] == "previewed"], job.max_age_hours
                ):
                    reason = f"the preview is older than {job.max_age_hours:g} h"
                if reason is None:
                    chosen, _ = self.pipeline.approve(batch_id, approve_all=True,
                                                      max_age_hours=job.max_age_hours)  # fmt: skip
                    log.info("job %s: batch %s: %d row(s) approved automatically (within the "
                             "ceilings)", job.name, batch_id, len(chosen))  # fmt: skip
                    self.ledger.log("job_auto_approved", batch_id=batch_id, job=job.name,
                                    rows=len(chosen))  # fmt: skip
                    rows = self.ledger.rows(batch_id)
            if any(r["state"] == "previewed" for r in rows):
                if reason:
                    log.warning("job %s: batch %s: left for review: %s", job.name, batch_id,
                                reason)  # fmt: skip
                self._to_review(batch_id, reason)
                return
        due = [r for r in rows if r["state"] == "submitted" or
               (r["state"] == APPROVED and not is_held(r))]  # fmt: skip
        if due:
            resumed = sum(r["state"] == "submitted" for r in due)
            log.info("job %s: batch %s: executing %d row(s)%s", job.name, batch_id, len(due),
                     f" ({resumed} resumed after an interrupted tick)" if resumed else "")  # fmt: skip
            self.result.sent = True
            summary = self.pipeline.execute(batch_id)
            if summary.stopped is not None:  # stopped part-way: the tick stops (exit 3)
                raise summary.stopped
            self.result.executed.append(batch_id)
            log.info("job %s: batch %s: executed: %s", job.name, batch_id,
                     _counts(summary.counts))  # fmt: skip
            rows = self.ledger.rows(batch_id)
        if any(r["state"] == "unconfirmed" for r in rows):
            log.info("job %s: batch %s: reconciling %d unconfirmed row(s)", job.name, batch_id,
                     sum(r["state"] == "unconfirmed" for r in rows))  # fmt: skip
            self.result.sent = True
            self.pipeline.reconcile(batch_id)
            rows = self.ledger.rows(batch_id)
            freed = _freed(rows)
            if freed:  # what held them is now succeeded: run them once before archiving
                log.info("job %s: batch %s: executing %d held row(s) now that the rows before "
                         "them succeeded", job.name, batch_id, len(freed))  # fmt: skip
                summary = self.pipeline.execute(batch_id)
                if summary.stopped is not None:  # stopped part-way: the tick stops (exit 3)
                    raise summary.stopped
                log.info("job %s: batch %s: executed: %s", job.name, batch_id,
                         _counts(summary.counts))  # fmt: skip
        self._archive(batch_id)

    def _archive(self, batch_id: str) -> None:
        """Move the finished batch's input file and reports to ``archive/<batch>/``."""
        job = self.job
        final = job.archive / batch_id
        partial = job.archive / f".{batch_id}.partial"
        partial.mkdir(parents=True, exist_ok=True)
        self.pipeline.write_reports(
            batch_id, job.reports, max_age_hours=job.max_age_hours, replace=True
        )
        for path in sorted(job.reports.glob(f"{batch_id}-*")):
            _move(path, partial / path.name)
        for path in job.review.glob(f"{batch_id}-*"):
            path.unlink(missing_ok=True)
        os.replace(partial, final)
        rows = self.ledger.rows(batch_id)
        statuses = Counter(result_status(r) for r in rows)
        held = [r for r in rows if r["state"] == APPROVED]
        self.result.archived.append(batch_id)
        self.ledger.log("job_archived", batch_id=batch_id, job=job.name, folder=str(final),
                        statuses=dict(statuses))  # fmt: skip
        log.info("job %s: batch %s: archived in %s: %s", job.name, batch_id, final,
                 _counts(statuses))  # fmt: skip
        from omi_batch import notify

        retry = final / f"{batch_id}-retry.csv"
        self._notify(notify.batch_finished, batch_id, rows)
        self._notify(notify.rows_need_attention, batch_id, rows,
                     retry_report=retry if retry.exists() else None)  # fmt: skip
        bad = {s: n for s, n in statuses.items() if s in PROBLEM_STATUSES}
        if bad or held:
            what = _counts(bad) + (f", {len(held)} held" if held else "")
            self.result.problems.append(f"batch {batch_id}: {what.strip(', ')}")
            log.warning("job %s: batch %s: %s: the retry report lists them", job.name, batch_id,
                        what.strip(", "))  # fmt: skip


# --------------------------------------------------------------------------- file helpers


def _files(folder: Path) -> list[Path]:
    """The files a person put in ``folder`` (not hidden, not half-written), oldest first."""
    found = []
    for path in folder.iterdir():
        name = path.name
        if name.startswith(_IGNORED_PREFIXES) or name.lower().endswith(_IGNORED_SUFFIXES):
            continue
        if path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


def _free_name(path: Path) -> Path:
    """``path``, or ``<stem>-<UTC time><suffix>`` beside it when that name is taken."""
    if not path.exists():
        return path
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        extra = f"-{stamp}" + (f"-{n}" if n > 1 else "")
        candidate = path.with_name(f"{path.stem}{extra}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise UsageError(f"too many files named like {path.name} in {path.parent}")


def _move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))


def _copy(source: Path, target: Path) -> None:
    """Copy through a temporary name, so a person never opens half a file."""
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def _write_errors(path: Path, message: str, problems: list) -> None:
    """The error report of a rejected file: ``row, code, message`` (UTF-8 with BOM, for Excel)."""
    from omi_batch.reports import escape_cell

    with open(path, "w", encoding="utf-8-sig", newline="") as handle:
        out = csv.writer(handle, lineterminator="\r\n")
        out.writerow(["row", "code", "message"])
        if not problems:
            out.writerow(["", "refused", escape_cell(message)])
        for problem in problems:
            row = getattr(problem, "row", None)
            code = getattr(problem, "code", "problem")
            text = getattr(problem, "message", str(problem))
            out.writerow(["" if row is None else row, code, escape_cell(text)])


def _freed(rows: list[dict]) -> list[int]:
    """Held rows no earlier row of whose source holds any more (``states.holds``): executing
    the batch again would run them, and resubmit nothing else (a still unconfirmed row before a
    held one keeps it held here)."""
    return [r["row"] for r in rows if is_held(r) and blocker_before(rows, r) is None]


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no rows"


__all__ = ["Job", "JobLock", "TickResult", "load_job", "looks_like_secret", "run_tick"]

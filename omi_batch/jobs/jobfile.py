"""The job file: its keys, their checks (no secret in the file itself), and ``Job``."""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omi_batch.callbacks import parse_listen
from omi_batch.config import AUTH_MODES, PRODUCTION_URL, STAGING_URL, Settings
from omi_batch.errors import (
    ConfigError,
    UsageError,
)
from omi_batch.states import (
    PROBLEMS,
)

POLICIES = ("manual", "auto")
FOLDERS = ("inbox", "review", "approved", "archive", "rejected", "reports")
LOCK_NAME = ".omi-batch-job.lock"
BATCH_ID = re.compile(r"^(\d{8}-\d{6}-[0-9a-f]{4})(?:-|\.|$)")
# Rows that still need the job: to preview, to approve, to execute.
OPEN_STATES = ("planned", "previewed", "approved", "submitted")
PROBLEM_STATUSES = PROBLEMS
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The names a message may show: anything else a setting naming a secret's variable holds may be
# the secret itself, pasted in the wrong place.
_CONVENTIONAL_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_REFERENCE = re.compile(r"\$\{([^}]*)\}")
NOT_SHOWN = (
    "does not look like the name of an environment variable (upper case letters, digits and _, "
    "not starting with a digit) and may be the secret itself, so it is not shown"
)
# The settings that name a secret's variable (``notify``'s ``${NAME}`` references aside): the
# variable each names by default, and the secret it holds.
SECRET_VARIABLES = {
    "omi.api_key_env": ("OMI_API_KEY", "the OMI API key"),
    "omi.webhook_secret_env": ("OMI_WEBHOOK_SECRET", "the webhook secret"),
}
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
        "auth": "auth",
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
    auth: str | None = None  # api-key | bearer; None: OMI_AUTH from the environment
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
        """The configuration this job runs with: the job file's URLs and auth mode, else the
        environment's; the secrets from the variables the job file names."""
        env = os.environ if env is None else env
        return Settings.from_env(
            {
                "OMI_BASE_URL": self.base_url or env.get("OMI_BASE_URL", ""),
                "OMI_API_KEY": env.get(self.api_key_env, ""),
                "OMI_WEBHOOK_URL": self.webhook_url or env.get("OMI_WEBHOOK_URL", ""),
                "OMI_WEBHOOK_SECRET": env.get(self.webhook_secret_env, ""),
                "OMI_AUTH": self.auth or env.get("OMI_AUTH", ""),
            }
        )

    def check_settings(self, settings: Settings, env: Mapping[str, str] | None = None) -> None:
        """ConfigError (exit 3) naming the first missing variable this job needs (a name that
        may be a secret pasted in its place is not shown: see :func:`shows_name`)."""
        if not settings.base_url:
            raise ConfigError(
                f"OMI_BASE_URL is not set: use {PRODUCTION_URL} (or {STAGING_URL} for "
                f"staging), or set omi.base_url in {self.path.name}"
            )
        if not settings.api_key and not shows_name(self.api_key_env):
            raise self._unset("omi.api_key_env")
        if not settings.api_key:
            raise ConfigError(
                f"{self.api_key_env} is not set: job {self.name} reads the OMI API key from it "
                "(omi.api_key_env); create a key in the OMI web app "
                "(Account > Settings > API management)"
            )
        settings.require_api()
        # A receiver at OMI_WEBHOOK_URL checks callbacks with the secret (without that URL a
        # listening tick makes a one-off secret, and a tick without either is told so below).
        hidden = not shows_name(self.webhook_secret_env)
        if settings.webhook_url and not settings.webhook_secret and hidden:
            raise self._unset("omi.webhook_secret_env")
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
            if missing and not shows_name(missing[0]):
                raise ConfigError(f"a notification URL of job {self.name} names with ${{…}} a "
                                  f"variable that {NOT_SHOWN}; no variable of that name is set "
                                  f"(notify in {self.path.name})")  # fmt: skip
            if missing:
                raise ConfigError(f"{missing[0]} is not set: a notification URL of job "
                                  f"{self.name} reads a secret from it (notify in "
                                  f"{self.path.name})")  # fmt: skip

    def _unset(self, key: str) -> ConfigError:
        """The variable ``key`` names is not set, and its name is not to be shown."""
        example, what = SECRET_VARIABLES[key]
        return ConfigError(f"{key} in {self.path.name} {NOT_SHOWN}; no variable of that name is "
                           f"set: keep {what} in the environment and name its variable there "
                           f"(e.g. {example})")  # fmt: skip


def shows_name(name: object) -> bool:
    """True when a message may show ``name``, a variable a job file names for a secret: a
    conventional name (``OMI_API_KEY``), not something that may be the secret itself."""
    conventional = isinstance(name, str) and bool(_CONVENTIONAL_NAME.match(name))
    return conventional and not looks_like_secret(name)


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
        auth=checked.get("omi.auth"),
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
            if any(not _ENV_NAME.match(name) for name in _REFERENCE.findall(url)):
                from omi_batch.notify import redact

                raise UsageError(f"{where}: notify: notification URL {redact(url)}: a ${{…}} "
                                 f"reference {NOT_SHOWN}; write ${{NAME}}, NAME the variable "
                                 "that holds the secret")  # fmt: skip
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
    if kind == "auth":
        if value not in AUTH_MODES:
            raise bad(" or ".join(f'"{mode}"' for mode in AUTH_MODES))
        return value
    if kind == "env":
        if not isinstance(value, str) or not _ENV_NAME.match(value):
            example, what = SECRET_VARIABLES[key]
            raise UsageError(f"{where}: {key} {NOT_SHOWN}; keep {what} in the environment and "
                             f"name its variable there (e.g. {example})")  # fmt: skip
        return value
    raise AssertionError(kind)  # pragma: no cover


def _parse_listen(value: Any, bad: Any) -> tuple[str, int]:
    address = parse_listen(value) if isinstance(value, str) else None
    if address is None:
        raise bad('"HOST:PORT" (port 0 picks a free one)')
    return address

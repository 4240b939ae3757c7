"""The receiver's WSGI app: checks each callback (path, method, size, credential, JSON), has
it stored through the ledger writer, and answers within ``answer_within`` seconds."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from http import HTTPStatus
from typing import Any

from omi_batch import callbacks
from omi_batch.bodies import BodyError, parse_body
from omi_batch.callbacks import CallbackTarget
from omi_batch.config import Secret
from omi_batch.errors import ConfigError, LedgerGone
from omi_batch.refusals import RefusalTally
from omi_batch.spool import Spool, spool_path
from omi_batch.webhook.writer import ReceiverLedger, Writer, is_ledger_error

MAX_BODY = 65536
REFUSED_BODY_KEPT = 4096  # bytes of an uncredentialed body kept in the ledger
ANSWER_WITHIN = 1.5  # seconds the ledger gets before we answer 503: OMI allows 2
MAX_HEADERS = 64  # request headers allowed at most (431 beyond): OMI sends about 6
MAX_HEADER_BYTES = 16384  # their total size at most
KEPT_HEADERS = 32  # headers stored with a callback at most, each value cut to KEPT_HEADER_VALUE
KEPT_HEADER_VALUE = 256
HOLD_RETRY = 0.5  # seconds between tries of a callback held until its row's 202 is stored
HOLD_FOR = 600.0  # seconds a callback is held at most; then it is judged on what is known
LOGGER_NAME = "omi_batch.webhook"
HEALTH_PATH = "/healthz"

# What the ledger's verdict means for OMI. A stored callback is always 2xx, so OMI never
# retries something we already keep; only "unknown" (no such batch or row) is a 404.
_VERDICT_STATUS = {
    "stored": 200,
    "applied": 200,
    "late": 200,
    "confirmed": 200,
    "duplicate": 200,
    "conflict": 200,
    "stale": 200,
    "unexpected": 200,
    "spooled": 200,
    "held": 200,
    "unknown": 404,
}
# Refusals decided before the credential was checked: anyone can cause them, so they are
# counted and sampled (issue 12), never each stored.
_UNAUTHENTICATED = frozenset(
    {"headers", "method", "bad_content_length", "too_large", "missing_credential",
     "bad_credential"}
)  # fmt: skip

# Header values that are credentials: recorded as present, never by value.
_SECRET_HEADERS = frozenset(
    {callbacks.HEADER.lower(), "authorization", "proxy-authorization", "cookie", "x-api-key"}
)

StartResponse = Callable[..., Any]


class _TooSlow(Exception):
    """The ledger did not finish storing the callback within ``answer_within``."""


class _Refusal(Exception):
    """A callback we answer with a 4xx; ``reason`` becomes the verdict ``refused:<reason>``."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []


class WebhookApp:
    """The WSGI app: ``GET /healthz`` and ``POST …/callbacks/{batch}/{row}/{phase}``."""

    def __init__(
        self,
        ledger: ReceiverLedger,
        secret: Secret,
        *,
        max_body: int = MAX_BODY,
        logger: logging.Logger | None = None,
        answer_within: float | None = ANSWER_WITHIN,
        metrics: Any = None,
        spool: Spool | None = None,
        hold_retry: float = HOLD_RETRY,
        hold_for: float = HOLD_FOR,
    ):
        if not isinstance(secret, Secret):
            secret = Secret(str(secret))
        if not secret:
            raise ConfigError("the webhook receiver needs a non-empty OMI_WEBHOOK_SECRET")
        if max_body < 1:
            raise ValueError("max_body must be at least 1 byte")
        self.ledger = ledger
        self._secret = secret
        self.max_body = max_body
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self.answer_within = answer_within
        self.metrics = metrics  # an omi_batch.metrics.Metrics, told of each answer and write
        path = getattr(ledger, "path", None)
        self.spool = spool if spool is not None or path is None else Spool(spool_path(path))
        self.hold_retry = float(hold_retry)
        self.hold_for = float(hold_for)
        self.refusals = RefusalTally()
        self._write_lock = threading.Lock()
        self._pool: Writer | None = None
        self._pool_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"WebhookApp(ledger={self.ledger!r}, max_body={self.max_body})"

    # ------------------------------------------------------------------ WSGI entry point

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if path.rstrip("/") == HEALTH_PATH:
            return self._health(method, start_response)
        target = callbacks.parse_path(path)
        if target is None:
            return self._not_found(path, start_response)
        # A wrong method on a callback path is a refused callback, recorded like the others.
        return self._callback(environ, target, start_response, method_ok=method == "POST")

    # ------------------------------------------------------------------ callbacks

    def _callback(
        self,
        environ: dict,
        target: CallbackTarget,
        start_response: StartResponse,
        *,
        method_ok: bool = True,
    ) -> Iterable[bytes]:
        started = time.monotonic()
        headers = _headers(environ)
        remote = environ.get("REMOTE_ADDR") or None
        raw_body = b""
        body: dict | None = None
        try:
            if _too_many_headers(environ):
                raise _Refusal(431, "headers")
            if not method_ok:
                raise _Refusal(405, "method", [("Allow", "POST")])
            raw_body = self._read_body(environ)
            presented = environ.get("HTTP_" + callbacks.HEADER.upper().replace("-", "_"))
            if not callbacks.check(self._secret, target, presented):
                raise _Refusal(401, "missing_credential" if not presented else "bad_credential")
            try:
                body = parse_body(raw_body)
            except BodyError as error:
                raise _Refusal(400, error.reason) from None
        except _Refusal as refusal:
            if refusal.reason in _UNAUTHENTICATED:  # anyone can send these: count, sample
                verdict = self._count_refusal(target, refusal, raw_body, headers, remote)
                return self._answer(
                    start_response, target, refusal.status, verdict, started, refusal.headers
                )
            # A credentialed sender's malformed body: kept like any callback, answered 400.
            callback = {"raw_body": raw_body, "headers": headers, "remote": remote,
                        "body": None, "refused": refusal.reason}  # fmt: skip
            try:
                self._deliver(target, callback)
            except Exception as error:
                self._log_not_stored(target, started, error)
            verdict = f"refused:{refusal.reason}"
            return self._answer(
                start_response, target, refusal.status, verdict, started, refusal.headers
            )

        try:
            verdict = self._deliver(
                target, {"raw_body": raw_body, "headers": headers, "remote": remote, "body": body}
            )
        except Exception as error:  # neither the ledger nor the spool could keep it
            self.logger.error(
                "callback batch=%s row=%s phase=%s verdict=error status=503 ms=%.1f "
                "error=%s (the ledger could not store the callback)",
                target.batch_id,
                target.row,
                target.phase,
                (time.monotonic() - started) * 1000,
                type(error).__name__,
            )
            if self.metrics is not None:
                self.metrics.observe_callback("error", time.monotonic() - started)
            return _respond(start_response, 503, {"verdict": "error"}, [("Retry-After", "5")])
        status = _VERDICT_STATUS.get(verdict, 409 if verdict.startswith("refused:") else 200)
        return self._answer(start_response, target, status, verdict, started)

    def _log_not_stored(self, target: CallbackTarget, started: float, error: Exception) -> None:
        self.logger.error(
            "callback batch=%s row=%s phase=%s verdict=error status=503 ms=%.1f error=%s "
            "(neither the ledger nor the spool could store the callback)",
            target.batch_id, target.row, target.phase,
            (time.monotonic() - started) * 1000, type(error).__name__,
        )  # fmt: skip

    def _deliver(self, target: CallbackTarget, received: dict) -> str:
        """Store an authenticated callback: in the ledger when it takes it within
        ``answer_within``, else in the spool (``spooled``), from which the writer applies it as
        soon as the ledger can; ``held`` when its row's 202 is not stored yet. Either way it is
        kept durably before the caller answers. Raises when neither could keep it; LedgerGone
        (the ledger's -wal was deleted under it) after it was spooled, so the answer is 503."""
        callback = {"batch_id": target.batch_id, "row": target.row, "phase": target.phase,
                    "receipt": uuid.uuid4().hex, **received}  # fmt: skip
        writer = self._executor()
        if self.spool is None or self.answer_within is None:
            return self._store(target, **callback)
        if writer.gone is not None:  # kept, but no more 200s: the ledger needs a person
            self._spool(writer, callback, "spooled")
            raise LedgerGone(writer.gone)
        if writer.must_queue(target):  # older callbacks wait in the spool: keep their order
            return self._spool(writer, callback, "spooled")
        callback["may_hold"] = True
        try:
            verdict = self._store(target, **callback)
        except _TooSlow:
            return self._spool(writer, callback, "spooled")
        except LedgerGone:
            self._spool(writer, callback, "spooled")
            raise
        except Exception as error:
            if not is_ledger_error(error):
                raise
            return self._spool(writer, callback, "spooled")
        if verdict == "held":
            return self._spool(writer, callback, "held")
        return verdict

    def _spool(self, writer: Writer, callback: dict, verdict: str) -> str:
        assert self.spool is not None
        wait = self.hold_retry if verdict == "held" else 0.0
        self.spool.put(callback, wait=wait)
        writer.spooled(callback, held=verdict == "held")
        return verdict

    def _count_refusal(
        self,
        target: CallbackTarget,
        refusal: _Refusal,
        raw_body: bytes,
        headers: dict,
        remote: str | None,
    ) -> str:
        """Count an unauthenticated refusal; record it (its body truncated, no row changed)
        only as one of the first few of its reason this hour. Never raises: the caller is
        answered with its 4xx even if the ledger cannot take the record."""
        verdict = f"refused:{refusal.reason}"
        if not self.refusals.add(refusal.reason):
            return verdict
        try:
            recorded = self._store(
                target, raw_body=raw_body[:REFUSED_BODY_KEPT], headers=headers, remote=remote,
                body=None, refused=refusal.reason,
            )  # fmt: skip
        except Exception as error:
            self.logger.error(
                "callback batch=%s row=%s phase=%s: refusal %s not recorded (%s)",
                target.batch_id,
                target.row,
                target.phase,
                refusal.reason,
                type(error).__name__,
            )
            return verdict
        return recorded or verdict

    def _store(self, target: CallbackTarget, **received: Any) -> str:
        """``ledger.receive_callback``, given up on after ``answer_within`` seconds so that OMI
        always has its answer in time. A write still queued is cancelled; one already running
        finishes on its own (its verdict is logged), and a retry of it is then a duplicate.

        Writes go through one thread, in arrival order: SQLite takes one writer at a time
        anyway, and threads queued on a Python lock wake at once where threads contending for
        the SQLite lock sleep and poll (which made the slowest answers ten times slower); and
        the callbacks waiting at the same moment share one transaction (see :class:`Writer`)."""
        callback = {"batch_id": target.batch_id, "row": target.row, "phase": target.phase,
                    **received}  # fmt: skip
        if self.answer_within is None:
            with self._write_lock:
                began = time.monotonic()
                try:
                    return self.ledger.receive_callback(**callback)
                finally:
                    if self.metrics is not None:
                        self.metrics.observe_ledger_write(time.monotonic() - began)
        future = self._executor().submit(callback)
        try:
            return future.result(timeout=self.answer_within)
        except TimeoutError:
            if future.done():  # the ledger itself raised TimeoutError
                raise
            if not future.cancel():
                future.add_done_callback(lambda done: self._log_finished_late(target, done))
            raise _TooSlow from None

    def _log_finished_late(self, target: CallbackTarget, future: Future) -> None:
        error = future.exception()
        outcome = f"error={type(error).__name__}" if error else f"verdict={future.result()}"
        self.logger.warning(
            "callback batch=%s row=%s phase=%s: stored after it was spooled, %s",
            target.batch_id,
            target.row,
            target.phase,
            outcome,
        )

    def _executor(self) -> Writer:
        with self._pool_lock:
            if self._pool is None:
                self._pool = Writer(
                    self.ledger, spool=self.spool, refusals=self.refusals, logger=self.logger,
                    hold_retry=self.hold_retry, hold_for=self.hold_for, metrics=self.metrics,
                )  # fmt: skip
            return self._pool

    def start(self) -> None:
        """Start the writer, which drains what an earlier receiver left in the spool first."""
        self._executor()

    def close(self) -> None:
        """Let the ledger writes in progress finish; a later request starts afresh."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        if self.spool is not None:
            self.spool.close()

    def _read_body(self, environ: dict) -> bytes:
        """At most ``max_body`` bytes of the body; a longer one is refused with 413.

        A declared Content-Length over the limit is refused without reading; a body without
        one (chunked, which waitress de-chunks) is read to ``max_body + 1`` bytes and no more.
        """
        declared = environ.get("CONTENT_LENGTH") or ""
        stream = environ["wsgi.input"]
        if declared.strip():
            try:
                length = int(declared)
            except ValueError:
                raise _Refusal(400, "bad_content_length") from None
            if length < 0:
                raise _Refusal(400, "bad_content_length")
            if length > self.max_body:
                raise _Refusal(413, "too_large")
            raw = stream.read(length) if length else b""
        else:
            raw = stream.read(self.max_body + 1)
        if len(raw) > self.max_body:
            raise _Refusal(413, "too_large")
        return raw

    def _answer(
        self,
        start_response: StartResponse,
        target: CallbackTarget,
        status: int,
        verdict: str,
        started: float,
        extra: list[tuple[str, str]] | None = None,
    ) -> Iterable[bytes]:
        elapsed = time.monotonic() - started
        if self.metrics is not None:
            self.metrics.observe_callback(verdict, elapsed)
        self.logger.info(
            "callback batch=%s row=%s phase=%s verdict=%s status=%d ms=%.1f",
            target.batch_id,
            target.row,
            target.phase,
            verdict,
            status,
            elapsed * 1000,
            extra={"event": "callback", "batch": target.batch_id, "row": target.row},
        )
        return _respond(start_response, status, {"verdict": verdict}, extra)

    # ------------------------------------------------------------------ the rest

    def _health(self, method: str, start_response: StartResponse) -> Iterable[bytes]:
        if method not in ("GET", "HEAD"):
            return _respond(start_response, 405, {"ok": False}, [("Allow", "GET, HEAD")])
        pool = self._pool
        if pool is not None and pool.gone is not None:
            self.logger.error("healthz: %s", pool.gone)
            return _respond(start_response, 503, {"ok": False, "error": "ledger not writable"})
        try:
            _check_readable(self.ledger)
        except Exception as error:
            self.logger.error("healthz: the ledger is not readable (%s)", type(error).__name__)
            return _respond(start_response, 503, {"ok": False, "error": "ledger not readable"})
        body = _respond(start_response, 200, {"ok": True})
        return [] if method == "HEAD" else body

    def _not_found(self, path: str, start_response: StartResponse) -> Iterable[bytes]:
        self.logger.debug("not a callback path: %.200s", path)
        return _respond(start_response, 404, {"error": "not found"})


def _too_many_headers(environ: dict) -> bool:
    """More headers than :data:`MAX_HEADERS`, or more than :data:`MAX_HEADER_BYTES` of them."""
    count = size = 0
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            count += 1
            size += len(key) + len(str(value))
    return count > MAX_HEADERS or size > MAX_HEADER_BYTES


def make_app(ledger: ReceiverLedger, secret: Secret, **options: Any) -> WebhookApp:
    """The receiver's WSGI app over ``ledger`` (an ``omi_batch.ledger.Ledger``, or a wrapper of
    one with what :class:`~omi_batch.webhook.writer.ReceiverLedger` names).

    ``answer_within``: seconds the ledger gets to store a callback before it is kept in the
    spool instead (``<ledger>.spool``) and answered ``spooled`` (None: wait as long as the
    ledger does, no spool). ``metrics`` (``omi_batch.metrics.make_metrics``) counts every
    answer and times every ledger write; mount its ``/metrics`` with ``metrics.wrap(app)``.
    ``hold_retry``/``hold_for``: how often and how long a callback whose row's 202 is not
    stored yet is tried again before it is judged on what is known.
    """
    return WebhookApp(ledger, secret, **options)


def _check_readable(ledger: ReceiverLedger) -> None:
    """Raise unless the ledger answers a read (its cheapest: the last event's hash)."""
    ledger.head()


def _headers(environ: dict) -> dict[str, str]:
    """The request headers as a dict, with credentials replaced by ``***``."""
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if len(headers) >= KEPT_HEADERS:
            break
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").title()
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            name = key.replace("_", "-").title()
        else:
            continue
        shown = str(value)[:KEPT_HEADER_VALUE]
        headers[name] = "***" if name.lower() in _SECRET_HEADERS else shown
    return headers


def _respond(
    start_response: StartResponse,
    status: int,
    payload: dict,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    data = json.dumps(payload).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(data))),
        ("Cache-Control", "no-store"),
        *(extra or []),
    ]
    start_response(f"{status} {HTTPStatus(status).phrase}", headers)
    return [data]

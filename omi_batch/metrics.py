"""Metrics in the Prometheus format: the receiver's ``/metrics``, and a job tick's textfile.

``make_metrics`` builds one :class:`Metrics` per app, with a registry of its own (never the
process-wide one, so two apps in one process, or a test, never mix figures). The receiver calls
``observe_callback`` once per callback it answers and ``observe_ledger_write`` once per ledger
write; ``wrap`` puts ``GET /metrics`` in front of any WSGI app. The rows by state of every open
batch are read from the ledger at scrape time, in one grouped query (``Ledger.batches``).

A job tick has no port to scrape: ``write_tick_metrics`` writes the same kind of figures to a
node-exporter textfile (``metrics_file``), through a temporary file and a rename, so the
exporter never reads half a file. A tick that failed keeps the last success time of the
previous file, so "no successful tick for an hour" can be alerted on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("omi_batch.metrics")

METRICS_PATH = "/metrics"
PREFIX = "omi_batch"
# Seconds. OMI gives the receiver 2 s to answer; the buckets are finest below that.
ANSWER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 5.0)
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 5.0)
# A batch is open while any row is in one of these: it may still change.
OPEN_STATES = ("planned", "previewed", "approved", "submitted", "unconfirmed")
TICK_OUTCOMES = ("created", "waiting", "executed", "archived")

StartResponse = Callable[..., Any]


class _LedgerCollector:
    """``omi_batch_rows{batch, state}`` for every open batch (every state, 0 included, so an
    alert needs no ``absent()``), ``omi_batch_open_batches`` and ``omi_batch_ledger_up``
    (0 when the ledger could not be read: the scrape itself still answers)."""

    def __init__(self, ledger: Any, job: str | None = None):
        self.ledger = ledger
        self.job = job

    def describe(self) -> list:
        return []  # figures read at scrape time: nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily(f"{PREFIX}_ledger_up",
                               "1 when the ledger could be read for this scrape, else 0")  # fmt: skip
        rows = GaugeMetricFamily(f"{PREFIX}_rows", "Rows of each open batch, by state",
                                 labels=["batch", "state"])  # fmt: skip
        count = GaugeMetricFamily(f"{PREFIX}_open_batches",
                                  "Batches with a row that may still change")  # fmt: skip
        try:
            batches = self.ledger.batches()
        except Exception as error:  # noqa: BLE001 - a scrape must answer even so
            log.warning("metrics: the ledger could not be read (%s)", type(error).__name__)
            up.add_metric([], 0)
            yield up
            return
        from omi_batch.ledger import STATES

        opened = 0
        for batch in sorted(batches, key=lambda b: b["id"]):
            if self.job is not None and (batch.get("options") or {}).get("job") != self.job:
                continue
            states: Mapping[str, int] = batch.get("states") or {}
            if not any(states.get(state) for state in OPEN_STATES):
                continue
            opened += 1
            for state in STATES:
                rows.add_metric([batch["id"], state], int(states.get(state, 0)))
        up.add_metric([], 1)
        count.add_metric([], opened)
        yield from (up, rows, count)


class Metrics:
    """The figures of one app (a receiver, or one job tick) in a registry of its own."""

    def __init__(self, ledger: Any | None = None, *, job: str | None = None):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.callbacks = Counter(
            f"{PREFIX}_callbacks_received", "Callbacks answered, by the receiver's verdict "
            "(refused ones as verdict=\"refused\")", ["verdict"], registry=self.registry,
        )  # fmt: skip
        self.refused = Counter(
            f"{PREFIX}_callbacks_refused", "Callbacks refused, by reason", ["reason"],
            registry=self.registry,
        )  # fmt: skip
        self.answer_seconds = Histogram(
            f"{PREFIX}_callback_answer_seconds", "Seconds from a callback's arrival to its "
            "answer (OMI allows 2)", buckets=ANSWER_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.ledger_write_seconds = Histogram(
            f"{PREFIX}_ledger_write_seconds", "Seconds one ledger write of the receiver took",
            buckets=WRITE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.ledger = ledger
        if ledger is not None:
            self.registry.register(_LedgerCollector(ledger, job))

    def __repr__(self) -> str:
        return f"Metrics(ledger={self.ledger!r})"

    # ------------------------------------------------------------------ what the receiver calls

    def observe_callback(self, verdict: str, seconds: float) -> None:
        """One callback answered with ``verdict`` (``refused:<reason>`` for a refusal) after
        ``seconds``."""
        verdict = str(verdict)
        if verdict.startswith("refused:"):
            self.refused.labels(reason=verdict.partition(":")[2] or "unknown").inc()
            verdict = "refused"
        self.callbacks.labels(verdict=verdict).inc()
        self.answer_seconds.observe(max(float(seconds), 0.0))

    def observe_ledger_write(self, seconds: float) -> None:
        """One ledger write of the receiver, which took ``seconds``."""
        self.ledger_write_seconds.observe(max(float(seconds), 0.0))

    # ------------------------------------------------------------------ serving

    def text(self) -> bytes:
        """Every figure, in the Prometheus text format."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def app(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        """A WSGI app answering ``GET``/``HEAD`` with the figures (any path)."""
        from prometheus_client import CONTENT_TYPE_LATEST

        method = environ.get("REQUEST_METHOD", "GET").upper()
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"),
                                                      ("Content-Length", "0")])  # fmt: skip
            return []
        data = self.text()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST),
                                  ("Content-Length", str(len(data))),
                                  ("Cache-Control", "no-store")])  # fmt: skip
        return [] if method == "HEAD" else [data]

    def wrap(self, app: Callable, path: str = METRICS_PATH) -> Callable:
        """``app`` with ``path`` answered by :meth:`app`; every other request goes to ``app``
        (its attributes, such as ``max_body`` and ``close``, stay reachable)."""
        return _Mounted(app, self, path)


class _Mounted:
    """A WSGI app with the metrics mounted at one path in front of it."""

    def __init__(self, inner: Callable, metrics: Metrics, path: str):
        self.inner = inner
        self.metrics = metrics
        self.path = path.rstrip("/") or "/"

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        if (environ.get("PATH_INFO") or "/").rstrip("/") == self.path:
            return self.metrics.app(environ, start_response)
        return self.inner(environ, start_response)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"{self.inner!r} with {self.path}"


def make_metrics(ledger: Any | None = None, *, job: str | None = None) -> Metrics:
    """The metrics of one app; with ``ledger``, the rows by state of its open batches (only
    the batches of ``job``, when given) are read from it at each scrape."""
    return Metrics(ledger, job=job)


# --------------------------------------------------------------------------- a job's textfile


def write_tick_metrics(
    path: str | Path,
    *,
    job: str,
    result: Any,
    started: float,
    finished: float | None = None,
    metrics: Metrics | None = None,
    exit_code: int | None = None,
    notifications_pending: int | None = None,
) -> Path:
    """Write a tick's figures to the node-exporter textfile ``path`` (atomically).

    ``result`` is the tick's ``TickResult`` (its lists and ``exit_code``); ``started`` and
    ``finished`` are ``time.time()`` values; ``metrics`` (the tick's, with its ledger and its
    receiver's counters, if one ran) adds the rows by state of the job's open batches;
    ``exit_code`` overrides the result's (a tick stopped by an error)."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    path = Path(path)
    finished = time.time() if finished is None else finished
    registry = metrics.registry if metrics is not None else CollectorRegistry()

    def gauge(name: str, text: str, value: float, **labels: str) -> None:
        metric = Gauge(f"{PREFIX}_job_{name}", text, ["job", *labels], registry=registry)
        metric.labels(job=job, **labels).set(value)

    exit_code = int(result.exit_code if exit_code is None else exit_code)
    gauge("last_tick_timestamp_seconds", "When the last tick ended (Unix time)", finished)
    gauge("last_tick_duration_seconds", "How long the last tick took", finished - started)
    gauge("last_tick_exit_code", "The last tick's exit code (0 fine, 1 needs a person, "
          "2 bad input only, 3 configuration or OMI unreachable)", exit_code)  # fmt: skip
    success = finished if exit_code == 0 else _previous_success(path, job)
    if success is not None:
        gauge("last_success_timestamp_seconds", "When a tick last ended with exit code 0",
              success)  # fmt: skip
    batches = Gauge(f"{PREFIX}_job_last_tick_batches", "Batches the last tick created, left "
                    "waiting for review, executed, archived", ["job", "outcome"],
                    registry=registry)  # fmt: skip
    for outcome in TICK_OUTCOMES:
        batches.labels(job=job, outcome=outcome).set(len(getattr(result, outcome, []) or []))
    gauge("last_tick_files_rejected", "Input files the last tick rejected",
          len(result.rejected or []))  # fmt: skip
    gauge("last_tick_problems", "Problems the last tick reported (failed or unconfirmed "
          "rows, steps that failed)", len(result.problems or []))  # fmt: skip
    if notifications_pending is not None:
        gauge("notifications_pending", "Notifications waiting in the outbox for a retry",
              notifications_pending)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    return path


def _previous_success(path: Path, job: str) -> float | None:
    """The last success time the previous textfile gave for ``job``, if any."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text(encoding="utf-8")
        for family in text_string_to_metric_families(text):
            if family.name == f"{PREFIX}_job_last_success_timestamp_seconds":
                for sample in family.samples:
                    if sample.labels.get("job") == job:
                        return float(sample.value)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return None


__all__ = ["METRICS_PATH", "Metrics", "make_metrics", "write_tick_metrics"]

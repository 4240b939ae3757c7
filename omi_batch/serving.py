"""Serving a WSGI app on waitress, the one way the webhook receiver and the simulator both use:
``start`` serves in a background thread (a ``Running`` handle: ``url``, ``stop()``), ``serve``
until SIGTERM or Ctrl-C. A stop stops accepting, finishes the requests in flight (up to
``grace`` s), then closes.

The app may have ``start()`` (called once the port is bound, before the first request: the
receiver drains its spool there) and ``close()`` (called after the last request); ``on_stop``
is called as soon as a stop is asked, before the requests in flight are waited for (the
simulator wakes its answers sleeping on latency faults there).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from omi_batch.errors import ConfigError, OmiBatchError

# Set deliberately (issue 12): OMI's callback is one small request answered in under 2 s, so an
# idle or slow connection is dropped after CHANNEL_TIMEOUT s (checked every CLEANUP_INTERVAL s),
# and up to CONNECTION_LIMIT are open at once (1,100 slow ones used to fill waitress's 1,000 and
# time out a real callback), within the process's file limit.
CHANNEL_TIMEOUT = 10
CLEANUP_INTERVAL = 2
CONNECTION_LIMIT = 4000
MAX_HEADER_SIZE = 262144  # bytes of headers waitress reads at most; the app counts 431s under it


class _QuietQueueLog:
    """waitress warns for every request that waits for a worker; here a short wait is normal
    (the ledger takes one writer at a time), so that is said at DEBUG."""

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)

    def warning(self, message: str, *args: Any) -> None:
        self._log.debug(message, *args)


_CHANNEL: type | None = None


def _channel_class() -> type:
    """waitress's HTTPChannel, but not asking poll() to say the socket is writable while a
    worker thread holds the channel's output lock to send its own answer.

    waitress's I/O thread polls a channel for writing as soon as its output buffer holds
    bytes; a worker that has just put its answer there and is sending it holds the lock, so
    the I/O thread can do nothing but poll again, at once: it spins, holding the GIL that the
    worker needs to finish. Under a burst of answers (a group commit answers several callbacks
    at once) that spin ate most of a CPU and made the receiver 3x slower (issue 6). The worker
    pulls the trigger when it leaves bytes unsent and at the end of every task, so the I/O
    thread still flushes whatever is left, and a worker waiting for room in the buffer has
    released the lock, so it is never left waiting."""
    global _CHANNEL
    if _CHANNEL is None:
        from waitress.channel import HTTPChannel

        class _Channel(HTTPChannel):
            def writable(self) -> bool:
                if self.requests and not (self.will_close or self.close_when_flushed):
                    if not self.outbuf_lock.acquire(False):  # a worker is sending its answer
                        return False
                    self.outbuf_lock.release()
                return bool(super().writable())

        _CHANNEL = _Channel
    return _CHANNEL


def _connection_limit() -> int:
    """:data:`CONNECTION_LIMIT`, within the open-file limit (raised to its hard ceiling first,
    up to 8192): each connection is one file descriptor, and the ledger needs a few more."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return CONNECTION_LIMIT
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(8192, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return CONNECTION_LIMIT
    return max(64, min(CONNECTION_LIMIT, soft - 128))


class Server:
    """A listening waitress server we drive ourselves, so that a stop finishes requests in
    flight. Made by :func:`create_server`."""

    def __init__(
        self,
        app: Callable,
        host: str,
        port: int,
        *,
        threads: int,
        ident: str,
        log_name: str,
        refuse: type[OmiBatchError],
        on_stop: Callable[[], None] | None,
    ):
        from waitress.server import BaseWSGIServer, create_server

        # waitress's own body cap only guards memory; an app that says its ``max_body`` answers
        # 413 (and records it) past that, so the cap is set well above it (1 MiB at least).
        body_cap = max(1 << 20, 4 * (getattr(app, "max_body", None) or 0))
        try:
            server = create_server(
                app,
                host=host,
                port=port,
                threads=threads,
                ident=ident,
                connection_limit=_connection_limit(),
                channel_timeout=CHANNEL_TIMEOUT,
                cleanup_interval=CLEANUP_INTERVAL,
                max_request_header_size=MAX_HEADER_SIZE,
                max_request_body_size=body_cap,
                asyncore_use_poll=True,
                expose_tracebacks=False,
            )
        except (OSError, ValueError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise refuse(f"cannot listen on {host}:{port}: {reason}") from None
        self.app = app
        self.on_stop = on_stop
        start_app = getattr(app, "start", None)
        if callable(start_app):  # the receiver's writer drains its spool before serving
            start_app()
        self.map: dict = getattr(server, "map", None) or server._map
        self.listeners = [s for s in self.map.values() if isinstance(s, BaseWSGIServer)]
        for listener in self.listeners:
            listener.channel_class = _channel_class()
        first = self.listeners[0]
        self.dispatcher = first.task_dispatcher
        self.dispatcher.queue_logger = _QuietQueueLog(log_name + ".queue")
        self.host = str(first.effective_host)
        self.port = int(first.effective_port)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}"

    def run(self, stop: threading.Event, grace: float) -> None:
        """Serve until ``stop`` is set, then finish what is in flight (up to ``grace`` s)."""
        from waitress import wasyncore

        try:
            while not stop.is_set():
                wasyncore.loop(timeout=0.2, map=self.map, use_poll=True, count=1)
            self._stopping()
            self._drain(grace)
        finally:
            self.close(grace)

    def _stopping(self) -> None:
        """Call ``on_stop`` once, as soon as the server stops serving."""
        on_stop, self.on_stop = self.on_stop, None
        if on_stop is not None:
            on_stop()

    def wake(self) -> None:
        for listener in self.listeners:
            try:
                listener.pull_trigger()
            except OSError:
                pass

    def _busy(self) -> bool:
        if self.dispatcher.queue:
            return True
        for listener in self.listeners:
            for channel in list(listener.active_channels.values()):
                if channel.requests or channel.total_outbufs_len or channel.request is not None:
                    return True
        return False

    def _drain(self, grace: float) -> None:
        from waitress import wasyncore

        for listener in self.listeners:  # stop accepting; keep the trigger for the loop
            wasyncore.dispatcher.close(listener)
        deadline = time.monotonic() + grace
        while self._busy() and time.monotonic() < deadline:
            wasyncore.loop(timeout=0.05, map=self.map, use_poll=True, count=1)

    def close(self, grace: float) -> None:
        from waitress import wasyncore

        self._stopping()
        for listener in self.listeners:
            try:
                listener.close()
            except OSError:
                pass
        wasyncore.close_all(self.map)
        self.dispatcher.shutdown(timeout=grace)
        close_app = getattr(self.app, "close", None)
        if callable(close_app):  # let the app's work still running (ledger writes) finish
            close_app()


def create_server(
    app: Callable,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    threads: int = 16,
    ident: str = "omi-batch",
    log_name: str = "omi_batch.serving",
    refuse: type[OmiBatchError] = ConfigError,
    on_stop: Callable[[], None] | None = None,
) -> Server:
    """A server for ``app`` listening on ``host:port`` (0: any free port), not yet serving; a
    port that cannot be had raises ``refuse`` ("cannot listen on HOST:PORT: why")."""
    return Server(app, host, port, threads=threads, ident=ident, log_name=log_name,
                  refuse=refuse, on_stop=on_stop)  # fmt: skip


class Running:
    """A server serving in a background thread: ``.url``, ``.stop()``; a context manager."""

    def __init__(self, server: Server, grace: float):
        self._server = server
        self._stop = threading.Event()
        self._grace = grace
        self.host = server.host
        self.port = server.port
        self.url = server.url
        self._thread = threading.Thread(
            target=server.run, args=(self._stop, grace), name="omi-batch-serving", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"Running(url={self.url!r})"

    def stop(self) -> None:
        """Stop accepting, finish requests in flight, then close. Safe to call twice."""
        self._stop.set()
        self._server.wake()
        self._thread.join(self._grace + 10)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(server: Server, *, grace: float = 10.0) -> Running:
    """Serve ``server`` in a background thread; its port is already bound."""
    return Running(server, grace)


def serve(
    server: Server, *, ready: Callable[[str], None] | None = None, grace: float = 10.0
) -> None:
    """Serve ``server`` until SIGTERM or Ctrl-C, then finish requests in flight and return.

    ``ready(url)`` is called once the port is bound. A second signal stops at once.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)
    try:
        if ready is not None:
            try:
                ready(server.url)
            except BaseException:
                server.close(grace)
                raise
        server.run(stop, grace)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

"""Serving the simulator with waitress: in a daemon thread (tests, demos) or blocking (the CLI)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from omi_batch.errors import UsageError
from omi_batch.simulator.app import make_app
from omi_batch.simulator.core import Simulator


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _create(sim: Simulator, host: str, port: int, threads: int):
    """A listening waitress server and its URL; a port already taken is a usage error."""
    from waitress.server import create_server

    try:
        server = create_server(
            make_app(sim),
            host=host,
            port=port,
            threads=threads,
            ident="omi-simulator",
            asyncore_loop_timeout=1,
            connection_limit=max(100, threads * 4),
            channel_timeout=60,
        )
    except OSError as error:
        raise UsageError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    if hasattr(server, "effective_port"):
        return server, _url(server.effective_host, server.effective_port)
    listen_host, listen_port = server.effective_listen[0]  # several sockets: name the first
    return server, _url(listen_host, listen_port)


def _socket_map(server) -> dict:
    return getattr(server, "_map", None) or server.map


def _close_from_loop(server) -> None:
    """Ask waitress's own loop thread to close every socket, so its loop ends by itself."""
    from waitress import trigger, wasyncore

    socket_map = _socket_map(server)
    pull = next((d for d in list(socket_map.values()) if isinstance(d, trigger.trigger)), None)
    if pull is None:
        return
    try:
        pull.pull_trigger(lambda: wasyncore.close_all(socket_map, ignore_all=True))
    except OSError:  # the trigger is already closed: the loop has ended
        pass


class Running:
    """A simulator served in a daemon thread: ``url``, and ``stop()`` (idempotent)."""

    def __init__(self, sim: Simulator, server, url: str):
        self.sim = sim
        self.url = url
        self._server = server
        self._stopped = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="omi-simulator", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"Running(url={self.url!r}, stopped={self._stopped})"

    def _run(self) -> None:
        try:
            self._server.run()
        except OSError:  # sockets closed under the loop while stopping
            if not self._stopped:
                raise

    def stop(self) -> None:
        """Stop answering, end the worker threads and the callback worker."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self.sim.close()  # wakes answers sleeping on latency/slow faults first
        _close_from_loop(self._server)
        self._thread.join(timeout=5)
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(sim: Simulator, host: str = "127.0.0.1", port: int = 0, *, threads: int = 32) -> Running:
    """Serve ``sim`` in a daemon thread; returns once the port is listening."""
    server, url = _create(sim, host, port, max(32, threads))
    sim._stopping.clear()
    return Running(sim, server, url)


def serve(
    sim: Simulator,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ready: Callable[[str], None] | None = None,
    threads: int = 32,
) -> None:
    """Serve ``sim`` until KeyboardInterrupt (the CLI maps SIGTERM to it); calls
    ``ready(url)`` once listening."""
    server, url = _create(sim, host, port, max(32, threads))
    sim._stopping.clear()
    try:
        if ready:
            ready(url)
        server.run()  # waitress returns on KeyboardInterrupt/SystemExit
    except KeyboardInterrupt:
        pass
    finally:
        from waitress import wasyncore

        sim.close()
        wasyncore.close_all(_socket_map(server), ignore_all=True)
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)

"""Serving the simulator: in the foreground (``batcher simulate``), on a background thread
(tests), or as a subprocess (benchmarks, which must not share their GIL with the server).

Uvicorn picks httptools and uvloop when they are installed (``uvicorn[standard]``); the
connections the fault injector cuts on purpose are kept out of its log (:class:`QuietDrops`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Final

import uvicorn
from starlette.types import ASGIApp

from batcher.simulator.app import create_app
from batcher.simulator.config import SimConfig
from batcher.simulator.core import Simulator
from batcher.simulator.faults import QuietDrops

#: Seconds a stopping server waits for requests in flight (a stalled one) before cancelling them.
_GRACEFUL_S: Final = 2  # whole seconds: uvicorn's setting is an int
_START_TIMEOUT_S: Final = 10.0
#: The line ``batcher simulate`` prints once it listens; ``start_subprocess`` reads it back.
_URL_LINE: Final = re.compile(r"simulator listening on (http://\S+)")


class SimulatorStartError(RuntimeError):
    """The simulator did not come up (in a thread or a subprocess)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _uvicorn_config(sim: Simulator, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn_config(create_app(sim), host, port, log_level)


def uvicorn_config(app: ASGIApp, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    """How the simulator is served (also what a benchmark's baseline app must be served with)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        # The simulator serves many concurrent clients; keep idle connections for reuse.
        timeout_keep_alive=30,
        backlog=2048,
        lifespan="off",
        timeout_graceful_shutdown=_GRACEFUL_S,
    )
    _quiet_drops()  # after Config, which (re)configures uvicorn's loggers
    return config


def _quiet_drops() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, QuietDrops) for f in logger.filters):
        logger.addFilter(QuietDrops())


def announce_line(base_url: str) -> str:
    """What ``batcher simulate`` prints once it listens (one line, parsed by start_subprocess)."""
    return f"simulator listening on {base_url}  (ANTHROPIC_BASE_URL={base_url}; Ctrl-C stops)"


def serve_forever(
    config: SimConfig, host: str = "127.0.0.1", port: int = 0, on_ready: Callable[[str], None] | None = None
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (uvicorn handles both, then returns);
    ``on_ready(base_url)`` is called once it listens."""
    sim = Simulator(config)
    try:
        serve_app_forever(create_app(sim), host, port, on_ready)
    finally:
        sim.close()


def serve_app_forever(
    app: ASGIApp, host: str = "127.0.0.1", port: int = 0, on_ready: Callable[[str], None] | None = None
) -> None:
    """Serve any ASGI app the way the simulator is served (a benchmark's baseline uses this)."""
    port = port or free_port(host)
    server = uvicorn.Server(uvicorn_config(app, host, port, "warning"))
    if on_ready is not None:
        threading.Thread(target=_announce, args=(server, host, port, on_ready), daemon=True).start()
    with _exit_quietly_on_signals(server):
        server.run()


def _announce(server: uvicorn.Server, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.01)
    on_ready(f"http://{host}:{port}")


@contextlib.contextmanager
def _exit_quietly_on_signals(server: uvicorn.Server) -> Iterator[None]:
    """Make SIGINT/SIGTERM a clean stop with exit code 0.

    Uvicorn handles both while it runs, then raises the signal again once it has shut down, which
    the default handlers turn into a KeyboardInterrupt traceback or death by SIGTERM. The handlers
    installed here are the ones it restores and re-raises into: they only ask the server to stop
    (also covering a signal that arrives before uvicorn installs its own).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class RunningSimulator:
    """A simulator serving on a background thread of this process."""

    base_url: str
    sim: Simulator
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=_GRACEFUL_S + 5)
        self.sim.close()


def start_in_thread(config: SimConfig | None = None, host: str = "127.0.0.1") -> RunningSimulator:
    """Start a simulator on a free loopback port in a daemon thread; returns once it listens."""
    sim = Simulator(config or SimConfig())
    port = free_port(host)
    server = uvicorn.Server(_uvicorn_config(sim, host, port, "error"))
    thread = threading.Thread(target=server.run, name="batcher-simulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SimulatorStartError("the simulator did not start")
        time.sleep(0.005)
    return RunningSimulator(f"http://{host}:{port}", sim, server, thread)


@contextlib.contextmanager
def running(config: SimConfig | None = None) -> Iterator[RunningSimulator]:
    """A simulator on a background thread for the duration of a ``with`` block."""
    handle = start_in_thread(config)
    try:
        yield handle
    finally:
        handle.stop()


# --- as a subprocess -----------------------------------------------------------------------------


def start_subprocess(
    args: Sequence[str] = (), *, timeout_s: float = _START_TIMEOUT_S, command: Sequence[str] | None = None
) -> tuple[str, subprocess.Popen[str]]:
    """Run ``batcher simulate ARGS`` in a child process; returns (base URL, process) once it
    listens. Stop it with :func:`stop_subprocess` (SIGINT, as Ctrl-C would).

    ``command`` runs something else that prints :func:`announce_line` once it listens (a
    benchmark's baseline server).
    """
    cmd = [*(command or (sys.executable, "-m", "batcher.cli", "simulate")), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    try:
        url = _read_url(proc, proc.stdout, timeout_s)
    except BaseException:
        stop_subprocess(proc)
        raise
    # The child keeps writing; drain its pipes so it can never block on a full one.
    for stream in (proc.stdout, proc.stderr):
        threading.Thread(target=_drain, args=(stream,), daemon=True).start()
    return url, proc


def _read_url(proc: subprocess.Popen[str], stdout: IO[str], timeout_s: float) -> str:
    found: list[str] = []

    def read() -> None:
        for line in stdout:
            match = _URL_LINE.search(line)
            if match:
                found.append(match.group(1))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if found:
        return found[0]
    stderr = ""
    if proc.poll() is not None and proc.stderr is not None:
        stderr = proc.stderr.read()
    args = proc.args
    what = " ".join(str(a) for a in (args[1:4] if isinstance(args, list | tuple) else [args]))
    raise SimulatorStartError(
        f"`{what}` did not print its URL within {timeout_s:g} s "
        f"(exit code {proc.poll()}): {stderr.strip()[-2000:]}"
    )


def _drain(stream: IO[str] | None) -> None:
    if stream is not None:
        for _ in stream:
            pass


def stop_subprocess(proc: subprocess.Popen[str], timeout_s: float = 10.0) -> int:
    """Stop a simulator subprocess as Ctrl-C would (SIGINT), killing it if it will not end;
    returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()

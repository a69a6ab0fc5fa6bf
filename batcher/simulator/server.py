"""Serving the simulator: in the foreground (``batcher simulate``) or on a background thread."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from batcher.simulator.app import create_app
from batcher.simulator.config import SimConfig
from batcher.simulator.core import Simulator


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _uvicorn_config(sim: Simulator, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(sim),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        # The simulator serves many concurrent clients; keep idle connections for reuse.
        timeout_keep_alive=30,
        backlog=2048,
        lifespan="off",
    )


def serve_forever(config: SimConfig, host: str = "127.0.0.1", port: int = 0,
                  on_ready: callable | None = None) -> None:  # type: ignore[valid-type]
    """Run until interrupted (Ctrl-C); ``on_ready(base_url)`` once it listens."""
    port = port or free_port(host)
    sim = Simulator(config)
    server = uvicorn.Server(_uvicorn_config(sim, host, port, "warning"))
    if on_ready is not None:
        threading.Thread(target=_announce, args=(server, host, port, on_ready), daemon=True).start()
    server.run()


def _announce(server: uvicorn.Server, host: str, port: int, on_ready) -> None:  # type: ignore[no-untyped-def]
    while not server.started:
        time.sleep(0.01)
    on_ready(f"http://{host}:{port}")


@dataclass
class RunningSimulator:
    base_url: str
    sim: Simulator
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_in_thread(config: SimConfig | None = None, host: str = "127.0.0.1") -> RunningSimulator:
    """Start a simulator on a free loopback port in a daemon thread; returns once it listens."""
    sim = Simulator(config or SimConfig())
    port = free_port(host)
    server = uvicorn.Server(_uvicorn_config(sim, host, port, "error"))
    thread = threading.Thread(target=server.run, name="batcher-simulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the simulator did not start")
        time.sleep(0.005)
    return RunningSimulator(f"http://{host}:{port}", sim, server, thread)


@contextlib.contextmanager
def running(config: SimConfig | None = None) -> Iterator[RunningSimulator]:
    handle = start_in_thread(config)
    try:
        yield handle
    finally:
        handle.stop()


# Uvicorn logs every dropped connection the fault injector causes; that is the point, not news.
logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)

"""Run the daemon's serve() in a background thread, for tests; helpers for real daemon processes."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import func, select

from mailgate.app import App
from mailgate.daemon import Running, serve


@contextmanager
def running_daemon(app: App) -> Iterator[Running]:
    stop = threading.Event()
    ready = threading.Event()
    holder: dict[str, Running] = {}
    failure: list[BaseException] = []

    def on_ready(running: Running) -> None:
        holder["running"] = running
        ready.set()

    def main() -> None:
        try:
            serve(app, stop, on_ready)
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=main, name="daemon-under-test", daemon=True)
    thread.start()
    assert ready.wait(15), "daemon did not start"
    if failure:
        raise failure[0]
    try:
        yield holder["running"]
    finally:
        stop.set()
        thread.join(15)
        assert not thread.is_alive(), "daemon did not stop within 15 s"
    if failure:  # serve() failed after it was ready, or while it stopped
        raise failure[0]


def wait_for(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.02) -> object:
    """Poll `condition` until it is truthy; fail with a clear message at the deadline. The
    default deadline claims no latency: it only ends a wait for what never comes (four test
    processes on two cores can take seconds). A test that claims a latency passes its own."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 20) -> None:
    """Until a daemon started as a real process accepts connections on `port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "daemon exited before listening"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("daemon did not start listening")


def count_rows(app: App, model: type) -> int:
    """How many rows of `model` the database holds, read the way a daemon test polls: in a
    reading session, which never waits for the running daemon's writes (on SQLite a writing
    session would queue behind its ingest for the lock)."""
    with app.read_sessions() as s:
        return s.scalar(select(func.count()).select_from(model))

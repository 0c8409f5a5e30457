"""A real ``redis-server`` on a free loopback port, for the Redis adapter's tests.

``redis_server`` (module scope) starts one with no persistence and stops it
after the module; ``RedisServer.kill()`` / ``.start()`` SIGKILL it and start it
again on the same port. Without the binary the tests that use it are skipped
(``test_redis.py``, with one line saying why: ``scripts/test`` installs it on
Debian as root) or left out (``test_pubsub.py``'s "redis" variant).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Iterator

import pytest

def _binary() -> str | None:
    """``$HERMES_TEST_REDIS_SERVER`` if set (a path; one that does not exist: none), else the one on PATH."""
    chosen = os.environ.get("HERMES_TEST_REDIS_SERVER")
    if chosen is not None:
        return chosen if os.path.isfile(chosen) else None
    return shutil.which("redis-server") or next((p for p in ("/usr/bin/redis-server",) if os.path.exists(p)), None)


BINARY = _binary()
MISSING = "redis-server is not installed: the Redis adapter tests are skipped (scripts/test installs it)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        assert BINARY is not None
        self.proc = subprocess.Popen([BINARY, "--save", "", "--appendonly", "no", "--port", str(self.port),
                                      "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def started_redis() -> Iterator[RedisServer]:
    if BINARY is None:
        pytest.skip(MISSING)
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from started_redis()

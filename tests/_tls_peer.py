"""The far node of tests/test_tls.py and tests/test_fuzz.py: a node process whose first actor
answers calls and echoes what is published to it (imported by name by that process)."""
from __future__ import annotations

from typing import Any

import hermes

TOPIC = "tls-relay-topic"


class Echo(hermes.Actor):
    """Registered as "echo": a call returns ("echo", request); a publish of
    ("published", pid, payload) on TOPIC is answered with ("got", payload) to pid."""

    def __init__(self) -> None:
        hermes.register("echo")
        hermes.subscribe(TOPIC)

    def handle_call(self, request: Any, sender: Any) -> Any:
        return ("echo", request)

    def handle_info(self, msg: Any) -> None:
        if type(msg) is tuple and len(msg) == 3 and msg[0] == "published":
            hermes.send(msg[1], ("got", msg[2]))


# -- for the tests: the far node as an OS process, and a recording relay ----------------

import contextlib  # noqa: E402  (the node process needs only the actor above)
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
COOKIE = "tls-test-cookie"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tls_flags(tls: Any) -> list[str]:
    return [] if tls is None else ["--tls-cert", tls.certfile, "--tls-key", tls.keyfile, "--tls-ca", tls.cafile]


@contextlib.contextmanager
def peer_node(name: str, port: int, tls: Any, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m hermes node`` running ``Echo``, listening on ``port``; killed on exit, whatever happens."""
    env = {**os.environ, "HERMES_COOKIE": COOKIE, "PYTHONUNBUFFERED": "1"}
    for part in ("CERT", "KEY", "CA"):
        env.pop(f"HERMES_TLS_{part}", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), str(ROOT), env.get("PYTHONPATH")) if p)
    args = [sys.executable, "-m", "hermes", "node", "--name", name, "--port", str(port), "--app", "_tls_peer:Echo",
            *tls_flags(tls)]
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until something accepts on ``port`` (the probe connection is closed at once, unused)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the peer node exited with code {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on port {port} after {timeout}s") from None
            time.sleep(0.05)


class Relay:
    """A TCP relay on 127.0.0.1 to ``target`` that records every byte it forwards, both ways."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.recorded = bytearray()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self.recorded += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def data(self) -> bytes:
        with self._lock:
            return bytes(self.recorded)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

"""examples/chat: real uvicorn processes (2 workers under one server; 2
separate servers), each worker a Hermes node of a test pg service, and real
websocket clients. Every client gets every message exactly once, in order per
sender; SIGTERM stops the servers, their nodes leave the service, and no
process is left behind."""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
websockets = pytest.importorskip("websockets")

from hermes.pg.service import ServiceConnection, free_port, start_service_process  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = 30  # per client


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def poll(fn: Any, timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


class Servers:
    """A pg service and uvicorn servers of examples.chat.app; stopped at the end, whatever happens."""

    def __init__(self, tmp: Path) -> None:
        self.cookie = secrets.token_urlsafe(24)
        self.service_port = free_port()
        self.service = start_service_process("127.0.0.1", self.service_port, self.cookie.encode(),
                                             log_path=tmp / "service.log")
        self.tmp = tmp
        self.servers: list[tuple[subprocess.Popen[bytes], int]] = []
        self.workers: list[int] = []  # every child of every server (workers, multiprocessing helpers)
        self.nodes = 0  # one per worker

    def start(self, workers: int) -> int:
        port = free_port()
        env = {**os.environ, "HERMES_CLUSTER": f"127.0.0.1:{self.service_port}", "HERMES_COOKIE": self.cookie,
               "PYTHONPATH": str(ROOT)}
        log = open(self.tmp / f"uvicorn-{port}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "examples.chat.app:app", "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", str(workers)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        self.servers.append((proc, port))
        self.nodes += workers
        poll(lambda: self._page(port), timeout=60)
        if workers > 1:
            self.workers += poll(lambda: (lambda c: c if len(c) >= workers else None)(children_of(proc.pid)), 30)
        return port

    def _page(self, port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
                return answer.status == 200 and b"Hermes chat" in answer.read()
        except OSError:
            return False

    def listed_nodes(self) -> dict[str, Any]:
        conn = ServiceConnection(("127.0.0.1", self.service_port), self.cookie.encode(), timeout=5.0)
        try:
            return conn.call("nodes")  # type: ignore[no-any-return]
        finally:
            conn.close()

    def stop(self) -> None:
        for proc, _ in self.servers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for pid in self.workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.service.kill()
        self.service.wait(10)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    found = Servers(tmp_path)
    try:
        yield found
    finally:
        found.stop()


async def connect_clients(ports: list[int], nodes_wanted: int, per_node: int) -> list[tuple[Any, str]]:
    """Websocket clients until ``per_node`` are on each of ``nodes_wanted`` nodes (workers share a port,
    so which worker takes a client is the kernel's choice); extras are closed."""
    by_node: dict[str, list[Any]] = {}
    extra = []
    deadline = time.monotonic() + 60
    i = 0
    while len(by_node) < nodes_wanted or any(len(c) < per_node for c in by_node.values()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"clients only reached {sorted(by_node)}")
        port = ports[i % len(ports)]
        i += 1
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws?user=c{i}&peers={nodes_wanted - 1}")
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 40))
        group = by_node.setdefault(welcome["welcome"], [])
        (group if len(group) < per_node else extra).append(ws)
    for ws in extra:
        await ws.close()
    return [(ws, node) for node, group in by_node.items() for ws in group]


async def chat_round(ports: list[int], nodes_wanted: int) -> None:
    clients = await connect_clients(ports, nodes_wanted, per_node=2)
    try:
        senders = [f"s{k}" for k in range(len(clients))]
        for (ws, _), sender in zip(clients, senders):
            for n in range(MESSAGES):
                await ws.send(f"{sender}:{n}")
        expected = len(clients) * MESSAGES
        for ws, node in clients:
            got = []
            while len(got) < expected:
                got.append(json.loads(await asyncio.wait_for(ws.recv(), 30))["text"])
            with pytest.raises(TimeoutError):  # and nothing more: exactly once
                await asyncio.wait_for(ws.recv(), 0.5)
            for sender in senders:
                mine = [text for text in got if text.split(":")[0] == sender]
                assert mine == [f"{sender}:{n}" for n in range(MESSAGES)], (node, sender)
    finally:
        for ws, _ in clients:
            await ws.close()


def sigterm_and_check(servers: Servers) -> None:
    workers_of = {port: servers.nodes // len(servers.servers) for _, port in servers.servers}
    for proc, _ in servers.servers:
        proc.send_signal(signal.SIGTERM)
    for proc, port in servers.servers:
        # uvicorn re-raises the signal it handled once it has shut down: -SIGTERM is its clean exit
        assert proc.wait(30) in (0, -signal.SIGTERM)
        log = (servers.tmp / f"uvicorn-{port}.log").read_text(errors="replace")
        assert log.count("Application shutdown complete") == (workers_of[port]), log
        assert "Traceback" not in log, log
    poll(lambda: not any(alive(pid) for pid in servers.workers), timeout=30)
    assert servers.listed_nodes() == {}  # every node unregistered at once: a clean stop, not a lease expiry


@pytest.mark.timeout(240)
def test_two_workers_under_one_server(servers):
    port = servers.start(workers=2)
    asyncio.run(chat_round([port], nodes_wanted=2))
    assert len(servers.listed_nodes()) == 2
    sigterm_and_check(servers)


@pytest.mark.timeout(240)
def test_two_separate_servers(servers):
    ports = [servers.start(workers=1), servers.start(workers=1)]
    asyncio.run(chat_round(ports, nodes_wanted=2))
    sigterm_and_check(servers)

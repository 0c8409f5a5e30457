"""Static discovery (``--peers``) with no pg service: nodes find each other by
address, exchange memberships over the mesh (as Erlang's pg does), publish
across, and find each other again after a restart.

The nodes are real OS processes (``python -m hermes node``); the test drives
them from a hidden node in this process. Every wait polls with a deadline.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import cloudpickle
import pytest

import hermes
from _cluster import poll
from conftest import wait_until
from hermes import pubsub
from hermes.demo import Client

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the nodes cannot import this module

ROOT = str(Path(__file__).resolve().parents[1])
COOKIE = "static-peers-test-cookie"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StaticPair:
    """Two nodes, each told the other's address and nothing else."""

    def __init__(self, tmp: Path) -> None:
        self.ports = {"sa": free_port(), "sb": free_port()}
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        other = "sb" if name == "sa" else "sa"
        env = {**os.environ, "HERMES_COOKIE": COOKIE,
               "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
        with open(self.tmp / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "hermes", "node", "--name", name, "--port", str(self.ports[name]),
                 "--peers", f"127.0.0.1:{self.ports[other]}", "--tick-interval", "0.2"],
                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)

    def output(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[StaticPair]:
    nodes = StaticPair(tmp_path)
    try:
        nodes.start("sa")
        nodes.start("sb")
        yield nodes
    finally:
        nodes.stop()


def full(name: str) -> str:
    return hermes._app.full_name(name)


def view() -> tuple[list[str], list[str]]:
    """On a node: the nodes of the default PubSub's group it sees, and its peers."""
    members = hermes.pg.get_members(pubsub.group_of(pubsub.DEFAULT))
    return sorted(pid.node for pid in members), sorted(hermes.nodes())


def start_client(topic: str) -> Any:
    return hermes.spawn(Client, topic)


def drive(pair: StaticPair, main: Any) -> Any:
    """Run ``main(dist)`` on a hidden node of this process that knows both addresses."""

    async def driver() -> Any:
        from hermes.runtime import lowlevel

        dist = lowlevel.current_node().dist
        for name, port in pair.ports.items():
            dist.addresses[full(name)] = ("127.0.0.1", port)
        return await main()

    return hermes.run(driver, name=f"driver{os.getpid()}", cookie=COOKIE, hidden=True)


async def remote(name: str, fn: Any, *args: Any) -> Any:
    """``rpc`` of a helper of this module (the lambda makes cloudpickle ship it by value)."""
    return await hermes.rpc(name, lambda *a: fn(*a), *args, timeout=5.0)


async def mesh_view(name: str) -> Any:
    if not await hermes.connect(full(name)):
        return None
    return await remote(full(name), view)


@pytest.mark.timeout(60)
def test_static_peers_form_a_cluster_with_groups_and_pubsub_over_the_mesh(pair: StaticPair) -> None:
    both = sorted([full("sa"), full("sb")])

    async def main() -> None:
        await wait_until(lambda: mesh_view("sa"), timeout=20)
        for name in ("sa", "sb"):
            await wait_until(lambda name=name: _is_whole(mesh_view(name), both), timeout=20)
        client = await remote(full("sb"), start_client, "static.topic")
        await wait_until(lambda: _has_subscriber(full("sb")), timeout=10)
        await hermes.rpc(full("sa"), hermes.publish, "static.topic", {"via": "mesh"})
        assert client.node == full("sb")

    drive(pair, main)
    poll(lambda: "received: {'via': 'mesh'}" in pair.output("sb"))
    assert "received" not in pair.output("sa")


@pytest.mark.timeout(60)
def test_a_restarted_static_peer_is_found_again_with_its_new_members(pair: StaticPair) -> None:
    both = sorted([full("sa"), full("sb")])

    async def whole() -> None:
        for name in ("sa", "sb"):
            await wait_until(lambda name=name: _is_whole(mesh_view(name), both), timeout=20)

    drive(pair, whole)
    pair.kill("sb")

    async def alone() -> None:
        await wait_until(lambda: _is_whole(mesh_view("sa"), [full("sa")]), timeout=10)

    drive(pair, alone)  # sb's PGServer left sa's view with its connection
    pair.start("sb")
    drive(pair, whole)  # sa keeps dialing its static peer: the new sb is back, with its members


async def _is_whole(view_coro: Any, expected: list[str]) -> bool:
    found = await view_coro
    if found is None:
        return False
    members, peers = found
    return bool(members == expected and sorted(set(peers) | set(members)) == expected)


async def _has_subscriber(name: str) -> bool:
    return bool(await hermes.rpc(name, pubsub.subscribers, "static.topic"))

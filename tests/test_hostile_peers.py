"""Hostile and broken peers: wrong cookies, garbage and malformed frames,
oversized frames; the node under attack keeps serving its other links.

Fixtures and the actors shipped to the nodes live in ``_mesh_support``.
"""

import os
import pickle
import socket
import struct
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import hermes
from hermes.transport._handshake import MAGIC, Handshake, PeerInfo

from conftest import wait_until

HERE = str(Path(__file__).resolve().parent)
HEADER = struct.Struct(">I")

# `cluster` (and `make_cluster`) are pytest fixtures, imported so that the tests can ask for them by name
from _mesh_support import cluster, run_here, on, _dist, learn, expect, HEADER, _lacks


# -- hostile and broken peers ------------------------------------------------------------


class Evil:
    """Unpickling this runs ``touch marker``: a real exploit, were it ever unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True if the peer closes ``sock`` within ``timeout`` seconds (whatever it sends first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def _raw(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=5)


def _still_whole(c: hermes.LocalCluster) -> None:
    for name in c.nodes:
        assert sorted(c.rpc(name, hermes.nodes)) == sorted(set(c.nodes) - {name})
        for other in c.nodes:
            assert c.rpc(name, hermes.rpc, other, hermes.node) == other


@pytest.mark.timeout(60)
def test_garbage_and_malicious_pickles_are_never_executed(cluster, tmp_path):
    target = cluster.nodes[0]
    address = cluster.address(target)
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Evil(str(control))))
    assert control.exists()  # the exploit is real: unpickling it runs a command
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Evil(str(marker)))
    hello = Handshake("connect", PeerInfo("mallory@evil", 1, ("127.0.0.1", 1)), b"guessed").initiate()
    attacks = {
        "random bytes": os.urandom(3000),
        "a pickle, no handshake": _frame(evil),
        "a bare pickle": evil,
        "magic, then a pickle frame": MAGIC + _frame(evil),
        "magic, then a pickle frame as a length": MAGIC + evil,
    }
    for what, data in attacks.items():
        with _raw(address) as sock:
            sock.sendall(data)
            assert _closed_by_peer(sock, 5), what
    # a hello that passes, then a pickle where the proof should be
    with _raw(address) as sock:
        sock.sendall(hello)
        sock.settimeout(5)
        assert sock.recv(4096)  # the challenge
        sock.sendall(_frame(evil) * 3)
        assert _closed_by_peer(sock, 5)
    assert not marker.exists()
    _still_whole(cluster)
    assert not marker.exists()


@pytest.mark.timeout(60)
def test_an_oversized_frame_announcement_closes_only_that_connection(cluster):
    target = cluster.nodes[0]
    target_address = cluster.address(target)
    # before the handshake: refused at once, long before the handshake timeout
    with _raw(target_address) as sock:
        started = time.monotonic()
        sock.sendall(MAGIC + HEADER.pack(2**32 - 1))
        assert _closed_by_peer(sock, 5)
        assert time.monotonic() - started < 2

    async def main():
        learn(target, target_address)
        assert await hermes.connect(target)
        await wait_until(lambda: len(hermes.nodes()) == len(cluster.nodes), timeout=10)
        hermes.monitor_node(target)
        conn = _dist().conns[target]
        conn.send_payload(b"not a pickle")  # undecodable: dropped, the link stays up
        assert await hermes.rpc(target, hermes.node) == target
        assert not await _got(lambda m: isinstance(m, hermes.NodeDown), 0.2)
        conn._transport.write(HEADER.pack(2**31))  # announces 2 GiB, sends nothing more
        down = await expect(lambda m: isinstance(m, hermes.NodeDown), timeout=5)
        others = sorted(hermes.nodes())
        reached = [await hermes.rpc(n, hermes.node) for n in others]  # the other links still work
        await wait_until(lambda: on(cluster, target, _lacks, hermes.node()), timeout=5)
        return down, others, reached

    down, others, reached = run_here(cluster, main)
    assert down == hermes.NodeDown(target)
    assert others == reached == sorted(set(cluster.nodes) - {target})
    log = cluster.output(target)
    assert "failed to unpickle" in log and "announced a frame of 2147483648 bytes" in log
    _still_whole(cluster)


async def _got(match: Callable[[Any], bool], window: float) -> bool:
    try:
        await hermes.receive(match=match, timeout=window)
    except TimeoutError:
        return False
    return True


async def rpc_round_trips(node: str, count: int) -> float:
    """The slowest of ``count`` rpc round trips to ``node``, in seconds."""
    worst = 0.0
    for _ in range(count):
        started = time.perf_counter()
        await hermes.rpc(node, hermes.node)
        worst = max(worst, time.perf_counter() - started)
    return worst


@pytest.mark.timeout(60)
def test_idle_sockets_are_closed_and_do_not_slow_the_others(cluster):
    target, other = cluster.nodes[0], cluster.nodes[1]
    address = cluster.address(target)
    socks = [_raw(address) for _ in range(20)]
    garbage = _raw(address)
    try:
        garbage.sendall(MAGIC[:3])  # a partial magic: then nothing, forever
        opened = time.monotonic()
        assert cluster.rpc(other, rpc_round_trips, target, 50) < 0.5
        assert cluster.rpc(target, rpc_round_trips, other, 50) < 0.5
        for sock in socks + [garbage]:
            assert _closed_by_peer(sock, 15)  # the handshake timeout (5 s by default)
        assert time.monotonic() - opened < 15
    finally:
        for sock in socks + [garbage]:
            sock.close()
    _still_whole(cluster)



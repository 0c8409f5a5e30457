"""The mesh: connecting, mesh completion from one seed, simultaneous connects,
one connection per pair, disconnect and node monitoring, between real node processes.

Fixtures and the actors shipped to the nodes live in ``_mesh_support``.
"""

import asyncio
import struct
from pathlib import Path

import pytest

import hermes
from hermes._app import full_name
from hermes.runtime import lowlevel

from _cluster import poll
from conftest import wait_until

HERE = str(Path(__file__).resolve().parent)
HEADER = struct.Struct(">I")

# `cluster` (and `make_cluster`) are pytest fixtures, imported so that the tests can ask for them by name
from _mesh_support import (cluster, make_cluster, HERE_NAME, run_here, on, learn, own_address,
    learn_and_connect, connection_ends, expect, _lacks, _dist)


# -- mesh ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_every_node_sees_every_other(cluster):
    for name in cluster.nodes:
        others = sorted(set(cluster.nodes) - {name})
        assert cluster.rpc(name, hermes.node) == name
        poll(lambda: sorted(cluster.rpc(name, hermes.nodes)) == others)


@pytest.mark.timeout(60)
def test_a_node_started_later_joins_the_full_mesh(make_cluster):
    c = make_cluster(["x", "y"])
    c.start("z")
    assert len(c.nodes) == 3
    for name in c.nodes:
        others = sorted(set(c.nodes) - {name})
        poll(lambda: sorted(c.rpc(name, hermes.nodes)) == others)
    # and messages flow over every new connection
    for source in c.nodes:
        for target in c.nodes:
            assert c.rpc(source, hermes.rpc, target, hermes.node) == target


@pytest.mark.timeout(60)
def test_connecting_to_one_seed_connects_to_the_whole_mesh(cluster):
    seed = cluster.nodes[0]
    seed_address = cluster.address(seed)

    async def main():
        assert hermes.nodes() == []
        learn(seed, seed_address)  # the only address this node is told
        assert await hermes.connect(seed) is True
        await wait_until(lambda: sorted(hermes.nodes()) == sorted(cluster.nodes), timeout=10)
        me = hermes.node()
        for name in cluster.nodes:
            assert me in await on(cluster, name, hermes.nodes)
            assert await hermes.rpc(name, hermes.node) == name  # each link carries traffic
        return True

    assert run_here(cluster, main) is True


def _established_to(ports: set[int]) -> int:
    """TCP connections on this machine whose remote end is one of ``ports`` (client ends only)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[2].split(":")[1], 16) in ports:  # 01: ESTABLISHED
            count += 1
    return count


async def _connect_by_address(address: tuple[str, int]) -> bool:
    return await _dist().connect_address(tuple(address))  # as static peers are dialled: no name yet


def _node_downs() -> list[str]:
    """NodeDown messages in this process's mailbox (it called ``monitor_nodes``)."""
    return [msg.node for msg in lowlevel.current_process().mailbox if isinstance(msg, hermes.NodeDown)]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("by", ["name", "address"])
def test_simultaneous_connect_ends_with_one_connection(make_cluster, by):
    c = make_cluster(["solo"])  # alone: no mesh around it to reconnect behind the test's back
    (peer,) = c.nodes
    peer_address = c.address(peer)

    async def main():
        me, mine = hermes.node(), own_address()
        ports = {mine[1], peer_address[1]}
        learn(peer, peer_address)
        hermes.monitor_nodes()
        outcomes = []
        for _ in range(10):
            if by == "name":
                both = hermes.connect(peer), on(c, peer, learn_and_connect, me, mine)
            else:
                both = _connect_by_address(peer_address), on(c, peer, _connect_by_address, mine)
            ours, theirs = await asyncio.gather(*both)
            await wait_until(lambda: _established_to(ports) == 1)  # the loser's socket is gone
            here = connection_ends(peer)
            there = await on(c, peer, connection_ends, me)
            outcomes.append((ours, theirs, here, there, _node_downs()))
            assert hermes.disconnect(peer) is True  # start the next round unconnected
            await wait_until(lambda: on(c, peer, _lacks, me))
            await wait_until(lambda: _established_to(ports) == 0)
            await hermes.receive(lambda m: isinstance(m, hermes.NodeDown), timeout=10)  # the disconnect's own
        return outcomes

    for ours, theirs, here, there, downs in run_here(c, main):
        assert ours is True and theirs is True
        assert here is not None and there is not None
        assert here == (there[1], there[0])  # both ends of the same socket
        assert downs == []  # no flap: the loser was never up, or went down unseen


@pytest.mark.timeout(60)
def test_disconnect_nodes_and_monitor_node(cluster):
    seed = cluster.nodes[0]
    seed_address = cluster.address(seed)

    async def main():
        me = hermes.node()
        hermes.monitor_node("nobody@nowhere")  # not connected: NodeDown at once, as in Erlang
        assert await expect(lambda m: m == hermes.NodeDown("nobody@nowhere"), timeout=1) is not None
        learn(seed, seed_address)
        assert await hermes.connect(seed) is True
        await wait_until(lambda: len(hermes.nodes()) == len(cluster.nodes), timeout=10)
        hermes.monitor_node(seed)
        assert hermes.disconnect(seed) is True
        down = await expect(lambda m: isinstance(m, hermes.NodeDown), timeout=5)
        after = sorted(hermes.nodes())
        again = hermes.disconnect(seed)
        await wait_until(lambda: on(cluster, seed, _lacks, me), timeout=5)
        reconnected = await hermes.connect(seed)
        return down, after, again, reconnected, sorted(hermes.nodes())

    down, after, again, reconnected, final = run_here(cluster, main)
    assert down == hermes.NodeDown(seed)
    assert after == sorted(set(cluster.nodes) - {seed})
    assert again is False
    assert reconnected is True and final == sorted(cluster.nodes)


@pytest.mark.timeout(30)
def test_wrong_cookie_is_refused_both_ways(cluster):
    target = cluster.nodes[0]
    target_address = cluster.address(target)
    before = cluster.output(target).count("handshake with")

    async def main():
        me, mine = hermes.node(), own_address()
        learn(target, target_address)
        ours = await hermes.connect(target)
        theirs = await on(cluster, target, learn_and_connect, me, mine)
        return ours, theirs, hermes.nodes(), await on(cluster, target, hermes.nodes)

    ours, theirs, here, there = run_here(cluster, main, cookie="not-the-cluster-cookie")
    assert (ours, theirs) == (False, False)
    assert here == [] and full_name(HERE_NAME) not in there
    # the refusal is logged by the node, with the peer's address
    poll(lambda: cluster.output(target).count("handshake with") > before)
    assert "handshake with 127.0.0.1:" in cluster.output(target)



"""Distribution (issue 3): real node processes started by ``LocalCluster``.

One module-scoped cluster (a, b, c) serves every test that leaves it as it
found it; tests that kill, restart, freeze or add nodes get a small cluster
of their own. Some tests also run a node *in this process* (``run_here``): a
standalone node (no directory) that knows only the addresses a test tells it,
which is how mesh completion from one seed, simultaneous connects, wrong
cookies and broken frames are driven from a peer we control.

Functions and classes shipped to the nodes are module-level here: the nodes
import this module by reference (``LocalCluster`` gives them the driver's
``sys.path``, where pytest put this folder). Closures defined inside those functions travel by value
(cloudpickle), which is what the remote-spawn test is about.

Every wait polls a condition with a deadline; every cluster is stopped by its
fixture, also when a test fails, and the fixture checks no process outlived it.
"""
from __future__ import annotations

import asyncio
import operator
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import types
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import hermes
from hermes._app import full_name
from hermes.transport._handshake import MAGIC, Handshake, PeerInfo
from hermes.runtime import _node as _nodemod

from _cluster import poll
from conftest import wait_until

HERE = str(Path(__file__).resolve().parent)
HEADER = struct.Struct(">I")


# -- fixtures -------------------------------------------------------------------------


def _processes(c: hermes.LocalCluster) -> list[Any]:
    procs = [node.proc for node in c._nodes.values()]
    return procs + ([c._service] if c._service is not None else [])


def _stop_and_check(c: hermes.LocalCluster) -> None:
    procs = _processes(c)
    c.stop()
    alive = [p.pid for p in procs if p.poll() is None]
    assert not alive, f"processes outlived LocalCluster.stop(): {alive}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[hermes.LocalCluster]:
    """Shared by the tests that do not damage it."""
    c = hermes.LocalCluster(["a", "b", "c"], log_dir=str(tmp_path_factory.mktemp("cluster-logs")))
    try:
        yield c
    finally:
        _stop_and_check(c)


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., hermes.LocalCluster]]:
    """Dedicated clusters for destructive tests; all stopped at teardown."""
    started: list[hermes.LocalCluster] = []

    def make(names: list[str], **options: Any) -> hermes.LocalCluster:
        c = hermes.LocalCluster(names, log_dir=str(tmp_path / f"logs-{len(started)}"), **options)
        started.append(c)
        return c

    try:
        yield make
    finally:
        for c in started:
            for node in list(c._nodes.values()):  # a test may have left one frozen
                _signal(node.proc.pid, signal.SIGCONT)
            _stop_and_check(c)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# -- a node in this process -------------------------------------------------------------

HERE_NAME = "p"


def run_here(c: hermes.LocalCluster, main: Callable[..., Any], *, cookie: str | None = None, **options: Any) -> Any:
    """Run ``main`` as the first actor of a standalone node in this process, then
    wait until the cluster's nodes have forgotten it (it is not one of them)."""
    me = full_name(HERE_NAME)
    try:
        return hermes.run(main, name=HERE_NAME, cookie=cookie or c.cookie, **options)
    finally:
        running = [n for n in c.nodes if n in c._nodes]
        poll(lambda: not any(me in c.rpc(n, hermes.nodes) for n in running), timeout=10)


async def on(c: hermes.LocalCluster, name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``c.rpc`` from inside an actor of the in-process node, without blocking its loop."""
    return await asyncio.to_thread(c.rpc, name, fn, *args)


def _dist() -> Any:
    return _nodemod.get().dist


def learn(name: str, address: tuple[str, int]) -> None:
    """Tell this node where ``name`` listens (a standalone node has no directory)."""
    _dist().addresses[name] = tuple(address)


def own_address() -> tuple[str, int]:
    return tuple(_dist().local.address)  # type: ignore[return-value]


async def learn_and_connect(name: str, address: tuple[str, int]) -> bool:
    learn(name, address)
    return await hermes.connect(name)


def connection_ends(name: str) -> tuple[Any, Any] | None:
    """(local socket address, peer socket address) of this node's connection to ``name``."""
    conn = _dist().conns.get(name)
    if conn is None:
        return None
    transport = conn._transport
    return transport.get_extra_info("sockname")[:2], transport.get_extra_info("peername")[:2]


# -- actors and functions run on the nodes ----------------------------------------------


async def relay(owner: hermes.Pid, name: str | None = None) -> None:
    """Forwards every message to ``owner`` as ``("got", node, msg)``; ``"stop"`` ends it."""
    if name is not None:
        hermes.register(name)
    hermes.send(owner, ("ready", hermes.self()))
    while True:
        msg = await hermes.receive()
        if msg == "stop":
            return
        hermes.send(owner, ("got", hermes.node(), msg))


async def sleeper(owner: hermes.Pid | None = None) -> None:
    """Tells ``owner`` it is up, answers pings, and otherwise waits to be killed."""
    if owner is not None:
        hermes.send(owner, ("up", hermes.self()))
    while True:
        msg = await hermes.receive()
        if isinstance(msg, tuple) and msg[0] == "ping":
            hermes.send(msg[1], ("pong", hermes.self()))


async def exits_with(reason: Any) -> None:
    """Waits for ``"go"``, then ends with ``reason`` (an exception is raised)."""
    await hermes.receive(match=lambda m: m == "go")
    if isinstance(reason, BaseException):
        raise reason
    if reason != "normal":
        hermes.exit(hermes.self(), reason)
        await hermes.receive(match=lambda m: False)


async def expect(match: Callable[[Any], bool], timeout: float = 5.0) -> Any:
    return await hermes.receive(match=match, timeout=timeout)


def is_tagged(tag: str) -> Callable[[Any], bool]:
    return lambda m: isinstance(m, tuple) and len(m) >= 1 and m[0] == tag


class Counter(hermes.Actor):
    def __init__(self, start: int = 0, name: str | None = None) -> None:
        self.value = start
        if name is not None:
            hermes.register(name)

    def handle_call(self, request: Any, sender: Any) -> Any:
        if request == "get":
            return self.value
        if request == "where":
            return hermes.node()
        if request == "crash":
            raise KeyError("asked to crash")
        if request == "hang":
            return hermes.NOREPLY
        raise ValueError(f"unknown request {request!r}")

    def handle_cast(self, msg: Any) -> None:
        self.value += msg


class Watcher(hermes.Actor):
    """Registered as ``"watcher"``; traps exits and records every info message.

    ``call("watcher", ("watch", node))`` spawns on ``node`` a monitored sleeper,
    a linked sleeper, a local actor linked to a third remote sleeper (it must die
    with ``noconnection``), a local caller blocked in a call to that node and one
    blocked in a call by name; it also monitors the node."""

    def __init__(self) -> None:
        hermes.trap_exits(True)
        hermes.register("watcher")
        self.events: list[Any] = []

    def handle_call(self, request: Any, sender: Any) -> Any:
        kind, arg = request
        if kind == "watch":
            me = hermes.self()
            monitored = hermes.spawn(sleeper, me, node=arg)
            ref = hermes.monitor(monitored)
            linked = hermes.spawn(sleeper, me, node=arg, link=True)
            bystander = hermes.spawn(linked_to_remote, me, arg)
            bystander_ref = hermes.monitor(bystander)
            hermes.spawn(blocked_caller, me, arg)
            hermes.spawn(blocked_caller_by_name, me, arg)
            hermes.monitor_node(arg)
            return {"monitored": monitored, "ref": ref, "linked": linked, "bystander": bystander,
                    "bystander_ref": bystander_ref}
        if kind == "events":
            return list(self.events)
        raise ValueError(request)

    def handle_info(self, msg: Any) -> None:
        self.events.append(msg)


async def linked_to_remote(owner: hermes.Pid, node: str) -> None:
    hermes.spawn(sleeper, owner, node=node, link=True)
    await hermes.receive(match=lambda m: False)


async def blocked_caller(owner: hermes.Pid, node: str) -> None:
    server = hermes.spawn(Counter, node=node)
    await hermes.call(server, "where")
    hermes.send(owner, ("up", server))  # the hanging call below is on the wire before the node goes
    try:
        await hermes.call(server, "hang", timeout=60)
    except hermes.ActorExited as exc:
        hermes.send(owner, ("call failed", exc.reason))


async def blocked_caller_by_name(owner: hermes.Pid, node: str) -> None:
    name = f"hangs-{uuid.uuid4().hex}"
    hermes.spawn(Counter, 0, name, node=node)
    await hermes.call((name, node), "where")
    hermes.send(owner, ("up", name))
    try:
        await hermes.call((name, node), "hang", timeout=60)
    except hermes.ActorExited as exc:
        hermes.send(owner, ("call by name failed", exc.pid == (name, node), exc.reason))


async def watcher_events() -> list[Any]:
    return await hermes.call("watcher", ("events", None))  # type: ignore[no-any-return]


def start_watcher() -> hermes.Pid:
    return hermes.spawn(Watcher)


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


@pytest.mark.timeout(60)
def test_simultaneous_connect_ends_with_one_connection(make_cluster):
    c = make_cluster(["solo"])  # alone: no mesh around it to reconnect behind the test's back
    (peer,) = c.nodes
    peer_address = c.address(peer)

    async def main():
        me, mine = hermes.node(), own_address()
        ports = {mine[1], peer_address[1]}
        learn(peer, peer_address)
        outcomes = []
        for _ in range(10):
            ours, theirs = await asyncio.gather(hermes.connect(peer), on(c, peer, learn_and_connect, me, mine))
            await wait_until(lambda: _established_to(ports) == 1)  # the loser's socket is gone
            here = connection_ends(peer)
            there = await on(c, peer, connection_ends, me)
            outcomes.append((ours, theirs, here, there))
            assert hermes.disconnect(peer) is True  # start the next round unconnected
            await wait_until(lambda: on(c, peer, _lacks, me))
            await wait_until(lambda: _established_to(ports) == 0)
        return outcomes

    for ours, theirs, here, there in run_here(c, main):
        assert ours is True and theirs is True
        assert here is not None and there is not None
        assert here == (there[1], there[0])  # both ends of the same socket


def _lacks(name: str) -> bool:
    return name not in hermes.nodes()


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


# -- remote operations ------------------------------------------------------------------------


async def spawn_closure_on(node: str) -> tuple[Any, ...]:
    secret = {"token": uuid.uuid4().hex, "items": [1, 2, 3]}
    parent = hermes.self()

    async def child(extra: int) -> None:  # a closure: travels by value
        hermes.send(parent, ("from child", hermes.node(), hermes.self(), secret, extra))

    pid = hermes.spawn(child, 7, node=node)
    msg = await expect(is_tagged("from child"))
    return secret, pid, msg


@pytest.mark.timeout(30)
def test_remote_spawn_of_a_closure(cluster):
    source, target = cluster.nodes[0], cluster.nodes[1]
    secret, pid, msg = cluster.rpc(source, spawn_closure_on, target)
    assert isinstance(pid, hermes.Pid) and pid.node == target
    assert msg == ("from child", target, pid, secret, 7)


async def send_by_pid_and_name(node: str) -> list[Any]:
    me = hermes.self()
    name = f"relay-{uuid.uuid4().hex}"
    pid = hermes.spawn(relay, me, name, node=node)
    await expect(lambda m: m == ("ready", pid))
    hermes.send(pid, "by pid")
    hermes.send((name, node), "by name")
    hermes.send(("no-such-name", node), "dropped")  # never raises
    hermes.send(hermes.Pid(node, pid.creation, pid.id + 10**9), "dropped")
    hermes.send(pid, "stop")
    ref = hermes.monitor(pid)
    got = [await expect(is_tagged("got")) for _ in range(2)]
    down = await expect(lambda m: isinstance(m, hermes.Down) and m.ref == ref)
    return got + [down.reason]


@pytest.mark.timeout(30)
def test_send_to_a_remote_pid_and_to_a_name_on_a_node(cluster):
    source, target = cluster.nodes[0], cluster.nodes[2]
    assert cluster.rpc(source, send_by_pid_and_name, target) == [
        ("got", target, "by pid"), ("got", target, "by name"), "normal"]


async def call_and_cast(node: str) -> dict[str, Any]:
    name = f"counter-{uuid.uuid4().hex}"
    pid = hermes.spawn(Counter, 10, name=name, node=node)
    out: dict[str, Any] = {"where": await hermes.call(pid, "where")}
    hermes.cast(pid, 5)
    hermes.cast((name, node), 100)
    out["get"] = await hermes.call(pid, "get")  # per-pair order: both casts came first
    out["by name"] = await hermes.call((name, node), "get")
    try:
        await hermes.call(pid, "crash")
    except hermes.ActorExited as exc:
        out["crash"] = (exc.pid, exc.reason)
    try:
        await hermes.call(pid, "get")
    except hermes.ActorExited as exc:
        out["dead"] = exc.reason
    try:
        await hermes.call(("no-such-name", node), "get", timeout=2)
    except hermes.ActorExited as exc:
        out["unknown name"] = exc.reason
    try:
        await hermes.call(("anyone", "nobody@nowhere"), "get", timeout=2)
    except hermes.ActorExited as exc:
        out["unknown node"] = exc.reason
    out["pid"] = pid
    return out


def call_monitors_of(name: str) -> tuple[int, int]:
    """On the callee's node: monitors held for remote callers, in all and on ``name``."""
    node = _nodemod.get()
    proc = node.procs[hermes.whereis(name)]
    return len(node.call_monitors), len(proc.monitors or {})


async def calls_by_name(node: str) -> dict[str, Any]:
    """Calls to ``(name, node)``: resolved on that node from the call's one frame."""
    name = f"by-name-{uuid.uuid4().hex}"
    hermes.spawn(Counter, 7, name=name, node=node)
    out: dict[str, Any] = {"get": await hermes.call((name, node), "get")}
    out["monitors after a reply"] = await hermes.rpc(node, call_monitors_of, name)
    try:
        await hermes.call((name, node), "hang", timeout=0.2)
    except TimeoutError:
        out["timeout"] = True
    # the caller's demonitor went first on the same connection: per-pair order
    out["monitors after a timeout"] = await hermes.rpc(node, call_monitors_of, name)
    try:
        await hermes.call((name, node), "crash")
    except hermes.ActorExited as exc:
        out["crash"] = (exc.pid.node, type(exc.reason).__name__)
    started = time.monotonic()
    try:
        await hermes.call((name, node), "get", timeout=5)
    except hermes.ActorExited as exc:
        out["gone"] = (exc.pid, exc.reason, time.monotonic() - started < 2)
    return out


@pytest.mark.timeout(30)
def test_call_by_name_on_another_node(cluster):
    source, target = cluster.nodes[0], cluster.nodes[1]
    out = cluster.rpc(source, calls_by_name, target)
    assert out["get"] == 7
    assert out["monitors after a reply"] == (0, 0)
    assert out["timeout"] is True
    assert out["monitors after a timeout"] == (0, 0)
    assert out["crash"] == (target, "KeyError")
    name = out["gone"][0][0]
    assert out["gone"] == ((name, target), "noproc", True)  # refused at once by that node


@pytest.mark.timeout(30)
def test_call_and_cast_across_nodes(cluster):
    source, target = cluster.nodes[1], cluster.nodes[2]
    out = cluster.rpc(source, call_and_cast, target)
    assert out["where"] == target
    assert out["get"] == 115 and out["by name"] == 115
    crashed_pid, reason = out["crash"]
    assert crashed_pid == out["pid"] and type(reason) is KeyError and reason.args == ("asked to crash",)
    assert out["dead"] == "noproc"
    assert out["unknown name"] == "noproc"
    assert out["unknown node"] == "noconnection"


async def numbered(receiver: hermes.Pid, tag: str, count: int) -> None:
    for i in range(count):
        hermes.send(receiver, (tag, i))


async def check_order(owner: hermes.Pid, tags: list[str], count: int) -> None:
    expected = dict.fromkeys(tags, 0)
    remaining = len(tags) * count
    while remaining:
        tag, i = await hermes.receive()
        if i != expected[tag]:
            hermes.send(owner, ("order", "broken", tag, expected[tag], i))
            return
        expected[tag] += 1
        remaining -= 1
    hermes.send(owner, ("order", "kept", expected))


async def ordered_streams(receiver_node: str, other_sender: str, count: int) -> Any:
    me = hermes.self()
    receiver = hermes.spawn(check_order, me, ["here", "there"], count, node=receiver_node)
    hermes.spawn(numbered, receiver, "there", count, node=other_sender)  # a second pair, interleaved
    await numbered(receiver, "here", count)
    return await expect(is_tagged("order"), timeout=60)


@pytest.mark.timeout(90)
def test_per_pair_ordering_of_100k_messages(cluster):
    a, b, c = cluster.nodes
    count = 100_000
    started = time.monotonic()
    result = cluster.rpc(a, ordered_streams, b, c, count, timeout=60)
    assert result == ("order", "kept", {"here": count, "there": count})
    assert time.monotonic() - started < 30


async def monitor_and_link_remote(node: str) -> dict[str, Any]:
    hermes.trap_exits(True)
    out: dict[str, Any] = {}
    for reason in ("normal", "shutdown", ValueError("bad")):
        pid = hermes.spawn(exits_with, reason, node=node)
        ref = hermes.monitor(pid)
        hermes.link(pid)
        hermes.send(pid, "go")
        down = await expect(lambda m: isinstance(m, hermes.Down) and m.ref == ref)
        exit_ = await expect(lambda m: isinstance(m, hermes.Exit) and m.pid == pid)
        out[repr(reason)] = (down.pid == pid, down.reason, exit_.reason)
    # a monitor and a link to a remote pid that never existed
    ghost = hermes.Pid(node, (await hermes.rpc(node, hermes.self)).creation, 10**12)
    ref = hermes.monitor(ghost)
    out["ghost down"] = (await expect(lambda m: isinstance(m, hermes.Down) and m.ref == ref)).reason
    hermes.link(ghost)
    out["ghost exit"] = (await expect(lambda m: isinstance(m, hermes.Exit) and m.pid == ghost)).reason
    # demonitor: nothing arrives
    pid = hermes.spawn(exits_with, "normal", node=node)
    ref = hermes.monitor(pid)
    assert hermes.demonitor(ref) is True
    hermes.send(pid, "go")
    watch = hermes.monitor(pid)
    await expect(lambda m: isinstance(m, hermes.Down) and m.ref == watch)
    out["after demonitor"] = [m for m in _mailbox_snapshot() if isinstance(m, hermes.Down) and m.ref == ref]
    return out


def _mailbox_snapshot() -> list[Any]:
    from hermes.runtime._process import current

    return list(current.get().mailbox)


@pytest.mark.timeout(30)
def test_monitors_and_links_across_nodes(cluster):
    out = cluster.rpc(cluster.nodes[0], monitor_and_link_remote, cluster.nodes[1])
    assert out["'normal'"] == (True, "normal", "normal")
    assert out["'shutdown'"] == (True, "shutdown", "shutdown")
    same, down_reason, exit_reason = out["ValueError('bad')"]
    assert same and type(down_reason) is ValueError and type(exit_reason) is ValueError
    assert out["ghost down"] == "noproc" and out["ghost exit"] == "noproc"
    assert out["after demonitor"] == []


class Boom(Exception):
    pass


class Unpicklable(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lock = threading.Lock()


def raise_boom(text: str) -> None:
    raise Boom(text)


def raise_unpicklable() -> None:
    raise Unpicklable("holding a lock")


async def doubled_later(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


async def rpc_cases(node: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "add": await hermes.rpc(node, operator.add, 2, 3),
        "node": await hermes.rpc(node, hermes.node),
        "async": await hermes.rpc(node, doubled_later, 21),
        "kwargs": await hermes.rpc(node, dict, a=1, b=2),
        "closure": await hermes.rpc(node, (lambda base: lambda: base + hermes.node())("on ")),
    }
    for key, fn, args in (("ValueError", int, ("not a number",)), ("Boom", raise_boom, ("boom!",)),
                          ("Unpicklable", raise_unpicklable, ())):
        try:
            await hermes.rpc(node, fn, *args)
        except Exception as exc:
            out[key] = exc
    try:
        await hermes.rpc(node, asyncio.sleep, 5, timeout=0.2)
    except TimeoutError as exc:
        out["timeout"] = exc
    return out


@pytest.mark.timeout(30)
def test_rpc_returns_values_and_reraises_remote_exceptions(cluster):
    source, target = cluster.nodes[2], cluster.nodes[0]
    out = cluster.rpc(source, rpc_cases, target)
    assert out["add"] == 5 and out["node"] == target and out["async"] == 42
    assert out["kwargs"] == {"a": 1, "b": 2} and out["closure"] == "on " + target
    assert type(out["ValueError"]) is ValueError and "not a number" in str(out["ValueError"])
    assert type(out["Boom"]) is Boom and out["Boom"].args == ("boom!",)
    remote = out["Unpicklable"]
    assert type(remote) is hermes.RemoteError
    assert "Unpicklable" in remote.text and "holding a lock" in remote.text
    assert "raise_unpicklable" in remote.traceback_text
    assert type(out["timeout"]) is TimeoutError


@pytest.mark.timeout(30)
def test_cluster_rpc_reraises_like_rpc(cluster):
    name = cluster.nodes[1]
    with pytest.raises(Boom, match="from the driver"):
        cluster.rpc(name, raise_boom, "from the driver")
    with pytest.raises(hermes.RemoteError) as info:
        cluster.rpc(name, raise_unpicklable)
    assert "Unpicklable" in info.value.text and "raise_unpicklable" in info.value.traceback_text
    assert cluster.rpc(name, hermes.node) == name  # the node is fine


@pytest.mark.timeout(30)
def test_cluster_rpc_of_a_function_the_node_cannot_load_fails_cleanly(cluster):
    name = cluster.nodes[1]
    module = types.ModuleType("only_in_the_driver")  # importable here, unknown on the nodes
    exec("def fn():\n    return 1\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        with pytest.raises(ModuleNotFoundError, match="only_in_the_driver"):
            cluster.rpc(name, module.fn)
    finally:
        del sys.modules[module.__name__]
    assert cluster.rpc(name, hermes.node) == name  # the request failed, the node did not


async def send_unpicklable(node: str) -> dict[str, Any]:
    me = hermes.self()
    name = f"relay-{uuid.uuid4().hex}"
    pid = hermes.spawn(relay, me, name, node=node)
    await expect(lambda m: m == ("ready", pid))
    out: dict[str, Any] = {}
    for key, dest, bad in (("lock", pid, threading.Lock()), ("generator", pid, (i for i in range(3))),
                           ("nested", pid, ("wrapped", [threading.Lock()])),
                           ("by name", (name, node), threading.Lock())):
        try:
            hermes.send(dest, bad)
        except hermes.SerializationError as exc:
            out[key] = (exc.type_name, str(exc), isinstance(exc, TypeError))
        else:
            out[key] = None
    hermes.send(pid, "marker")
    out["first delivered"] = await expect(is_tagged("got"))
    hermes.send(pid, "stop")
    return out


@pytest.mark.timeout(30)
def test_unpicklable_message_raises_at_the_sender_and_delivers_nothing(cluster):
    source, target = cluster.nodes[0], cluster.nodes[1]
    out = cluster.rpc(source, send_unpicklable, target)
    assert out["lock"][0] == "_thread.lock" and out["lock"][2] is True
    assert out["generator"][0] == "generator" and out["generator"][2] is True
    assert "_thread.lock" in out["nested"][1]
    assert out["by name"] is not None and "_thread.lock" in out["by name"][1]
    assert out["first delivered"] == ("got", target, "marker")


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


# -- crashes, restarts and frozen peers --------------------------------------------------


def _expected_noconnection(events: list[Any], watched: dict[str, Any], node: str) -> dict[str, bool]:
    return {
        "monitor": hermes.Down(watched["ref"], watched["monitored"], "noconnection") in events,
        "link": hermes.Exit(watched["linked"], "noconnection") in events,
        "bystander": hermes.Down(watched["bystander_ref"], watched["bystander"], "noconnection") in events,
        "call": ("call failed", "noconnection") in events,
        "call by name": ("call by name failed", True, "noconnection") in events,
        "node": hermes.NodeDown(node) in events,
    }


def _watch(c: hermes.LocalCluster, watcher_node: str, node: str) -> dict[str, Any]:
    c.rpc(watcher_node, start_watcher)
    watched = c.rpc(watcher_node, hermes.call, "watcher", ("watch", node))
    # three sleepers (monitored, linked, the bystander's) and the two called servers are up
    poll(lambda: sum(1 for e in c.rpc(watcher_node, watcher_events) if is_tagged("up")(e)) == 5)
    return watched


async def old_incarnation(old: hermes.Pid, node: str) -> dict[str, Any]:
    hermes.trap_exits(True)
    me = hermes.self()
    out: dict[str, Any] = {}
    ref = hermes.monitor(old)
    out["monitor"] = (await expect(lambda m: isinstance(m, hermes.Down) and m.ref == ref)).reason
    hermes.link(old)
    out["link"] = (await expect(lambda m: isinstance(m, hermes.Exit) and m.pid == old)).reason
    try:
        await hermes.call(old, "get", timeout=2)
    except hermes.ActorExited as exc:
        out["call"] = exc.reason
    # a fresh actor of the new incarnation; a pid of the old one with the same id must not reach it
    fresh = hermes.spawn(relay, me, node=node)
    await expect(lambda m: m == ("ready", fresh))
    hermes.send(hermes.Pid(fresh.node, old.creation, fresh.id), "to the old incarnation")
    hermes.send(fresh, "to the new one")
    out["first delivered"] = await expect(is_tagged("got"))
    out["fresh is new"] = fresh.creation != old.creation
    return out


def registered_names() -> list[str]:
    return sorted(_nodemod.get().names)


@pytest.mark.timeout(60)
def test_sigkill_gives_noconnection_and_a_restart_is_a_new_incarnation(make_cluster):
    c = make_cluster(["x", "y"])
    x, y = c.nodes
    names_before = c.rpc(y, registered_names)
    watched = _watch(c, x, y)
    old_counter = c.rpc(x, hermes.spawn, Counter, 1, "old-counter", node=y)
    poll(lambda: "old-counter" in c.rpc(y, registered_names))
    c.kill(y)
    events = poll(lambda: (lambda ev: ev if all(_expected_noconnection(ev, watched, y).values()) else None)(
        c.rpc(x, watcher_events)), timeout=10)
    assert all(_expected_noconnection(events, watched, y).values())
    assert y not in c.rpc(x, hermes.nodes)

    c.start(y)
    assert c.rpc(y, registered_names) == names_before  # clean: nothing of the old run
    out = c.rpc(x, old_incarnation, old_counter, y)
    assert out == {"monitor": "noproc", "link": "noproc", "call": "noproc",
                   "first delivered": ("got", y, "to the new one"), "fresh is new": True}


@pytest.mark.timeout(60)
def test_a_frozen_peer_is_declared_down_by_ticks_and_reconnects_when_it_resumes(make_cluster):
    c = make_cluster(["s1", "s2", "s3"], tick_interval=0.2, lease_ttl=1.0)
    s1, s2, s3 = c.nodes
    watched = _watch(c, s1, s3)
    before = c.rpc(s1, connection_ends, s3)
    frozen = c._nodes[s3].proc.pid
    os.kill(frozen, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        events = poll(lambda: (lambda ev: ev if _expected_noconnection(ev, watched, s3)["node"] else None)(
            c.rpc(s1, watcher_events)), timeout=10)
        detected = time.monotonic() - stopped
        poll(lambda: s3 not in c.rpc(s2, hermes.nodes), timeout=10)
        events = c.rpc(s1, watcher_events)
        found = _expected_noconnection(events, watched, s3)
        assert found == {"monitor": True, "link": True, "bystander": True, "call": True, "call by name": True,
                         "node": True}
        assert detected < 5  # 4 missed ticks of 0.2 s, plus scheduling slack
        assert "tick timeout" in c.output(s1)
    finally:
        os.kill(frozen, signal.SIGCONT)
    for name in c.nodes:
        others = sorted(set(c.nodes) - {name})
        poll(lambda: sorted(c.rpc(name, hermes.nodes)) == others, timeout=15)
    after = c.rpc(s1, connection_ends, s3)
    assert after is not None and after != before  # a new connection
    # the node was frozen, not restarted: its surviving actor answers again
    survivor = watched["monitored"]
    assert c.rpc(s1, ping, survivor) == ("pong", survivor)


async def ping(pid: hermes.Pid) -> Any:
    hermes.send(pid, ("ping", hermes.self()))
    return await expect(is_tagged("pong"))


# -- no orphans ------------------------------------------------------------------------------

DRIVER = """
import os, signal, sys
import hermes
c = hermes.LocalCluster(["k1", "k2"], log_dir=sys.argv[1])
pids = [n.proc.pid for n in c._nodes.values()] + [c._service.pid]
print(" ".join(map(str, pids)), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # a crash: no stop(), no atexit
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.timeout(60)
def test_nodes_and_service_die_with_a_killed_driver(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(HERE).parent), HERE) if p)}
    driver = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path)], env=env, capture_output=True,
                            timeout=45)
    assert driver.returncode == -signal.SIGKILL, driver.stderr.decode()[-2000:]
    pids = [int(p) for p in driver.stdout.split()]
    assert len(pids) == 3
    try:
        poll(lambda: not any(_alive(pid) for pid in pids), timeout=15)
    finally:
        for pid in pids:
            if _alive(pid):
                _signal(pid, signal.SIGKILL)


async def crashes_unpicklably() -> None:
    await hermes.receive(match=lambda m: m == "go")
    raise Unpicklable("an exit reason holding a lock")


async def watch_unpicklable_crash(node: str) -> tuple[Any, Any, Any]:
    hermes.trap_exits(True)
    pid = hermes.spawn(crashes_unpicklably, node=node)
    ref = hermes.monitor(pid)
    hermes.link(pid)
    hermes.send(pid, "go")
    down = await expect(lambda m: isinstance(m, hermes.Down) and m.ref == ref)
    exit_ = await expect(lambda m: isinstance(m, hermes.Exit) and m.pid == pid)
    return down.reason, exit_.reason, await hermes.rpc(node, operator.add, 1, 1)


@pytest.mark.timeout(30)
def test_an_unpicklable_exit_reason_reaches_remote_monitors_and_links_as_remote_error(cluster):
    down, exit_, still_up = cluster.rpc(cluster.nodes[0], watch_unpicklable_crash, cluster.nodes[1])
    for reason in (down, exit_):
        assert type(reason) is hermes.RemoteError
        assert "Unpicklable" in reason.text and "holding a lock" in reason.text
        assert "crashes_unpicklably" in reason.traceback_text
    assert still_up == 2  # the crashing actor's node is unharmed

"""Shared by the mesh tests (test_mesh, test_remote_ops, test_hostile_peers,
test_node_failures): fixtures for clusters of real node processes started by
``LocalCluster``, a standalone node in this process (``run_here``) driven as a
peer we control, and the actors and functions shipped to the nodes.

Functions and classes shipped to the nodes are module-level here: the nodes
import this module by reference (``LocalCluster`` gives them the driver's
``sys.path``, where pytest put this folder). Closures defined inside them travel by value
(cloudpickle).

Every wait polls a condition with a deadline; every cluster is stopped by its
fixture, also when a test fails, and the fixture checks no process outlived it.
"""

import asyncio
import os
import signal
import struct
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import hermes
from hermes._app import full_name
from hermes.runtime import lowlevel

from _cluster import poll

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
    return lowlevel.current_node().dist


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


def _lacks(name: str) -> bool:
    return name not in hermes.nodes()


class Unpicklable(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lock = threading.Lock()

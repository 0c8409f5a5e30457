"""Remote operations between real node processes: send, call, cast, links,
monitors, exits, spawn and rpc across nodes.

Fixtures and the actors shipped to the nodes live in ``_mesh_support``.
"""

import asyncio
import operator
import struct
import sys
import threading
import time
import types
import uuid
from pathlib import Path
from typing import Any

import pytest

import hermes
from hermes.runtime import lowlevel


HERE = str(Path(__file__).resolve().parent)
HEADER = struct.Struct(">I")

# `cluster` (and `make_cluster`) are pytest fixtures, imported so that the tests can ask for them by name
from _mesh_support import (cluster, relay, exits_with, expect, is_tagged, Counter, Unpicklable)


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
    node = lowlevel.current_node()
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



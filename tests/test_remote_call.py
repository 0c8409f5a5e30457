"""The remote call's fast path between real node processes: the caller's one
check-and-send (``Distribution.call`` answers why a pid cannot be reached), the
callee's ``_on_call`` (monitor, then the request handled at once) and the
reply's ``_on_reply`` (a reply to a call that has ended is dropped).

Each test asserts the exact outcome and that the call left nothing behind on
either node: no pending future, no remote-call record, no call monitor.
"""

import asyncio
import time
from typing import Any

import pytest

import hermes
from hermes.runtime import lowlevel

# `cluster` is a pytest fixture, imported so that the tests can ask for it by name
from _mesh_support import cluster  # noqa: F401
from _cluster import poll


class Slow(hermes.Actor):
    """Replies to ``("sleep", s)`` after ``s`` seconds, never to ``"hold"``, and
    to anything else at once."""

    async def handle_call(self, request: Any, sender: Any) -> Any:
        if request == "hold":  # never answered: only the caller's timeout ends the call
            self.defer_reply()
            return hermes.NOREPLY
        if type(request) is tuple and request[0] == "sleep":
            await asyncio.sleep(request[1])
            return ("slept", request[1])
        return ("echo", request)


class Dies(hermes.Actor):
    def handle_call(self, request: Any, sender: Any) -> Any:
        self.stop("died on purpose")
        return hermes.NOREPLY


def leftovers() -> tuple[int, int, int, int]:
    """This node's call bookkeeping: pending futures, remote-call records, call
    monitors, and monitors held by its actors. Read by a ``cluster.rpc``, whose
    own local rpc is the one pending future: ``IDLE`` is a node with no call."""
    node = lowlevel.current_node()
    held = sum(len(p.monitors or ()) for p in node.procs.values())
    return len(node.pending), len(node.pending_remote), len(node.call_monitors), held


IDLE = (1, 0, 0, 0)


def spawn_slow() -> hermes.Pid:
    return hermes.spawn(Slow)


async def call_outcome(dest: Any, request: Any, timeout: float = 5.0) -> Any:
    started = time.monotonic()
    try:
        return ("ok", await hermes.call(dest, request, timeout=timeout))
    except hermes.ActorExited as exc:
        return ("exited", exc.pid, exc.reason, time.monotonic() - started)
    except TimeoutError:
        return ("timeout",)


async def unreachable_calls(pid: hermes.Pid) -> dict[str, Any]:
    """Calls that fail before anything leaves this node."""
    here = hermes.node()
    out = {}
    old = hermes.Pid(pid.node, pid.creation + 1, pid.id)  # another incarnation of that node: dead
    out["old incarnation"] = await call_outcome(old, "x")
    out["ours, dead"] = await call_outcome(hermes.Pid(here, 0, 10**12), "x")
    out["no such node"] = await call_outcome(hermes.Pid("nosuch@nowhere", 1, 1), "x")
    out["live"] = await call_outcome(pid, "hello")
    out["left"] = leftovers()
    return out


@pytest.mark.timeout(60)
def test_unreachable_remote_pids_raise_at_once_and_leave_nothing(cluster):
    a, b = cluster.nodes[0], cluster.nodes[1]
    pid = cluster.rpc(b, spawn_slow)
    out = cluster.rpc(a, unreachable_calls, pid, timeout=30)
    old = out["old incarnation"]
    assert old[:3] == ("exited", hermes.Pid(pid.node, pid.creation + 1, pid.id), "noproc") and old[3] < 1
    ours = out["ours, dead"]
    assert ours[0] == "exited" and ours[2] == "noproc" and ours[3] < 1
    assert out["no such node"][:3] == ("exited", hermes.Pid("nosuch@nowhere", 1, 1), "noconnection")
    assert out["live"] == ("ok", ("echo", "hello"))  # the same caller still calls fine
    assert out["left"] == IDLE
    poll(lambda: cluster.rpc(b, leftovers) == IDLE, timeout=20)
    cluster.rpc(b, hermes.exit, pid, "kill")


async def late_reply(pid: hermes.Pid) -> dict[str, Any]:
    out: dict[str, Any] = {"timeout": await call_outcome(pid, ("sleep", 0.5), timeout=0.05)}
    out["left after timeout"] = leftovers()
    # the late reply arrives while this call waits: it must not be taken for this call's
    out["next"] = await call_outcome(pid, ("sleep", 1.0), timeout=10)
    out["then"] = await call_outcome(pid, "again")
    out["left"] = leftovers()
    return out


@pytest.mark.timeout(60)
def test_a_late_reply_after_a_timeout_is_dropped_and_the_monitor_is_gone(cluster):
    a, b = cluster.nodes[1], cluster.nodes[2]
    pid = cluster.rpc(b, spawn_slow)
    out = cluster.rpc(a, late_reply, pid, timeout=30)
    assert out["timeout"] == ("timeout",)
    assert out["left after timeout"] == IDLE
    assert out["next"] == ("ok", ("slept", 1.0))
    assert out["then"] == ("ok", ("echo", "again"))
    assert out["left"] == IDLE
    poll(lambda: cluster.rpc(b, leftovers) == IDLE, timeout=20)  # the callee's call monitors too
    cluster.rpc(b, hermes.exit, pid, "kill")


def spawn_dies() -> hermes.Pid:
    return hermes.spawn(Dies)


async def held_call(pid: hermes.Pid) -> Any:
    return await call_outcome(pid, "hold", timeout=0.2), leftovers()


@pytest.mark.timeout(60)
def test_a_timed_out_call_that_is_never_answered_drops_the_callee_monitor(cluster):
    a, b = cluster.nodes[0], cluster.nodes[1]
    pid = cluster.rpc(b, spawn_slow)
    assert cluster.rpc(a, held_call, pid, timeout=30) == (("timeout",), IDLE)
    # the caller's demonitor frame (not a reply: there is none) ends the monitor there
    poll(lambda: cluster.rpc(b, leftovers) == IDLE, timeout=20)
    cluster.rpc(b, hermes.exit, pid, "kill")


async def call_to_dying(pid: hermes.Pid) -> dict[str, Any]:
    out = {"dies": await call_outcome(pid, "x")}
    out["after"] = await call_outcome(pid, "x")
    out["left"] = leftovers()
    return out


@pytest.mark.timeout(60)
def test_a_callee_that_dies_in_the_call_raises_its_reason(cluster):
    a, b = cluster.nodes[2], cluster.nodes[0]
    pid = cluster.rpc(b, spawn_dies)
    out = cluster.rpc(a, call_to_dying, pid, timeout=30)
    assert out["dies"][:3] == ("exited", pid, "died on purpose") and out["dies"][3] < 5
    assert out["after"][:3] == ("exited", pid, "noproc")  # refused by its node
    assert out["left"] == IDLE
    poll(lambda: cluster.rpc(b, leftovers) == IDLE, timeout=20)


async def many_calls(pid: hermes.Pid, n: int) -> Any:
    results = [await hermes.call(pid, i) for i in range(n)]
    return results == [("echo", i) for i in range(n)], leftovers()


@pytest.mark.timeout(60)
def test_many_remote_calls_answer_in_order_and_leave_nothing(cluster):
    a, b = cluster.nodes[0], cluster.nodes[2]
    pid = cluster.rpc(b, spawn_slow)
    assert cluster.rpc(a, many_calls, pid, 2000, timeout=50) == (True, IDLE)
    poll(lambda: cluster.rpc(b, leftovers) == IDLE, timeout=20)
    cluster.rpc(b, hermes.exit, pid, "kill")


async def link_counters_over_calls(pid: hermes.Pid, n: int) -> Any:
    from hermes import mesh

    dist = mesh.of(lowlevel.current_node())
    before = dist.statistics()[pid.node]
    for i in range(n):
        await hermes.call(pid, i)
    after = dist.statistics()[pid.node]
    return {field: getattr(after, field) - getattr(before, field)
            for field in ("frames_out", "writes", "bytes_out", "frames_in", "queued_bytes")}


@pytest.mark.timeout(60)
def test_requests_written_at_once_are_counted_on_the_link(cluster):
    """A request on an idle link goes out in the send itself (no buffer, no flush):
    the link's counters still count each frame, write and byte."""
    a, b = cluster.nodes[1], cluster.nodes[0]
    pid = cluster.rpc(b, spawn_slow)
    n = 300
    delta = cluster.rpc(a, link_counters_over_calls, pid, n, timeout=50)
    assert delta["frames_out"] >= n and delta["frames_in"] >= n  # requests out, replies in
    assert n <= delta["writes"] <= delta["frames_out"] + 10  # about one write per request (plus ticks)
    assert delta["bytes_out"] >= n * 12  # each a 4-byte header and a pickled ("c", id, i, sender, ref)
    assert delta["queued_bytes"] == 0
    cluster.rpc(b, hermes.exit, pid, "kill")

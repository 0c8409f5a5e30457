"""Crashes, restarts and frozen peers: SIGKILL, restarts with a new incarnation,
SIGSTOP/SIGCONT and ticks; no process outlives its cluster.

Fixtures and the actors shipped to the nodes live in ``_mesh_support``.
"""

import operator
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import hermes
from hermes.runtime import lowlevel

from _cluster import alive, poll

HERE = str(Path(__file__).resolve().parent)
HEADER = struct.Struct(">I")

# `cluster` (and `make_cluster`) are pytest fixtures, imported so that the tests can ask for them by name
from _mesh_support import (cluster, make_cluster, _signal, connection_ends, relay, expect, is_tagged, Counter,
    watcher_events, start_watcher, HERE, Unpicklable)


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
    return sorted(lowlevel.current_node().names)


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




@pytest.mark.timeout(60)
def test_nodes_and_service_die_with_a_killed_driver(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(HERE).parent), HERE) if p)}
    driver = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path)], env=env, capture_output=True,
                            timeout=45)
    assert driver.returncode == -signal.SIGKILL, driver.stderr.decode()[-2000:]
    pids = [int(p) for p in driver.stdout.split()]
    assert len(pids) == 3
    try:
        poll(lambda: not any(alive(pid) for pid in pids), timeout=15)
    finally:
        for pid in pids:
            if alive(pid):
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

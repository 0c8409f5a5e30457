"""Presence: track/untrack/update/list and the diffs, on one node and across real node processes.

One node (``run_node``): the API, its errors, and that a failed call changed
nothing. Three nodes (``LocalCluster``): convergence of 30,000 presences, a
netsplit healed by discovery, a SIGKILLed node, a restarted one, a clean
stop, a restarted presence actor, a real cut of a test host (network
namespaces, root only), and a property test of the diffs: a ``PresenceLog`` actor on every node subscribes
to the topics, reads ``presence.list`` once, and records every ``Diff``; its
``replay`` (leaves then joins applied to that first list) must always equal
the node's current ``list``. Functions and classes that run on the nodes are
module-level here; the nodes import this module by name.
"""
from __future__ import annotations

import asyncio
import contextvars
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

import hermes
from hermes import presence

from _cluster import poll
from conftest import run_node

TESTS_DIR = str(Path(__file__).resolve().parent)
ROOT_DIR = str(Path(__file__).resolve().parents[1])

pytestmark = pytest.mark.timeout(60)


# -- one node ---------------------------------------------------------------------------


def test_track_update_untrack_and_their_diffs():
    async def main():
        hermes.subscribe("room")
        presence.track("room", "alice", {"s": 1})
        presence.track("other", "alice")
        presence.update("room", "alice", {"s": 2})
        listed = presence.list("room")
        presence.untrack("room", "alice")
        presence.untrack("room", "alice")  # no entry: nothing, no diff
        got = [await hermes.receive(timeout=1) for _ in range(3)]
        try:
            await hermes.receive(timeout=0.05)
            extra = True
        except TimeoutError:
            extra = False
        return listed, got, presence.list("room"), presence.list("other"), extra

    listed, got, after, other, extra = run_node(main)
    assert listed == {"alice": [{"s": 2}]}
    assert got == [presence.Diff("room", {"alice": [{"s": 1}]}, {}),
                   presence.Diff("room", {"alice": [{"s": 2}]}, {"alice": [{"s": 1}]}),  # leave and join
                   presence.Diff("room", {}, {"alice": [{"s": 2}]})]
    assert after == {} and other == {"alice": [None]} and not extra


def test_many_pids_per_key_and_many_keys_per_pid_and_exit():
    async def holder() -> None:
        await hermes.receive()

    async def main():
        hermes.subscribe("room")
        pids = [hermes.spawn(holder) for _ in range(3)]
        for i, pid in enumerate(pids):
            presence.track("room", "shared", i, pid=pid)
            presence.track("room", f"own{i}", pid=pid)
        both = presence.list("room")
        ref = hermes.monitor(pids[1])
        hermes.exit(pids[1], "kill")
        await hermes.receive(match=lambda m: isinstance(m, hermes.Down) and m.ref == ref, timeout=5)
        diffs = [await hermes.receive(timeout=1) for _ in range(7)]
        return both, presence.list("room"), diffs[-1]

    both, after, exit_diff = run_node(main)
    assert sorted(both["shared"]) == [0, 1, 2] and both["own1"] == [None]
    assert sorted(after["shared"]) == [0, 2] and "own1" not in after
    assert exit_diff == presence.Diff("room", {}, {"shared": [1], "own1": [None]})  # one diff, every entry


def test_errors_name_the_cause_and_change_nothing():
    async def main():
        presence.track("room", "alice", "meta")
        before = presence.list("room")
        me = hermes.self()
        dead = hermes.spawn(_idle)
        ref = hermes.monitor(dead)
        hermes.exit(dead, "kill")
        await hermes.receive(match=lambda m: isinstance(m, hermes.Down) and m.ref == ref, timeout=5)
        remote = hermes.Pid("elsewhere@nohost", 1, 7)
        errors = {}
        for name, call in {
            "dead": lambda: presence.track("room", "bob", pid=dead),
            "remote": lambda: presence.track("room", "bob", pid=remote),
            "twice": lambda: presence.track("room", "alice", "again"),
            "update_missing": lambda: presence.update("room", "bob", 1),
            "update_remote": lambda: presence.update("room", "alice", 1, pid=remote),
            "untrack_remote": lambda: presence.untrack("room", "alice", pid=remote),
            "unpicklable": lambda: presence.track("room", "carol", threading.Lock()),
            "not_a_pid": lambda: presence.track("room", "bob", pid="alice"),
        }.items():
            try:
                call()
            except Exception as exc:
                errors[name] = (type(exc), str(exc))
        holder: list[Any] = []
        outside = contextvars.Context()  # a loop callback that is no actor's
        asyncio.get_running_loop().call_soon(lambda: holder.append(_try(lambda: presence.track("room", "x"))),
                                             context=outside)
        await asyncio.sleep(0.01)
        return before, presence.list("room"), errors, holder, str(dead), str(remote), me

    before, after, errors, outside, dead, remote, me = run_node(main)
    assert before == after == {"alice": ["meta"]}
    assert errors["dead"][0] is ValueError and dead in errors["dead"][1] and "not alive" in errors["dead"][1]
    assert errors["remote"][0] is ValueError and remote in errors["remote"][1] and "not a local pid" in errors["remote"][1]
    assert errors["twice"][0] is ValueError and "presence.update" in errors["twice"][1]
    assert errors["update_missing"][0] is ValueError and "presence.track" in errors["update_missing"][1]
    assert errors["update_remote"][0] is ValueError and errors["untrack_remote"][0] is ValueError
    assert errors["unpicklable"][0] is hermes.SerializationError
    assert errors["not_a_pid"][0] is TypeError
    assert outside == [hermes.NotInActor]


def _try(fn: Any) -> Any:
    try:
        fn()
    except Exception as exc:
        return type(exc)
    return None


# -- on the nodes -----------------------------------------------------------------------


async def _idle() -> None:
    await hermes.receive()


def spawn_holders(count: int) -> list[hermes.Pid]:
    return [hermes.spawn(_idle) for _ in range(count)]


def kill(pids: list[hermes.Pid]) -> None:
    for pid in pids:
        hermes.exit(pid, "kill")


def track_all(entries: list[tuple[hermes.Pid, Any, Any, Any]]) -> int:
    """Track each ``(pid, topic, key, meta)``; the monotonic time (ns) after the last."""
    for pid, topic, key, meta in entries:
        presence.track(topic, key, meta, pid=pid)
    return time.monotonic_ns()


def lists(topics: list[Any]) -> dict[Any, dict[Any, list[Any]]]:
    return {topic: presence.list(topic) for topic in topics}


def normal(listed: dict[Any, list[Any]]) -> dict[Any, list[str]]:
    """A list with each key's metas in a fixed order (their order is unspecified)."""
    return {key: sorted(map(repr, metas)) for key, metas in listed.items() if metas}


async def wait_equal(expected: dict[Any, dict[Any, list[Any]]], timeout: float) -> int | None:
    """Until every topic's list equals ``expected`` here: the monotonic time (ns) it did, or None."""
    want = {topic: normal(listed) for topic, listed in expected.items()}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(normal(presence.list(topic)) == listed for topic, listed in want.items()):
            return time.monotonic_ns()
        await asyncio.sleep(0.005)
    return None


class PresenceLog(hermes.Actor):
    """Subscribes to ``topics``, reads their lists once, then records every ``Diff``."""

    def __init__(self, name: str, topics: list[Any]) -> None:
        hermes.register(name)
        for topic in topics:
            hermes.subscribe(topic)
        self.first = {topic: presence.list(topic) for topic in topics}  # nothing runs in between
        self.diffs: list[presence.Diff] = []

    def handle_info(self, msg: Any) -> None:
        assert type(msg) is presence.Diff, msg
        self.diffs.append(msg)

    def handle_call(self, request: Any, sender: Any) -> Any:
        if request == "diffs":
            return list(self.diffs)
        if request == "check":  # (replayed, current) per topic, both normalized
            return {topic: (normal(replay(first, [d for d in self.diffs if d.topic == topic])),
                            normal(presence.list(topic))) for topic, first in self.first.items()}
        raise ValueError(request)


def replay(first: dict[Any, list[Any]], diffs: list[presence.Diff]) -> dict[Any, list[Any]]:
    """``first`` with each diff's leaves removed (one equal meta each; it must be there) and joins added."""
    state = {key: list(metas) for key, metas in first.items()}
    for diff in diffs:
        for key, metas in diff.leaves.items():
            for meta in metas:
                state[key].remove(meta)  # ValueError/KeyError: a leave of something not there
                if not state[key]:
                    del state[key]
        for key, metas in diff.joins.items():
            state.setdefault(key, []).extend(metas)
    return state


def start_log(name: str, topics: list[Any]) -> hermes.Pid:
    return hermes.spawn(PresenceLog, name, topics)


async def log_call(name: str, request: Any) -> Any:
    return await hermes.call(name, request, timeout=10)


def stop_log(name: str) -> None:
    pid = hermes.whereis(name)
    if pid is not None:
        hermes.exit(pid, "kill")


def split_and_list(peer: str, topics: list[Any]) -> tuple[bool, dict[Any, dict[Any, list[Any]]]]:
    """Disconnect from ``peer``; what this node lists right after, in the same turn."""
    return hermes.disconnect(peer), lists(topics)


def connected(peer: str) -> bool:
    return peer in hermes.nodes()


# -- three nodes ------------------------------------------------------------------------

NODES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[hermes.LocalCluster]:
    c = hermes.LocalCluster(NODES)
    try:
        yield c
    finally:
        c.stop()


def checks_hold(c: hermes.LocalCluster, node: str, name: str) -> dict[Any, Any] | None:
    found = c.rpc(node, log_call, name, "check")
    return found if all(replayed == current for replayed, current in found.values()) else None


@pytest.mark.timeout(240)
def test_three_nodes_track_10000_each_over_100_topics_and_converge(cluster):
    c = cluster
    topics = [f"conv:{t}" for t in range(100)]
    plan: dict[str, list[tuple[Any, ...]]] = {}
    expected: dict[Any, dict[Any, list[Any]]] = {t: {} for t in topics}
    holders = {}
    for node in NODES:
        holders[node] = c.rpc(node, spawn_holders, 100)  # 100 users per node, each in the 100 rooms
        plan[node] = [(pid, topic, f"{node}:{u}", {"node": node, "u": u})
                      for u, pid in enumerate(holders[node]) for topic in topics]
        for pid, topic, key, meta in plan[node]:
            expected[topic][key] = [meta]
    assert sum(len(p) for p in plan.values()) == 30_000
    with ThreadPoolExecutor(3) as pool:
        done = list(pool.map(lambda n: c.rpc(n, track_all, plan[n], timeout=60), NODES))
        last_track = max(done)
        seen = list(pool.map(lambda n: c.rpc(n, wait_equal, expected, 60.0, timeout=70), NODES))
    assert None not in seen, f"not every node converged within 60 s: {seen}"
    converged_s = (max(seen) - last_track) / 1e9
    print(f"\nconvergence of 30,000 presences on 3 nodes: {converged_s * 1000:.0f} ms after the last track")
    assert converged_s < 10.0  # the target is 1 s (bench row presence_converge); this machine is shared
    for node in NODES:
        c.rpc(node, kill, holders[node])
    for node in NODES:
        assert c.rpc(node, wait_equal, {t: {} for t in topics}, 30.0, timeout=40) is not None


@pytest.mark.timeout(120)
def test_netsplit_and_heal_by_discovery(cluster):
    c = cluster
    b = c.nodes[1]  # "a" (c.nodes[0]) drives the split
    topic = "split"
    for node in NODES:
        c.rpc(node, start_log, f"split-log-{node}", [topic])
    holders = {node: c.rpc(node, spawn_holders, 5) for node in NODES}
    expected = {topic: {f"{node}:{i}": [i] for node in NODES for i in range(5)}}
    for node in NODES:
        c.rpc(node, track_all, [(pid, topic, f"{node}:{i}", i) for i, pid in enumerate(holders[node])])
    for node in NODES:
        assert c.rpc(node, wait_equal, expected, 30.0, timeout=40) is not None

    ok, right_after = c.rpc("a", split_and_list, b, [topic])
    assert ok is True
    assert sorted(right_after[topic]) == sorted(k for k in expected[topic] if not k.startswith("b:"))  # at once
    poll(lambda: c.rpc("a", connected, b), timeout=30)  # discovery reconnects
    for node in NODES:
        assert c.rpc(node, wait_equal, expected, 30.0, timeout=40) is not None  # no duplicates, nothing lost
    for node in NODES:
        poll(lambda: checks_hold(c, node, f"split-log-{node}"), timeout=20)
    diffs = c.rpc("a", log_call, "split-log-a", "diffs")
    joins = Counter(k for d in diffs for k in d.joins for _ in d.joins[k])
    leaves = Counter(k for d in diffs for k in d.leaves for _ in d.leaves[k])
    for i in range(5):
        assert (joins[f"b:{i}"], leaves[f"b:{i}"]) == (2, 1)  # joined, left at the split, joined again
        assert (joins[f"c:{i}"], leaves[f"c:{i}"]) == (1, 0)  # c stayed connected to a
    for node in NODES:
        c.rpc(node, kill, holders[node])
        c.rpc(node, stop_log, f"split-log-{node}")


@pytest.mark.timeout(120)
def test_diffs_replayed_on_the_first_list_give_the_current_list(cluster):
    c = cluster
    topics = ["prop:0", "prop:1"]
    rng = random.Random(20261201)
    for node in NODES:
        c.rpc(node, start_log, f"prop-log-{node}", topics)
    agents = {node: c.rpc(node, spawn_holders, 4) for node in NODES}
    truth: dict[tuple[Any, ...], Any] = {}  # (node, pid, topic, key) -> meta

    def round_ops(node: str) -> list[tuple[Any, ...]]:
        ops = []
        for _ in range(rng.randint(5, 15)):
            mine = [e for e in truth if e[0] == node]
            kind = rng.choice(["track", "track", "untrack", "update", "exit"])
            if kind == "track" or not mine:
                pid, topic, key = rng.choice(agents[node]), rng.choice(topics), f"k{rng.randint(0, 5)}"
                if (node, pid, topic, key) in truth:
                    continue
                meta = {"v": rng.randint(0, 3)}
                truth[(node, pid, topic, key)] = meta
                ops.append(("track", pid, topic, key, meta))
            elif kind == "untrack":
                entry = rng.choice(mine)
                del truth[entry]
                ops.append(("untrack", entry[1], entry[2], entry[3]))
            elif kind == "update":
                entry = rng.choice(mine)
                truth[entry] = meta = {"v": rng.randint(0, 3)}
                ops.append(("update", entry[1], entry[2], entry[3], meta))
            else:
                pid = rng.choice(agents[node])
                for entry in [e for e in truth if e[1] == pid]:
                    del truth[entry]
                agents[node].remove(pid)
                agents[node].append(c.rpc(node, spawn_holders, 1)[0])
                ops.append(("exit", pid))
        return ops

    for _ in range(8):
        work = {node: round_ops(node) for node in NODES}
        with ThreadPoolExecutor(3) as pool:  # the nodes change at once: their deltas interleave
            list(pool.map(lambda n: c.rpc(n, apply_ops, work[n]), NODES))
        expected: dict[Any, dict[Any, list[Any]]] = {t: {} for t in topics}
        for (_node, _pid, topic, key), meta in truth.items():
            expected[topic].setdefault(key, []).append(meta)
        for node in NODES:
            assert c.rpc(node, wait_equal, expected, 30.0, timeout=40) is not None
            poll(lambda: checks_hold(c, node, f"prop-log-{node}"), timeout=20)
    for node in NODES:
        c.rpc(node, kill, agents[node])
        c.rpc(node, stop_log, f"prop-log-{node}")


def apply_ops(ops: list[tuple[Any, ...]]) -> None:
    for op in ops:
        if op[0] == "track":
            presence.track(op[2], op[3], op[4], pid=op[1])
        elif op[0] == "untrack":
            presence.untrack(op[2], op[3], pid=op[1])
        elif op[0] == "update":
            presence.update(op[2], op[3], op[4], pid=op[1])
        else:
            hermes.exit(op[1], "kill")


@pytest.mark.timeout(180)
def test_a_sigkilled_node_leaves_once_per_entry_and_its_restart_resurrects_nothing():
    topic = "victim"
    with hermes.LocalCluster(NODES) as c:  # c.start below needs the path too
        for node in ("a", "c"):
            c.rpc(node, start_log, f"kill-log-{node}", [topic])
        mine = c.rpc("a", spawn_holders, 1)
        c.rpc("a", track_all, [(mine[0], topic, "a:0", "stays")])
        doomed = c.rpc("b", spawn_holders, 50)
        c.rpc("b", track_all, [(pid, topic, f"b:{i % 10}", i) for i, pid in enumerate(doomed)])
        full = {topic: {"a:0": ["stays"], **{f"b:{k}": [i for i in range(50) if i % 10 == k] for k in range(10)}}}
        for node in ("a", "c"):
            assert c.rpc(node, wait_equal, full, 30.0, timeout=40) is not None
        start = time.monotonic()
        c.kill("b")
        left = {topic: {"a:0": ["stays"]}}
        for node in ("a", "c"):
            assert c.rpc(node, wait_equal, left, 30.0, timeout=40) is not None
        print(f"\nSIGKILLed node's 50 entries gone on both others {time.monotonic() - start:.3f} s after the kill")
        for node in ("a", "c"):
            diffs = c.rpc(node, log_call, f"kill-log-{node}", "diffs")
            leaves = Counter((k, m) for d in diffs for k, ms in d.leaves.items() for m in ms)
            assert leaves == Counter((f"b:{i % 10}", i) for i in range(50))  # exactly one leave per entry
            assert checks_hold(c, node, f"kill-log-{node}")
        c.start("b")  # a new incarnation: the old one's entries stay gone
        fresh = c.rpc("b", spawn_holders, 1)
        c.rpc("b", track_all, [(fresh[0], topic, "b:new", "new")])
        again = {topic: {"a:0": ["stays"], "b:new": ["new"]}}
        for node in ("a", "b", "c"):
            assert c.rpc(node, wait_equal, again, 30.0, timeout=40) is not None
        for node in ("a", "c"):
            assert checks_hold(c, node, f"kill-log-{node}")


async def restart_presence() -> tuple[hermes.Pid, hermes.Pid]:
    """Kill this node's presence actor; the system supervisor starts a new one (old, new)."""
    old = hermes.whereis(presence.NAME)
    ref = hermes.monitor(old)
    hermes.exit(old, "kill")
    await hermes.receive(match=lambda m: isinstance(m, hermes.Down) and m.ref == ref, timeout=5)
    deadline = time.monotonic() + 10
    while hermes.whereis(presence.NAME) in (None, old) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    return old, hermes.whereis(presence.NAME)


@pytest.mark.timeout(120)
def test_a_restarted_presence_actor_starts_empty_and_fetches_the_others(cluster):
    c = cluster
    topic = "restart"
    for node in NODES:
        c.rpc(node, start_log, f"restart-log-{node}", [topic])
    holders = {node: c.rpc(node, spawn_holders, 3) for node in NODES}
    for node in NODES:
        c.rpc(node, track_all, [(pid, topic, f"{node}:{i}", i) for i, pid in enumerate(holders[node])])
    full = {topic: {f"{node}:{i}": [i] for node in NODES for i in range(3)}}
    for node in NODES:
        assert c.rpc(node, wait_equal, full, 30.0, timeout=40) is not None
    old, new = c.rpc("c", restart_presence)
    assert new is not None and new != old
    without_c = {topic: {k: v for k, v in full[topic].items() if not k.startswith("c:")}}
    for node in NODES:  # c's entries died with its replica, everywhere; c fetched the others again
        assert c.rpc(node, wait_equal, without_c, 30.0, timeout=40) is not None
        poll(lambda: checks_hold(c, node, f"restart-log-{node}"), timeout=20)
    fresh = c.rpc("c", spawn_holders, 1)
    c.rpc("c", track_all, [(fresh[0], topic, "c:again", "again")])
    again = {topic: {**without_c[topic], "c:again": ["again"]}}
    for node in NODES:  # the new replica replicates as the old one did
        assert c.rpc(node, wait_equal, again, 30.0, timeout=40) is not None
    for node in NODES:
        c.rpc(node, kill, holders[node] + (fresh if node == "c" else []))
        c.rpc(node, stop_log, f"restart-log-{node}")


def stop_node() -> None:
    from hermes.runtime import lowlevel

    lowlevel.current_node().request_stop()  # a clean stop, as SIGTERM


@pytest.mark.timeout(120)
def test_a_node_that_stops_cleanly_leaves_once_per_entry():
    topic = "stopping"
    with hermes.LocalCluster(NODES) as c:
        for node in ("a", "c"):
            c.rpc(node, start_log, f"stop-log-{node}", [topic])
        pids = c.rpc("b", spawn_holders, 20)
        c.rpc("b", track_all, [(pid, topic, f"b:{i % 5}", i) for i, pid in enumerate(pids)])
        full = {topic: {f"b:{k}": [i for i in range(20) if i % 5 == k] for k in range(5)}}
        for node in ("a", "c"):
            assert c.rpc(node, wait_equal, full, 30.0, timeout=40) is not None
        c.rpc("b", stop_node)
        for node in ("a", "c"):
            assert c.rpc(node, wait_equal, {topic: {}}, 30.0, timeout=40) is not None
            diffs = c.rpc(node, log_call, f"stop-log-{node}", "diffs")
            leaves = Counter((k, m) for d in diffs for k, ms in d.leaves.items() for m in ms)
            assert leaves == Counter((f"b:{i % 5}", i) for i in range(20))
            assert checks_hold(c, node, f"stop-log-{node}")


# -- a real cut: three test hosts in network namespaces ---------------------------------

def _find_netns() -> str:
    """shared/tools/netns.sh beside the checkout (as CI lays it), else the workplace's."""
    import os

    beside = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "shared", "tools", "netns.sh")
    return beside if os.path.exists(beside) else "/work/shared/tools/netns.sh"


NETNS = _find_netns()


async def netns_app() -> None:
    """A node's first actor on a test host: tracks PRESENCE_N entries under its own
    name, then writes what it lists and the diffs it saw to PRESENCE_OUT/<name>.json."""
    import json
    import os

    out, n = os.environ["PRESENCE_OUT"], int(os.environ["PRESENCE_N"])
    me = hermes.node().split("@")[0]
    hermes.subscribe("cut")
    joins: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    # what peers' replicas brought before we subscribed (main starts after the first
    # discovery round): the initial state, then the diffs, as a Phoenix client reads them
    joins.update(k.split(":")[0] for k, metas in presence.list("cut").items() for _ in metas)
    for i in range(n):
        presence.track("cut", f"{me}:{i}", i)
    while True:
        try:
            msg = await hermes.receive(timeout=0.05)
        except TimeoutError:
            msg = None
        if isinstance(msg, presence.Diff):
            joins.update(k.split(":")[0] for k, metas in msg.joins.items() for _ in metas)
            leaves.update(k.split(":")[0] for k, metas in msg.leaves.items() for _ in metas)
        listed = presence.list("cut")
        state = {"keys": dict(Counter(k.split(":")[0] for k in listed)),
                 "duplicates": sum(len(m) - 1 for m in listed.values()),
                 "joins": dict(joins), "leaves": dict(leaves), "nodes": len(hermes.nodes())}
        with open(f"{out}/{me}.tmp", "w") as f:
            json.dump(state, f)
        os.replace(f"{out}/{me}.tmp", f"{out}/{me}.json")


def _netns_unavailable() -> str | None:
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("ip") is None or not os.path.exists(NETNS):
        return "needs root, iproute2 and the shared netns.sh"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    if any(line.split()[0] in ("h1", "h2", "h3") for line in listed.splitlines() if line.strip()):
        return "test hosts h1..h3 exist already: another run is using them"
    return None


@pytest.mark.timeout(180)
def test_a_real_cut_of_a_test_host_and_heal(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys

    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    n, names, port = 200, ["a", "b", "c"], 4471
    hosts = {name: f"198.18.0.{i + 1}" for i, name in enumerate(names)}
    subprocess.run([NETNS, "up", "3"], check=True, capture_output=True)
    procs = []
    try:
        env = {**os.environ, "HERMES_COOKIE": "presence-netns-test", "PRESENCE_OUT": str(tmp_path),
               "PRESENCE_N": str(n), "PYTHONPATH": os.pathsep.join([TESTS_DIR, str(ROOT_DIR)])}
        for i, name in enumerate(names):
            peers = ",".join(f"{hosts[p]}:{port}" for p in names if p != name)
            args = ["ip", "netns", "exec", f"h{i + 1}", sys.executable, "-m", "hermes", "node",
                    "--name", f"{name}@{hosts[name]}", "--host", hosts[name], "--port", str(port),
                    "--peers", peers, "--tick-interval", "0.25", "--app", "test_presence:netns_app"]
            log = open(tmp_path / f"{name}.log", "wb")
            procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))

        def state(name: str) -> dict[str, Any]:
            try:
                return json.loads((tmp_path / f"{name}.json").read_text())
            except (OSError, ValueError):
                return {}

        def everyone(expect_keys: dict[str, dict[str, int]]) -> bool:
            return all(state(name).get("keys") == keys and state(name).get("duplicates") == 0
                       for name, keys in expect_keys.items())

        whole = {name: {p: n for p in names} for name in names}
        poll(lambda: everyone(whole), timeout=60)
        subprocess.run([NETNS, "cut", "2"], check=True, capture_output=True)  # unplug b's host
        poll(lambda: everyone({"a": {"a": n, "c": n}, "c": {"a": n, "c": n}, "b": {"b": n}}), timeout=30)
        subprocess.run([NETNS, "heal", "2"], check=True, capture_output=True)
        poll(lambda: everyone(whole), timeout=60)  # back as joins, no duplicates

        def diffs_of_b(name: str) -> tuple[int, int]:  # the state file may show the list before the diffs
            seen = state(name)
            return seen.get("joins", {}).get("b", 0), seen.get("leaves", {}).get("b", 0)

        for name in ("a", "c"):  # joined, left at the cut, joined again: no more, no less
            try:
                poll(lambda: diffs_of_b(name) == (2 * n, n), timeout=30)
            except AssertionError:
                logs = "".join((tmp_path / f"{x}.log").read_text()[-2000:] for x in names)
                raise AssertionError(f"{name} saw b's (joins, leaves) = {diffs_of_b(name)}, not {(2 * n, n)}; "
                                     f"states {[state(x) for x in names]}; logs:\n{logs}") from None
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
        subprocess.run([NETNS, "down", "3"], capture_output=True)

"""Process groups, after Erlang's ``pg_SUITE``: one node in this process, then real clusters.

Single-node cases run as the first actor of a standalone node (``run_node``).
Cluster cases drive real node processes through ``LocalCluster``: one cluster
shared by the module for the cases that leave it whole, and small dedicated
clusters for the destructive ones (SIGKILL, SIGSTOP, service kill, restart).

Functions shipped to nodes with ``on(...)`` are the helpers of this module:
the module is registered with cloudpickle to travel by value, since the nodes
cannot import a test module. Every wait polls with a deadline (``poll``).

Every node also has the PubSub server in the group ``("hermes", "hermes.pubsub")``;
assertions on ``which_groups`` ignore it (``user_groups``).
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any, Callable

import cloudpickle
import pytest

import hermes
from _cluster import poll
from conftest import no_message, receive_down, run_node, wait_until
from hermes import pg, pubsub

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(60)
SYSTEM_GROUPS = {pubsub.group_of(pubsub.DEFAULT)}
DEADLINE = 10.0  # for propagation polls: generous, a slow CI machine must not flake


# -- helpers that run on the nodes (shipped by value) -------------------------------------------


async def _forever() -> None:
    await hermes.receive(match=lambda m: m == "stop")


def spawn_members(n: int = 1) -> list[hermes.Pid]:
    """``n`` idle actors on this node (they end on ``"stop"`` or a kill)."""
    return [hermes.spawn(_forever) for _ in range(n)]


def spawn_and_join(group: Any, n: int = 1) -> list[hermes.Pid]:
    pids = spawn_members(n)
    pg.join(group, pids)
    return pids


def join(group: Any, pids: Any) -> None:
    return pg.join(group, pids)


def leave(group: Any, pids: Any) -> bool:
    return pg.leave(group, pids)


def members(group: Any) -> list[hermes.Pid]:
    return sorted(pg.get_members(group))


def local_members(group: Any) -> list[hermes.Pid]:
    return sorted(pg.get_local_members(group))


def user_groups(local: bool = False) -> list[Any]:
    groups = pg.which_local_groups() if local else pg.which_groups()
    return sorted((g for g in groups if g not in SYSTEM_GROUPS), key=repr)


def view(group: Any) -> tuple[list[hermes.Pid], list[hermes.Pid], bool, bool]:
    """Everything a node says about ``group`` in one round trip."""
    groups, local_groups = pg.which_groups(), pg.which_local_groups()
    return members(group), local_members(group), group in groups, group in local_groups


async def kill(pids: list[hermes.Pid]) -> None:
    """Kill local actors and wait for each to be gone."""
    for pid in pids:
        ref = hermes.monitor(pid)
        hermes.exit(pid, "kill")
        await hermes.receive(match=lambda m: isinstance(m, hermes.Down) and m.ref == ref, timeout=5.0)


class EventLog(hermes.Actor):
    """Monitors ``group`` and keeps every ``pg.Event`` as ``(kind, sorted pids)``."""

    def __init__(self, name: str, group: Any) -> None:
        hermes.register(name)
        self.ref, self.initial = pg.monitor(group)
        self.events: list[tuple[str, list[hermes.Pid]]] = []

    def handle_info(self, msg: Any) -> None:
        if isinstance(msg, pg.Event) and msg.ref == self.ref:
            self.events.append((msg.kind, sorted(msg.pids)))

    def handle_call(self, request: Any, sender: Any) -> Any:
        return list(self.events)


def start_event_log(name: str, group: Any) -> None:
    hermes.spawn(EventLog, name, group)


async def events(name: str) -> list[tuple[str, list[hermes.Pid]]]:
    return await hermes.call(name, "events")


class Collector(hermes.Actor):
    """Subscribes to ``topic`` and keeps what arrives."""

    def __init__(self, name: str, topic: str) -> None:
        hermes.register(name)
        hermes.subscribe(topic)
        self.got: list[Any] = []

    def handle_info(self, msg: Any) -> None:
        self.got.append(msg)

    def handle_call(self, request: Any, sender: Any) -> Any:
        return list(self.got)


def start_collector(name: str, topic: str) -> None:
    hermes.spawn(Collector, name, topic)


async def collected(name: str) -> list[Any]:
    return await hermes.call(name, "get")


def publish(topic: str, msg: Any) -> None:
    hermes.publish(topic, msg)


# -- helpers for the driver ------------------------------------------------------------------


def replay(initial: list[hermes.Pid], log: list[tuple[str, list[hermes.Pid]]]) -> list[hermes.Pid]:
    """The membership that ``initial`` plus the events of ``log`` add up to (sorted)."""
    current = list(initial)
    for kind, pids in log:
        for pid in pids:
            if kind == "join":
                current.append(pid)
            else:
                current.remove(pid)  # a leave of a pid that is not there is an error
    return sorted(current)


def on(c: hermes.LocalCluster, node: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one of the helpers above on ``node`` (the lambda makes cloudpickle ship it by value)."""
    return c.rpc(node, lambda *a: fn(*a), *args)


def converge(c: hermes.LocalCluster, nodes: list[str], fn: Callable[..., Any], *args: Any,
             expect: Any, timeout: float = DEADLINE) -> None:
    """Poll until ``fn(*args)`` returns ``expect`` on every node of ``nodes``."""
    for node in nodes:
        poll(lambda: on(c, node, fn, *args) == expect, timeout=timeout)


@pytest.fixture(scope="module")
def shared():
    with hermes.LocalCluster(["a", "b", "c"]) as cluster:
        yield cluster


@pytest.fixture
def c(shared):
    shared.wait_connected(timeout=15)  # an earlier case may have split the mesh for a moment
    yield shared


# -- one node: single, multi-join, leave, empty groups ----------------------------------------------


def test_single():
    async def main():
        me = hermes.self()
        assert pg.join("single", me) is None
        assert pg.join("single", [me, me]) is None
        assert pg.get_local_members("single") == [me, me, me]
        assert pg.get_members("single") == [me, me, me]
        assert pg.leave("$missing$", me) is False
        assert pg.leave("single", [me, me]) is True
        assert pg.leave("single", me) is True
        assert pg.leave("single", me) is False
        assert user_groups() == []
        assert user_groups(local=True) == []
        assert pg.get_local_members("single") == []
        assert pg.get_members("single") == []
        # double: a second, different member
        pg.join("single")
        other = hermes.spawn(_forever)
        pg.join("single", other)
        assert sorted(pg.get_members("single")) == sorted([me, other])
        assert sorted(pg.get_local_members("single")) == sorted([me, other])
        await kill([other])
        assert pg.get_local_members("single") == [me]  # at once: no sync needed
        assert pg.get_members("single") == [me]
        assert pg.leave("single") is True

    run_node(main)


def test_join_defaults_to_the_caller_and_counts_each_occurrence():
    async def main():
        me = hermes.self()
        pg.join("g")
        pg.join("g")
        pg.join("h", [me])
        assert pg.get_members("g") == [me, me]
        assert user_groups() == ["g", "h"]
        assert user_groups(local=True) == ["g", "h"]
        assert pg.leave("g") is True
        assert pg.get_members("g") == [me]
        assert pg.leave("nobody") is False
        assert pg.leave("g", []) is False
        assert pg.join("g", []) is None
        assert pg.get_members("g") == [me]

    run_node(main)


def test_leave_removes_one_membership_per_occurrence_and_only_joined_pids():
    async def main():
        me = hermes.self()
        other = hermes.spawn(_forever)
        pg.join("g", [me, other, other])
        assert pg.leave("g", [other, me, me]) is True  # the second `me` is not joined: ignored
        assert pg.get_members("g") == [other]
        assert pg.leave("g", [me]) is False
        assert pg.leave("g", [other, other]) is True
        assert pg.get_members("g") == []
        assert "g" not in pg.which_groups()
        await kill([other])

    run_node(main)


def test_empty_groups_are_never_listed():
    """Each way a group can empty on one node: leave, leave of a list, exit, kill."""

    async def main():
        me = hermes.self()
        pg.join("by-leave")
        pg.leave("by-leave")
        a, b = hermes.spawn(_forever), hermes.spawn(_forever)
        pg.join("by-list", [a, b, a])
        pg.leave("by-list", [b, a, a])
        pg.join("by-exit", a)
        pg.join("by-kill", [b, b])
        hermes.send(a, "stop")
        await kill([b])
        ref = hermes.monitor(a)
        await receive_down(ref)
        assert user_groups() == []
        assert user_groups(local=True) == []
        for group in ("by-leave", "by-list", "by-exit", "by-kill"):
            assert pg.get_members(group) == [] and pg.get_local_members(group) == []
        assert me not in pg.get_members("by-leave")

    run_node(main)


@pytest.mark.parametrize("how", ["normal", "crash", "kill"])
def test_a_dead_actor_leaves_all_its_groups_at_once(how):
    async def worker(owner):
        pg.join("one")
        pg.join("two")
        pg.join("two")
        hermes.send(owner, "joined")
        msg = await hermes.receive()
        if msg == "crash":
            raise RuntimeError("told to crash")

    async def main():
        keeper = hermes.spawn(_forever)
        pg.join("two", keeper)
        pid = hermes.spawn(worker, hermes.self())
        await hermes.receive(match=lambda m: m == "joined", timeout=5.0)
        assert pg.get_members("two") == [keeper, pid, pid]
        ref = hermes.monitor(pid)
        if how == "kill":
            hermes.exit(pid, "kill")
        else:
            hermes.send(pid, "crash" if how == "crash" else "stop")
        await receive_down(ref)
        # checked the moment the Down arrives: no polling
        assert pg.get_members("one") == []
        assert pg.get_members("two") == [keeper]
        assert user_groups() == ["two"]
        await kill([keeper])

    run_node(main)


def test_remote_pids_raise_value_error_and_change_nothing():
    async def main():
        me = hermes.self()
        remote = hermes.Pid("elsewhere@host", 1, 7)
        pg.join("g")
        for pids in (remote, [remote], [remote, remote], [me, remote]):
            with pytest.raises(ValueError):
                pg.join("g", pids)
            with pytest.raises(ValueError):
                pg.join("fresh", pids)
        assert pg.get_members("g") == [me]
        assert pg.get_members("fresh") == []
        assert user_groups() == ["g"]
        with pytest.raises(TypeError):
            pg.join("fresh", ["not a pid"])
        assert user_groups() == ["g"]

    run_node(main)


def test_dead_local_pids_are_not_joined():
    async def main():
        pid = hermes.spawn(_forever)
        await kill([pid])
        pg.join("g", pid)
        assert pg.get_members("g") == []
        assert "g" not in pg.which_groups()

    run_node(main)


def test_calls_outside_an_actor_need_pids():
    async def main():
        import asyncio
        import contextvars

        loop = asyncio.get_running_loop()
        outcome = loop.create_future()

        def outside():
            errors = []
            for fn in (lambda: pg.join("g"), lambda: pg.leave("g"), lambda: pg.monitor("g")):
                try:
                    fn()
                except hermes.NotInActor as exc:
                    errors.append(type(exc))
            outcome.set_result(errors)

        loop.call_soon(outside, context=contextvars.Context())
        assert await asyncio.wait_for(outcome, 5.0) == [hermes.NotInActor] * 3
        assert pg.get_members("g") == []

    run_node(main)


# -- one node: monitors ----------------------------------------------------------------


def is_event(ref):
    return lambda m: isinstance(m, pg.Event) and m.ref == ref


def test_monitor_reports_joins_and_leaves_one_event_per_batch():
    async def main():
        me = hermes.self()
        a, b = hermes.spawn(_forever), hermes.spawn(_forever)
        pg.join("g", a)
        ref, current = pg.monitor("g")
        assert current == [a]
        pg.join("g", [b, me, b])
        event = await hermes.receive(match=is_event(ref), timeout=5.0)
        assert event == pg.Event(ref, "join", "g", [b, me, b])
        assert pg.leave("g", [b, b]) is True
        assert await hermes.receive(match=is_event(ref), timeout=5.0) == pg.Event(ref, "leave", "g", [b, b])
        await kill([a])
        assert await hermes.receive(match=is_event(ref), timeout=5.0) == pg.Event(ref, "leave", "g", [a])
        pg.join("other")  # another group: no event
        assert await no_message(is_event(ref))
        assert pg.demonitor(ref) is True
        assert pg.demonitor(ref) is False
        pg.join("g")
        assert await no_message(is_event(ref))
        await kill([b])

    run_node(main)


def test_monitor_of_a_multi_membership_exit_is_one_event():
    async def main():
        pid = hermes.spawn(_forever)
        pg.join("g", [pid, pid, pid])
        ref, current = pg.monitor("g")
        assert current == [pid, pid, pid]
        await kill([pid])
        assert await hermes.receive(match=is_event(ref), timeout=5.0) == pg.Event(ref, "leave", "g",
                                                                                 [pid, pid, pid])
        assert await no_message(is_event(ref))

    run_node(main)


def test_monitor_self_join_and_exit():
    """GH-7625: an actor that monitors a group and joins it, then exits, breaks nothing."""

    async def monitor_and_join():
        ref, _ = pg.monitor("self")
        pg.join("self")
        event = await hermes.receive(match=is_event(ref), timeout=5.0)
        assert event.kind == "join" and event.pids == [hermes.self()]

    async def main():
        pid = hermes.spawn(monitor_and_join)
        ref = hermes.monitor(pid)
        down = await receive_down(ref)
        assert down.reason == "normal"
        assert pg.get_members("self") == []
        assert user_groups() == []
        # pg still works, and the dead watcher's monitor is gone
        scope = pg._scope.get_scope()
        assert all(watcher != pid for watcher, _ in scope.monitors.values())
        pg.join("self")
        assert pg.get_members("self") == [hermes.self()]

    run_node(main)


def test_multi_monitor_of_a_dead_watcher_is_dropped():
    """A watcher of several groups dies: none of its monitors survive (white box), even for
    groups that do not change when it dies."""

    async def watcher(owner):
        pg.monitor("one")
        pg.monitor("two")
        pg.monitor("untouched")
        pg.join("one")
        pg.join("two")
        hermes.send(owner, "ready")
        await hermes.receive(match=lambda m: m == "stop")

    async def main():
        pid = hermes.spawn(watcher, hermes.self())
        await hermes.receive(match=lambda m: m == "ready", timeout=5.0)
        scope = pg._scope.get_scope()
        assert sum(1 for w, _ in scope.monitors.values() if w == pid) == 3
        ref = hermes.monitor(pid)
        hermes.send(pid, "stop")
        await receive_down(ref)
        assert [g for w, g in scope.monitors.values() if w == pid] == []
        assert user_groups() == []

    run_node(main)


# -- clusters: the shared one ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_two(c):
    pid, = on(c, "a", spawn_and_join, "two")
    assert on(c, "a", local_members, "two") == [pid]
    converge(c, ["b", "c"], view, "two", expect=([pid], [], True, False))
    on(c, "a", kill, [pid])
    assert on(c, "a", view, "two") == ([], [], False, False)  # at once on its own node
    converge(c, ["b", "c"], view, "two", expect=([], [], False, False))

    pid2, pid3 = on(c, "b", spawn_members, 2)
    on(c, "b", join, "two", pid2)
    on(c, "b", join, "two", pid3)
    converge(c, ["a", "c"], members, "two", expect=sorted([pid2, pid3]))
    assert on(c, "a", local_members, "two") == []
    on(c, "b", kill, [pid2, pid3])
    converge(c, ["a", "b", "c"], view, "two", expect=([], [], False, False))


@pytest.mark.timeout(60)
def test_process_owner_check(c):
    """A real pid of another node cannot be joined here, alone or in a list; nothing changes."""
    remote, = on(c, "b", spawn_members)
    local, = on(c, "a", spawn_members)
    for pids in (remote, [remote, remote], [local, remote]):
        with pytest.raises(ValueError):
            on(c, "a", join, "owner", pids)
    assert on(c, "a", view, "owner") == ([], [], False, False)
    assert on(c, "b", view, "owner") == ([], [], False, False)
    on(c, "a", kill, [local])
    on(c, "b", kill, [remote])


@pytest.mark.timeout(60)
def test_nolocal(c):
    pid, = on(c, "b", spawn_members)
    on(c, "b", join, "nolocal", pid)
    on(c, "b", join, "nolocal", pid)
    converge(c, ["a"], members, "nolocal", expect=[pid, pid])
    assert on(c, "a", local_members, "nolocal") == []
    assert "nolocal" not in on(c, "a", user_groups, True)
    on(c, "b", kill, [pid])
    converge(c, ["a", "c"], members, "nolocal", expect=[])


@pytest.mark.timeout(60)
def test_double(c):
    pid, = on(c, "a", spawn_and_join, "double")
    on(c, "a", join, "double", [pid])
    assert on(c, "a", members, "double") == [pid, pid]
    converge(c, ["b", "c"], members, "double", expect=[pid, pid])
    assert on(c, "a", leave, "double", pid) is True
    converge(c, ["a", "b", "c"], members, "double", expect=[pid])
    on(c, "a", kill, [pid])
    converge(c, ["a", "b", "c"], view, "double", expect=([], [], False, False))


@pytest.mark.timeout(60)
def test_group_leave(c):
    pid, = on(c, "b", spawn_members)
    total = [pid] * 16
    on(c, "b", join, "group_leave", total)
    assert on(c, "b", leave, "group_leave", total[:4]) is True
    converge(c, ["a", "b", "c"], members, "group_leave", expect=[pid] * 12)
    on(c, "b", kill, [pid])
    converge(c, ["a", "b", "c"], view, "group_leave", expect=([], [], False, False))


@pytest.mark.timeout(60)
def test_empty_group_by_remote_leave(c):
    def remote_buckets(node_name):
        entry = pg._scope.get_scope().remote.get(node_name)
        return None if entry is None else {g: sorted(p) for g, p in entry[1].items() if g not in SYSTEM_GROUPS}

    b = c.nodes[1]
    pid, = on(c, "b", spawn_members)
    on(c, "b", join, "egbrl", pid)
    converge(c, ["a"], members, "egbrl", expect=[pid])
    assert on(c, "a", remote_buckets, b) == {"egbrl": [pid]}
    assert on(c, "b", leave, "egbrl", pid) is True
    converge(c, ["a", "c"], view, "egbrl", expect=([], [], False, False))
    assert on(c, "a", remote_buckets, b) == {}  # the empty group is deleted, not kept as []

    pid2, = on(c, "b", spawn_members)
    on(c, "b", join, "egbrl", [pid, pid2])
    converge(c, ["a"], members, "egbrl", expect=sorted([pid, pid2]))
    assert on(c, "b", leave, "egbrl", [pid2, pid]) is True
    converge(c, ["a", "c"], view, "egbrl", expect=([], [], False, False))
    assert on(c, "a", remote_buckets, b) == {}
    on(c, "b", kill, [pid, pid2])


@pytest.mark.timeout(60)
def test_remote_monitor_events(c):
    """A monitor on one node sees another node's joins and leaves, batched as they were made."""
    on(c, "a", start_event_log, "log-remote", "remote-mon")
    pids = on(c, "b", spawn_members, 2)
    on(c, "b", join, "remote-mon", [pids[0], pids[1], pids[0]])
    on(c, "b", leave, "remote-mon", pids[1])
    on(c, "b", kill, [pids[0]])
    expect = [("join", sorted([pids[0], pids[1], pids[0]])), ("leave", [pids[1]]), ("leave", [pids[0], pids[0]])]
    poll(lambda: on(c, "a", events, "log-remote") == expect, timeout=DEADLINE)
    on(c, "b", kill, [pids[1]])


@pytest.mark.timeout(60)
def test_netsplit(c):
    """Members of a disconnected node vanish at once and come back with the connection."""
    b = c.nodes[1]
    old, = on(c, "b", spawn_and_join, "$invisible")
    converge(c, ["a"], members, "$invisible", expect=[old])
    on(c, "a", start_event_log, "log-netsplit", "$invisible")

    def split(peer):
        assert hermes.disconnect(peer) is True
        return peer in hermes.nodes(), members("$invisible"), "$invisible" in pg.which_groups()

    assert on(c, "a", split, b) == (False, [], False)  # at once: no wait for any lease

    # in the partition (as long as it lasts: discovery reconnects within about a second)
    new, = on(c, "b", spawn_and_join, "netsplit")
    assert on(c, "b", leave, "$invisible", old) is True
    on(c, "b", join, "$visible", old)
    assert on(c, "b", local_members, "$visible") == [old]
    local, = on(c, "a", spawn_and_join, "netsplit")

    async def reconnect(peer):
        return await hermes.connect(peer)

    assert on(c, "a", reconnect, b) is True
    expect = sorted([new, local])
    converge(c, ["a", "b"], members, "netsplit", expect=expect)
    converge(c, ["a", "b"], members, "$visible", expect=[old])
    converge(c, ["a", "b"], view, "$invisible", expect=([], [], False, False))
    # the watcher on a saw old leave at the split; replaying its events gives what a sees now
    # (discovery may have healed the split before b left "$invisible": then old came back first)
    log = on(c, "a", events, "log-netsplit")
    assert log[0] == ("leave", [old])
    assert replay([old], log) == []
    on(c, "a", kill, [local])
    on(c, "b", kill, [new, old])
    c.wait_connected(timeout=15)


@pytest.mark.timeout(90)
def test_exchange(c):
    a, b, node3 = c.nodes
    pids10 = on(c, "a", spawn_members, 10)
    pids2 = on(c, "b", spawn_members, 10)
    pids11 = on(c, "a", spawn_members, 10)
    to_kill, pids1 = pids10[:3], pids10[3:]
    on(c, "a", join, "exchange", pids10)
    converge(c, ["c"], members, "exchange", expect=sorted(pids10))
    on(c, "a", kill, to_kill)
    converge(c, ["c"], members, "exchange", expect=sorted(pids1))

    def split(*peers):
        for peer in peers:
            assert hermes.disconnect(peer) is True
        return members("exchange")

    assert on(c, "c", split, a, b) == []  # nothing of a or b is visible on c any more

    for pid in pids2:
        on(c, "b", join, "exchange", pid)
    for pid in pids11:
        on(c, "a", join, "second", pid)
    on(c, "a", join, "third", pids11)

    async def reconnect(*peers):
        return [await hermes.connect(peer) for peer in peers]

    assert on(c, "c", reconnect, a, b) == [True, True]

    def both():
        return sorted(pg.get_members("second") + pg.get_members("exchange"))

    converge(c, ["c"], both, expect=sorted(pids1 + pids2 + pids11))
    converge(c, ["c"], members, "third", expect=sorted(pids11))
    left, stay = pids11[:3], pids11[3:]
    assert on(c, "a", leave, "third", left) is True
    converge(c, ["c", "b"], members, "third", expect=sorted(stay))
    assert on(c, "a", leave, "left", stay) is False
    assert on(c, "a", leave, "third", stay) is True
    converge(c, ["c", "b", "a"], view, "third", expect=([], [], False, False))
    on(c, "a", kill, pids1 + pids11)
    on(c, "b", kill, pids2)
    converge(c, ["a", "b", "c"], members, "exchange", expect=[])
    c.wait_connected(timeout=15)


# -- clusters: dedicated, destructive ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_initial():
    """A node started later sees the members that were there before it."""
    with hermes.LocalCluster(["a"]) as c:
        pid, = on(c, "a", spawn_and_join, "initial")
        c.start("b")
        converge(c, ["b"], view, "initial", expect=([pid], [], True, False))
        on(c, "a", kill, [pid])
        converge(c, ["b"], view, "initial", expect=([], [], False, False))


@pytest.mark.timeout(60)
def test_members_of_a_sigkilled_node_disappear_everywhere():
    with hermes.LocalCluster(["a", "b", "c"]) as c:
        pids = on(c, "b", spawn_and_join, "victim", 2)
        on(c, "b", join, "victim2", [pids[0], pids[0]])
        mine, = on(c, "a", spawn_and_join, "victim")
        converge(c, ["a", "c"], members, "victim", expect=sorted(pids + [mine]))
        converge(c, ["a", "c"], members, "victim2", expect=[pids[0], pids[0]])
        on(c, "c", start_event_log, "log-kill", "victim")
        start = time.monotonic()
        c.kill("b")
        for node in ("a", "c"):
            poll(lambda: on(c, node, members, "victim") == [mine], timeout=5.0)
            poll(lambda: "victim2" not in on(c, node, user_groups), timeout=5.0)
        elapsed = time.monotonic() - start
        assert elapsed < 5.0
        assert on(c, "c", events, "log-kill") == [("leave", sorted(pids))]
        b_name = c.nodes[1]
        assert all(b_name not in on(c, node, hermes.nodes) for node in ("a", "c"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tick_interval", [0.2, 10.0], ids=["ticks-or-lease", "lease-only"])
def test_sigstopped_node_is_removed(tick_interval):
    """A frozen node is removed with its members: by the mesh ticks or by its lease in the
    service, whichever notices first; with ticks of 10 s only the lease (1 s) can do it in time."""
    with hermes.LocalCluster(["a", "b"], lease_ttl=1.0, tick_interval=tick_interval) as c:
        frozen, = on(c, "b", spawn_and_join, "frozen")
        converge(c, ["a"], members, "frozen", expect=[frozen])
        os_pid = c.rpc("b", os.getpid)
        start = time.monotonic()
        os.kill(os_pid, signal.SIGSTOP)
        try:
            poll(lambda: on(c, "a", view, "frozen") == ([], [], False, False), timeout=5.0, interval=0.05)
            assert time.monotonic() - start < 5.0
        finally:
            os.kill(os_pid, signal.SIGCONT)
        # thawed, it registers again and its members come back
        converge(c, ["a"], members, "frozen", expect=[frozen], timeout=15.0)
        c.wait_connected(timeout=15)


@pytest.mark.timeout(90)
def test_service_kill_and_restart_loses_no_membership():
    with hermes.LocalCluster(["a", "b"]) as c:
        pa, = on(c, "a", spawn_and_join, "svc")
        pb, = on(c, "b", spawn_and_join, "svc")
        converge(c, ["a", "b"], members, "svc", expect=sorted([pa, pb]))
        on(c, "a", start_event_log, "log-svc", "svc")
        on(c, "b", start_collector, "collector", "svc-topic")
        poll(lambda: on(c, "b", lambda: bool(hermes.subscribers("svc-topic"))))

        c.kill_service()
        # publishing between connected nodes goes on while the service is down
        on(c, "a", publish, "svc-topic", "while down")
        poll(lambda: on(c, "b", collected, "collector") == ["while down"], timeout=5.0)
        assert on(c, "a", members, "svc") == sorted([pa, pb])
        assert on(c, "b", members, "svc") == sorted([pa, pb])
        # a join while it is down is applied locally, and reaches the others once it is back
        pa2, = on(c, "a", spawn_and_join, "svc")
        assert on(c, "a", members, "svc") == sorted([pa, pa2, pb])

        c.start_service()
        converge(c, ["a", "b"], members, "svc", expect=sorted([pa, pa2, pb]), timeout=15.0)
        on(c, "a", publish, "svc-topic", "after restart")
        poll(lambda: on(c, "b", collected, "collector") == ["while down", "after restart"], timeout=5.0)
        # nothing was lost on the way: the watcher on a never saw a member leave
        log = on(c, "a", events, "log-svc")
        assert [kind for kind, _ in log if kind == "leave"] == [], log
        # and a node started now finds everybody through the restarted service
        c.start("late")
        converge(c, ["late"], members, "svc", expect=sorted([pa, pa2, pb]))


@pytest.mark.timeout(90)
def test_a_restarted_node_comes_back_clean():
    with hermes.LocalCluster(["a", "b"]) as c:
        old, = on(c, "b", spawn_and_join, "reborn")
        on(c, "b", join, "old-only", old)
        converge(c, ["a"], members, "reborn", expect=[old])
        c.kill("b")
        converge(c, ["a"], view, "reborn", expect=([], [], False, False), timeout=5.0)
        c.start("b")
        new, = on(c, "b", spawn_and_join, "reborn")
        assert new.creation != old.creation
        converge(c, ["a", "b"], members, "reborn", expect=[new])
        for node in ("a", "b"):
            assert "old-only" not in on(c, node, user_groups)
            assert on(c, node, members, "old-only") == []
        assert on(c, "b", user_groups, True) == ["reborn"]


# -- scope restart (pg_SUITE scope_restart): local members are gone, remote ones come back ----------


async def _restart_scope() -> hermes.Pid:
    """Kill this node's pg scope and wait for its supervisor to start a new one.
    (Self-contained: it also runs on cluster nodes, which cannot import conftest.)"""
    old = hermes.whereis("hermes.pg")
    ref = hermes.monitor(old)
    hermes.exit(old, "kill")
    await hermes.receive(match=lambda m: isinstance(m, hermes.Down) and m.ref == ref, timeout=5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pid = hermes.whereis("hermes.pg")
        if pid is not None and pid != old:
            return pid
        await asyncio.sleep(0.005)
    raise AssertionError("the pg scope was not restarted")


def test_scope_restart_on_one_node_forgets_local_members_and_serves_again():
    async def main():
        me = hermes.self()
        pg.join("restart", [me, me])
        ref, members_then = pg.monitor("restart")  # a monitor dies with its scope, too
        assert members_then == [me, me]
        await _restart_scope()
        assert pg.get_members("restart") == []
        assert "restart" not in pg.which_groups()
        # the system supervisor restarted the PGServer after the scope: it joined again
        await wait_until(lambda: [p.node for p in pg.get_members(pubsub.group_of(pubsub.DEFAULT))] == [hermes.node()])
        pg.join("restart", me)
        assert pg.get_members("restart") == [me]
        assert pg.demonitor(ref) is False  # the old scope's monitor is gone
        return True

    assert run_node(main) is True


async def _restart_scope_here() -> bool:
    await _restart_scope()
    return True


@pytest.mark.timeout(90)
def test_scope_restart_across_nodes(c):
    local_a = on(c, "a", spawn_and_join, "scope-restart", 2)
    remote_b, = on(c, "b", spawn_and_join, "scope-restart")
    everyone = sorted([*local_a, remote_b])
    converge(c, ["a", "b", "c"], members, "scope-restart", expect=everyone)
    on(c, "a", _restart_scope_here)
    # on a: remote pids joined again, local ones missing; the other nodes see a's locals leave
    converge(c, ["a", "b", "c"], members, "scope-restart", expect=[remote_b], timeout=15)
    # a's restarted PGServer is in the pubsub group again everywhere: publishing reaches a
    group_nodes = lambda: sorted({p.node for p in members(pubsub.group_of(pubsub.DEFAULT))})  # noqa: E731
    converge(c, ["a", "b", "c"], group_nodes, expect=sorted(c.nodes), timeout=15)
    on(c, "a", start_collector, "after-scope-restart", "scope-restart-topic")
    poll(lambda: on(c, "a", pubsub.subscribers, "scope-restart-topic") != [], timeout=DEADLINE)
    on(c, "b", publish, "scope-restart-topic", "still here")
    poll(lambda: on(c, "a", collected, "after-scope-restart") == ["still here"], timeout=DEADLINE)
    on(c, "a", kill, local_a)
    on(c, "b", kill, [remote_b])

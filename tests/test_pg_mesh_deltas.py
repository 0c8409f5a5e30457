"""pg changes on the mesh beside the service: one hop, counted once, the service the truth after reconnects.

Each node numbers its own membership changes; the number travels with each
change on the mesh (``pg_delta``) and through the service (its events and
snapshots), and with every whole state (``pg_sync``, the service's ``sync``
event, a snapshot). These cases drive real node processes and a real service
process (``LocalCluster``); the service is paused with SIGSTOP (its feed then
delivers nothing) or killed and restarted. Every wait polls with a deadline.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Any

import cloudpickle
import pytest

import hermes
from _cluster import poll, stays
from hermes import pg
from hermes.pg._directory import Directory
from hermes.pg._wire import ServiceConnection
from hermes.runtime import lowlevel

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)
DEADLINE = 10.0


from test_pg import converge, on, spawn_and_join  # noqa: E402  # on the nodes by reference


def members(group: Any) -> list[hermes.Pid]:
    return sorted(pg.get_members(group))


def feed_version() -> int:
    """The service version this node's feed has delivered (its client's statistics)."""
    client = lowlevel.current_node().layers["pg"].client
    return client.statistics()["version"] if client.connected else -1


def split_and_join(peers: list[str], group: Any) -> hermes.Pid:
    """Drop the links to ``peers`` and join a new member in the same loop step:
    the join is made while those links are down, for certain."""
    for peer in peers:
        assert hermes.disconnect(peer) is True
    pid, = spawn_and_join(group)
    return pid


def churn_in_partition(peers: list[str], group: Any, keep: list[hermes.Pid]) -> list[hermes.Pid]:
    """Split from ``peers``, then join three members, leave one of them and one of
    ``keep``, and join one of ``keep`` twice more: the members of ``group`` here after."""
    for peer in peers:
        hermes.disconnect(peer)
    fresh = spawn_and_join(group, 3)
    pg.leave(group, [fresh[0]] + keep[:1])
    pg.join(group, [keep[-1], keep[-1]])
    return sorted(pg.get_local_members(group))


async def reconnect(peers: list[str]) -> list[bool]:
    return [await hermes.connect(peer) for peer in peers]


class EventLog(hermes.Actor):
    """Monitors ``group`` and keeps the members its events add up to."""

    def __init__(self, name: str, group: Any) -> None:
        hermes.register(name)
        self.ref, initial = pg.monitor(group)
        self.current = list(initial)
        self.bad: list[Any] = []

    def handle_info(self, msg: Any) -> None:
        if isinstance(msg, pg.Event) and msg.ref == self.ref:
            for pid in msg.pids:
                if msg.kind == "join":
                    self.current.append(pid)
                elif pid in self.current:
                    self.current.remove(pid)
                else:
                    self.bad.append(pid)  # a leave of a member it never saw

    def handle_call(self, request: Any, sender: Any) -> Any:
        return sorted(self.current), list(self.bad)


def start_event_log(name: str, group: Any) -> None:
    hermes.spawn(EventLog, name, group)


async def event_log(name: str) -> Any:
    return await hermes.call(name, "get")


# -- helpers for the driver ------------------------------------------------------------------






def service_version(c: hermes.LocalCluster) -> int:
    conn = ServiceConnection(c.service_address, c.cookie.encode())
    try:
        return conn.call("snapshot")[2]
    finally:
        conn.close()


def feeds_caught_up(c: hermes.LocalCluster, nodes: list[str]) -> None:
    """Every node's feed has delivered at least what the service holds now."""
    version = service_version(c)
    for node in nodes:
        poll(lambda: on(c, node, feed_version) >= version, timeout=DEADLINE)


class Paused:
    """The cluster's service process stopped (SIGSTOP) for the ``with`` block; SIGCONT even on failure."""

    def __init__(self, c: hermes.LocalCluster) -> None:
        self.pid = c._service.pid  # LocalCluster keeps the service's Popen

    def __enter__(self) -> Paused:
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: Any) -> None:
        os.kill(self.pid, signal.SIGCONT)


# -- the directory's numbers (the real Directory object, in this process) ----------------------


def test_directory_carries_the_numbers_in_events_and_snapshots():
    d = Directory()
    d.register_node("n@h", 1, ("127.0.0.1", 1))
    assert d.sync("n@h", 1, {"g": ["a"], "empty": []}, 4) == 2
    assert d.update("n@h", 1, [("join", "g", ["b"], 5), ("leave", "g", ["a"], 6), ("leave", "g", ["x"], 7)]) == 4
    epoch = d.snapshot()[1]
    events = d.changes(epoch, 0, 0)[3]
    assert events == [("node_up", "n@h", 1, ("127.0.0.1", 1)), ("sync", "n@h", 1, {"g": ["a"]}, 4),
                      ("join", "n@h", 1, "g", ["b"], 5), ("leave", "n@h", 1, "g", ["a"], 6)]
    snapshot = d.changes(None, 0, 0, True)
    assert snapshot[4] == {("n@h", 1): {"g": ["b"]}} and snapshot[5] == {("n@h", 1): 7}
    assert len(d.changes(None, 0, 0)) == 5  # unnumbered callers get the old shape
    d.unregister_node("n@h", 1)
    assert d.changes(None, 0, 0, True)[5] == {}


# -- one hop ---------------------------------------------------------------------------------


def test_a_join_is_seen_on_the_other_nodes_while_the_service_is_paused():
    with hermes.LocalCluster(["a", "b", "c"]) as c:
        with Paused(c):  # the feed can deliver nothing now: only the mesh can
            pid, = on(c, "b", spawn_and_join, "hop")
            converge(c, ["a", "c"], members, "hop", expect=[pid], timeout=2.0)
            assert on(c, "b", pg.leave, "hop", pid) is True
            converge(c, ["a", "c"], members, "hop", expect=[], timeout=2.0)
            assert on(c, "b", pg.join, "hop", [pid, pid]) is None
            converge(c, ["a", "c"], members, "hop", expect=[pid, pid], timeout=2.0)
        feeds_caught_up(c, ["a", "b", "c"])  # the same changes from the feed: skipped, not applied twice
        assert stays(lambda: all(on(c, n, members, "hop") == [pid, pid] for n in ("a", "b", "c")), 1.0)


def test_no_duplicate_when_a_link_comes_up_between_a_push_and_its_feed_event():
    with hermes.LocalCluster(["a", "b"]) as c:
        a, b = c.nodes
        on(c, "a", start_event_log, "log-dup", "dup")
        with Paused(c):
            # b joins with its link to a down: its push to the service waits in b's client
            pid = on(c, "b", split_and_join, [a], "dup")
            assert on(c, "b", reconnect, [a]) == [True]
            # a has it from b's pg_sync on the new link, numbered; the feed has not delivered it yet
            converge(c, ["a"], members, "dup", expect=[pid], timeout=3.0)
        feeds_caught_up(c, ["a", "b"])  # now the feed's join event (at or below that number) reached a
        assert stays(lambda: on(c, "a", members, "dup") == [pid], 1.0)
        assert on(c, "a", event_log, "log-dup") == ([pid], [])
        assert on(c, "b", pg.leave, "dup", pid) is True
        converge(c, ["a", "b"], members, "dup", expect=[])
        feeds_caught_up(c, ["a", "b"])
        assert on(c, "a", event_log, "log-dup") == ([], [])


# -- whole states: a netsplit heals, the service restarts ------------------------------------


def test_netsplit_and_heal_converge_to_the_exact_truth():
    with hermes.LocalCluster(["a", "b", "c"]) as c:
        a, b, node_c = c.nodes
        keep_a = on(c, "a", spawn_and_join, "split", 2)
        keep_b = on(c, "b", spawn_and_join, "split", 2)
        converge(c, ["a", "b", "c"], members, "split", expect=sorted(keep_a + keep_b))
        on(c, "c", start_event_log, "log-split", "split")
        # a is cut from b and c; both sides change "split" meanwhile
        truth_a = on(c, "a", churn_in_partition, [b, node_c], "split", keep_a)
        truth_b = on(c, "b", churn_in_partition, [], "split", keep_b)
        assert on(c, "a", reconnect, [b, node_c]) == [True, True]
        expect = sorted(truth_a + truth_b)
        converge(c, ["a", "b", "c"], members, "split", expect=expect)
        feeds_caught_up(c, ["a", "b", "c"])
        assert stays(lambda: all(on(c, n, members, "split") == expect for n in ("a", "b", "c")), 1.0)
        assert on(c, "c", event_log, "log-split") == (expect, [])


def test_service_restart_converges_to_the_exact_truth():
    with hermes.LocalCluster(["a", "b", "c"]) as c:
        before = on(c, "a", spawn_and_join, "restart", 2)
        converge(c, ["b", "c"], members, "restart", expect=sorted(before))
        on(c, "c", start_event_log, "log-restart", "restart")
        c.kill_service()
        # with the service gone, changes still travel on the mesh at once
        during = on(c, "b", spawn_and_join, "restart", 2)
        assert on(c, "a", pg.leave, "restart", before[0]) is True
        expect = sorted(before[1:] + during)
        converge(c, ["a", "b", "c"], members, "restart", expect=expect, timeout=3.0)
        c.start_service()
        # every node re-registers and re-sends its memberships (soft state); the
        # restarted service's first, partial answers must not undo the mesh's view
        poll(lambda: sorted(m for b in _service_buckets(c).values() for m in b.get("restart", ())) == expect,
             timeout=DEADLINE)
        after = on(c, "c", spawn_and_join, "restart")
        expect = sorted(expect + after)
        converge(c, ["a", "b", "c"], members, "restart", expect=expect)
        feeds_caught_up(c, ["a", "b", "c"])
        assert stays(lambda: all(on(c, n, members, "restart") == expect for n in ("a", "b", "c")), 1.0)
        assert on(c, "c", event_log, "log-restart") == (expect, [])


def _service_buckets(c: hermes.LocalCluster) -> dict[Any, dict[Any, list[Any]]]:
    conn = ServiceConnection(c.service_address, c.cookie.encode())
    try:
        return conn.call("snapshot")[4]
    finally:
        conn.close()

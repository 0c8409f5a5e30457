"""Supervisor: restart strategies, restart intensity, ordered shutdown."""
from __future__ import annotations

import asyncio

import pytest

import hermes
from conftest import no_message, receive_down, run_node, stays_alive

pytestmark = pytest.mark.timeout(20)


class Child(hermes.Actor):
    """Reports ``("started", name, pid)`` from ``__init__`` and ``("terminated", name, pid)``
    from ``terminate`` to ``report``."""

    def __init__(self, name, report):
        self.name, self.report = name, report
        hermes.send(report, ("started", name, hermes.self()))

    def handle_call(self, request, sender):
        return self.name

    def terminate(self, reason):
        hermes.send(self.report, ("terminated", self.name, hermes.self()))


async def started(n, timeout=5.0):
    """The next ``n`` ``("started", name, pid)`` reports, as ``[(name, pid)]`` in arrival order."""
    msgs = [
        await hermes.receive(match=lambda m: isinstance(m, tuple) and m[0] == "started", timeout=timeout)
        for _ in range(n)
    ]
    return [(name, pid) for _, name, pid in msgs]


def is_started(m):
    return isinstance(m, tuple) and m[0] == "started"


def children(me, names="abc"):
    return [(Child, name, me) for name in names]


async def start_supervisor(strategy, names="abc", **options):
    me = hermes.self()
    sup = hermes.spawn(hermes.Supervisor, children(me, names), strategy=strategy, **options)
    first = await started(len(names))
    assert [name for name, _ in first] == list(names)  # started in order
    return sup, dict(first)


def test_default_strategy_is_one_for_one():
    async def main():
        me = hermes.self()
        sup = hermes.spawn(hermes.Supervisor, children(me))
        pids = dict(await started(3))
        hermes.exit(pids["b"], "boom")
        [(restarted, _)] = await started(1)
        return restarted, await no_message(is_started), await stays_alive(sup)

    restarted, nothing_else, sup_alive = run_node(main)
    assert restarted == "b"
    assert nothing_else and sup_alive


def test_one_for_one_restarts_only_the_crashed_child():
    async def main():
        sup, old = await start_supervisor("one_for_one")
        hermes.exit(old["b"], "boom")
        new = dict(await started(1))
        assert await no_message(is_started)
        for name in "ac":  # the others are the same actors, still serving
            assert await hermes.call(old[name], "name") == name
        return old, new, await stays_alive(sup)

    old, new, sup_alive = run_node(main)
    assert list(new) == ["b"]
    assert new["b"] != old["b"]
    assert sup_alive


def test_one_for_all_restarts_every_child():
    async def main():
        sup, old = await start_supervisor("one_for_all")
        refs = {name: hermes.monitor(pid) for name, pid in old.items()}
        hermes.exit(old["b"], "boom")
        new = await started(3)
        for ref in refs.values():  # every old child is gone
            await receive_down(ref)
        assert await no_message(is_started)
        return old, new, await stays_alive(sup)

    old, new, sup_alive = run_node(main)
    assert [name for name, _ in new] == ["a", "b", "c"]
    assert not set(old.values()) & {pid for _, pid in new}
    assert sup_alive


def test_rest_for_one_restarts_the_crashed_child_and_those_started_after_it():
    async def main():
        sup, old = await start_supervisor("rest_for_one")
        ref_c = hermes.monitor(old["c"])
        hermes.exit(old["b"], "boom")
        new = await started(2)
        await receive_down(ref_c)
        assert await no_message(is_started)
        assert await hermes.call(old["a"], "name") == "a"
        return old, new, await stays_alive(sup)

    old, new, sup_alive = run_node(main)
    assert [name for name, _ in new] == ["b", "c"]
    assert not {old["b"], old["c"]} & {pid for _, pid in new}
    assert sup_alive


def test_restarted_child_keeps_being_supervised():
    async def main():
        sup, old = await start_supervisor("one_for_one", names="a")
        pid = old["a"]
        for _ in range(2):
            hermes.exit(pid, "boom")
            [(_, pid)] = await started(1)
        return await hermes.call(pid, "name"), await stays_alive(sup)

    assert run_node(main) == ("a", True)


def test_supervisor_restarts_async_function_children():
    async def worker(report):
        hermes.send(report, ("started", "fn", hermes.self()))
        while True:
            await hermes.receive()

    async def main():
        hermes.spawn(hermes.Supervisor, [(worker, hermes.self())])
        [(_, first)] = await started(1)
        hermes.exit(first, "boom")
        [(_, second)] = await started(1)
        return first, second

    first, second = run_node(main)
    assert first != second


def test_exceeding_restart_intensity_makes_the_supervisor_exit():
    async def main():
        sup, pids = await start_supervisor("one_for_one", names="ab", max_restarts=2, max_seconds=5.0)
        sup_ref = hermes.monitor(sup)
        b_ref = hermes.monitor(pids["b"])
        a = pids["a"]
        for _ in range(2):  # two restarts are within the limit
            hermes.exit(a, "boom")
            [(_, a)] = await started(1)
        hermes.exit(a, "boom")  # the third exceeds it
        sup_down = await receive_down(sup_ref)
        await receive_down(b_ref)  # the supervisor took its other child with it
        assert await no_message(is_started)
        return sup_down

    assert run_node(main).reason != "normal"


def test_restarts_outside_the_time_window_do_not_count():
    async def main():
        sup, pids = await start_supervisor("one_for_one", names="a", max_restarts=1, max_seconds=0.2)
        hermes.exit(pids["a"], "boom")
        [(_, a)] = await started(1)
        await asyncio.sleep(0.4)  # the time window itself is under test: let it pass
        hermes.exit(a, "boom")
        [(_, a)] = await started(1)
        return await stays_alive(sup)

    assert run_node(main) is True


def test_stopping_the_supervisor_stops_children_in_reverse_start_order():
    async def main():
        sup, pids = await start_supervisor("one_for_one", names="abcd")
        ref = hermes.monitor(sup)
        hermes.exit(sup, "shutdown")
        terminated = [
            await hermes.receive(match=lambda m: isinstance(m, tuple) and m[0] == "terminated", timeout=5)
            for _ in pids
        ]
        down = await receive_down(ref)
        return pids, terminated, down

    pids, terminated, down = run_node(main)
    assert [(name, pid) for _, name, pid in terminated] == [(n, pids[n]) for n in "dcba"]
    assert down.reason == "shutdown"


def test_supervisor_stops_its_children_before_it_exits():
    async def main():
        sup, pids = await start_supervisor("one_for_one")
        child_refs = [hermes.monitor(pid) for pid in pids.values()]
        sup_ref = hermes.monitor(sup)
        hermes.exit(sup, "shutdown")
        order = []
        for _ in range(4):
            msg = await hermes.receive(match=lambda m: isinstance(m, hermes.Down), timeout=5)
            order.append("sup" if msg.ref == sup_ref else "child")
        return order, child_refs

    order, _ = run_node(main)
    assert order == ["child", "child", "child", "sup"]


class FailsToStart(hermes.Actor):
    def __init__(self, report):
        hermes.send(report, ("attempt", hermes.self()))
        raise ValueError("cannot start")


def test_child_that_always_fails_to_start_exhausts_the_restart_intensity():
    async def main():
        sup = hermes.spawn(hermes.Supervisor, [(FailsToStart, hermes.self())], max_restarts=3, max_seconds=5.0)
        down = await receive_down(hermes.monitor(sup), timeout=10)
        attempts = 0
        while True:
            try:
                await hermes.receive(match=lambda m: m[0] == "attempt", timeout=0.05)
            except TimeoutError:
                return down, attempts
            attempts += 1

    down, attempts = run_node(main)
    assert down.reason != "normal"
    assert attempts == 4  # the first start and three restarts

"""Links, monitors, exit signals and trap_exits, with Erlang's rules."""
from __future__ import annotations

import dataclasses

import pytest

import hermes
from conftest import Do, agent, ask, forwarded, no_message, receive_down, receive_exit, run_node, stays_alive

pytestmark = pytest.mark.timeout(20)


async def idle():
    while True:
        await hermes.receive()


async def returns_on_stop():
    await hermes.receive(match=lambda m: m == "stop")


def crash_agent(pid, me):
    """Make an agent raise ZeroDivisionError (it dies with that exception as reason)."""
    hermes.send(pid, Do(lambda: 1 / 0, me))


# -- Down and Exit ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, fields", [(hermes.Down, ["ref", "pid", "reason"]), (hermes.Exit, ["pid", "reason"])]
)
def test_down_and_exit_are_frozen_dataclasses(cls, fields):
    assert dataclasses.is_dataclass(cls)
    assert [f.name for f in dataclasses.fields(cls)] == fields
    value = cls(*range(len(fields)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.reason = "changed"
    assert value.reason == len(fields) - 1


# -- monitors ---------------------------------------------------------------------------


def test_monitor_delivers_down_with_ref_pid_and_reason():
    async def main():
        pid = hermes.spawn(idle)
        ref = hermes.monitor(pid)
        hermes.exit(pid, "custom reason")
        msg = await hermes.receive(timeout=5)
        return ref, pid, msg

    ref, pid, msg = run_node(main)
    assert msg == hermes.Down(ref, pid, "custom reason")


def test_monitor_reports_normal_exit_and_exception():
    async def crashes():
        raise KeyError("gone")

    async def main():
        normal = hermes.spawn(returns_on_stop)
        crashed = hermes.spawn(crashes)
        normal_down = receive_down(hermes.monitor(normal))
        crashed_down = receive_down(hermes.monitor(crashed))
        hermes.send(normal, "stop")
        return (await normal_down).reason, (await crashed_down).reason

    normal_reason, crashed_reason = run_node(main)
    assert normal_reason == "normal"
    assert type(crashed_reason) is KeyError


def test_monitor_of_a_dead_pid_delivers_noproc():
    async def main():
        pid = hermes.spawn(idle)
        first = hermes.monitor(pid)
        hermes.exit(pid, "kill")
        await receive_down(first)
        ref = hermes.monitor(pid)
        return ref, pid, await receive_down(ref)

    ref, pid, down = run_node(main)
    assert down == hermes.Down(ref, pid, "noproc")


def test_two_monitors_give_two_downs_with_distinct_refs():
    async def main():
        pid = hermes.spawn(idle)
        refs = [hermes.monitor(pid), hermes.monitor(pid)]
        hermes.exit(pid, "bye")
        downs = [await receive_down(ref) for ref in refs]
        return refs, downs, await no_message()

    refs, downs, nothing_else = run_node(main)
    assert refs[0] != refs[1]
    assert [d.ref for d in downs] == refs
    assert nothing_else


def test_demonitor_means_no_down():
    async def main():
        pid = hermes.spawn(idle)
        kept = hermes.monitor(pid)
        dropped = hermes.monitor(pid)
        hermes.demonitor(dropped)
        hermes.exit(pid, "bye")
        await receive_down(kept)
        return await no_message(match=lambda m: isinstance(m, hermes.Down))

    assert run_node(main) is True


def test_monitored_exit_does_not_affect_the_monitoring_actor():
    async def main():
        watcher = hermes.spawn(agent, hermes.self())
        target = hermes.spawn(idle)
        await ask(watcher, lambda: hermes.monitor(target))
        hermes.exit(target, "boom")
        down = await forwarded(watcher)
        return target, down, await stays_alive(watcher)

    target, down, alive = run_node(main)
    assert (down.pid, down.reason) == (target, "boom")
    assert alive


# -- links ------------------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["linker", "linked"])
def test_link_propagates_an_abnormal_exit_both_ways(victim):
    async def main():
        linked = hermes.spawn(idle)
        linker = hermes.spawn(agent, hermes.self())
        await ask(linker, lambda: hermes.link(linked))
        downs = [receive_down(hermes.monitor(p)) for p in (linker, linked)]
        hermes.exit(linker if victim == "linker" else linked, "boom")
        return [(await d).reason for d in downs]

    assert run_node(main) == ["boom", "boom"]


def test_crash_with_exception_propagates_the_exception_over_a_link():
    async def main():
        me = hermes.self()
        a, b = hermes.spawn(agent, me), hermes.spawn(agent, me)
        await ask(a, lambda: hermes.link(b))
        downs = [receive_down(hermes.monitor(p)) for p in (a, b)]
        crash_agent(a, me)
        return [(await d).reason for d in downs]

    reason_a, reason_b = run_node(main)
    assert type(reason_a) is ZeroDivisionError
    assert reason_b is reason_a


def test_unlink_stops_propagation():
    async def main():
        linked = hermes.spawn(idle)
        linker = hermes.spawn(agent, hermes.self())
        await ask(linker, lambda: hermes.link(linked))
        await ask(linker, lambda: hermes.unlink(linked))
        ref = hermes.monitor(linked)
        hermes.exit(linked, "boom")
        await receive_down(ref)
        return await stays_alive(linker)

    assert run_node(main) is True


def test_unlink_from_the_other_side_also_stops_propagation():
    async def main():
        me = hermes.self()
        a, b = hermes.spawn(agent, me), hermes.spawn(agent, me)
        await ask(a, lambda: hermes.link(b))
        await ask(b, lambda: hermes.unlink(a))
        ref = hermes.monitor(a)
        hermes.exit(a, "boom")
        await receive_down(ref)
        return await stays_alive(b)

    assert run_node(main) is True


def test_normal_exit_does_not_kill_a_linked_actor():
    async def main():
        short = hermes.spawn(returns_on_stop)
        linker = hermes.spawn(agent, hermes.self())
        await ask(linker, lambda: hermes.link(short))
        ref = hermes.monitor(short)
        hermes.send(short, "stop")
        down = await receive_down(ref)
        return down.reason, await stays_alive(linker)

    assert run_node(main) == ("normal", True)


def test_spawn_with_link_links_parent_and_child():
    async def main():
        parent = hermes.spawn(agent, hermes.self())
        child = await ask(parent, lambda: hermes.spawn(idle, link=True))
        downs = [receive_down(hermes.monitor(p)) for p in (parent, child)]
        hermes.exit(child, "boom")
        return [(await d).reason for d in downs]

    assert run_node(main) == ["boom", "boom"]


def test_spawn_with_link_kills_child_when_parent_crashes():
    async def main():
        me = hermes.self()
        parent = hermes.spawn(agent, me)
        child = await ask(parent, lambda: hermes.spawn(idle, link=True))
        ref = hermes.monitor(child)
        crash_agent(parent, me)
        return type((await receive_down(ref)).reason)

    assert run_node(main) is ZeroDivisionError


# -- trap_exits and exit signals ---------------------------------------------------------


def test_trapping_actor_gets_exit_messages_from_linked_actors():
    async def main():
        hermes.trap_exits(True)
        crashing = hermes.spawn(idle, link=True)
        normal = hermes.spawn(returns_on_stop, link=True)
        hermes.exit(crashing, "boom")
        hermes.send(normal, "stop")
        return crashing, normal, await receive_exit(crashing), await receive_exit(normal)

    crashing, normal, crash_exit, normal_exit = run_node(main)
    assert crash_exit == hermes.Exit(crashing, "boom")
    assert normal_exit == hermes.Exit(normal, "normal")


def test_trap_exits_false_restores_dying_with_linked_actors():
    async def main():
        linked = hermes.spawn(idle)
        a = hermes.spawn(agent, hermes.self())
        await ask(a, lambda: hermes.trap_exits(True))
        await ask(a, lambda: hermes.trap_exits(False))
        await ask(a, lambda: hermes.link(linked))
        ref = hermes.monitor(a)
        hermes.exit(linked, "boom")
        return (await receive_down(ref)).reason

    assert run_node(main) == "boom"


def test_exit_signal_to_a_trapping_actor_becomes_an_exit_message():
    async def main():
        me = hermes.self()
        a = hermes.spawn(agent, me)
        await ask(a, lambda: hermes.trap_exits(True))
        hermes.exit(a, "please stop")
        return me, await forwarded(a), await stays_alive(a)

    me, msg, alive = run_node(main)
    assert msg == hermes.Exit(me, "please stop")
    assert alive


def test_exit_signal_and_message_from_one_sender_stay_in_order_for_a_trapping_actor():
    async def main():
        me = hermes.self()
        a = hermes.spawn(agent, me)
        await ask(a, lambda: hermes.trap_exits(True))
        hermes.exit(a, "first")
        hermes.send(a, "second")
        return me, [await forwarded(a) for _ in range(2)]

    me, got = run_node(main)
    assert got == [hermes.Exit(me, "first"), "second"]


def test_exit_signal_kills_a_non_trapping_actor_with_that_reason():
    async def main():
        a = hermes.spawn(agent, hermes.self())
        ref = hermes.monitor(a)
        hermes.exit(a, "please stop")
        return (await receive_down(ref)).reason

    assert run_node(main) == "please stop"


def test_exit_normal_does_not_kill_a_non_trapping_actor():
    async def main():
        a = hermes.spawn(agent, hermes.self())
        hermes.exit(a, "normal")
        return await stays_alive(a)

    assert run_node(main) is True


def test_exit_kill_cannot_be_trapped_and_ends_with_killed():
    async def main():
        hermes.trap_exits(True)
        a = hermes.spawn(agent, hermes.self())
        await ask(a, lambda: hermes.trap_exits(True))
        hermes.link(a)
        ref = hermes.monitor(a)
        hermes.exit(a, "kill")
        return a, await receive_down(ref), await receive_exit(a)

    a, down, exit_msg = run_node(main)
    assert down.reason == "killed"
    assert exit_msg == hermes.Exit(a, "killed")


def test_exit_to_a_dead_pid_is_silent():
    async def main():
        pid = hermes.spawn(idle)
        ref = hermes.monitor(pid)
        hermes.exit(pid, "kill")
        await receive_down(ref)
        assert hermes.exit(pid, "kill") is None
        return await no_message()

    assert run_node(main) is True


# -- three actors -----------------------------------------------------------------------


async def chain(me):
    """a - b - c: b is linked to both a and c."""
    a, b, c = (hermes.spawn(agent, me) for _ in range(3))
    await ask(b, lambda: (hermes.link(a), hermes.link(c)))
    return a, b, c


def test_crash_propagates_along_a_chain_of_three():
    async def main():
        me = hermes.self()
        a, b, c = await chain(me)
        downs = [receive_down(hermes.monitor(p)) for p in (a, b, c)]
        crash_agent(a, me)
        return [(await d).reason for d in downs]

    reasons = run_node(main)
    assert all(type(r) is ZeroDivisionError for r in reasons)


def test_trapping_middle_of_chain_stops_propagation():
    async def main():
        me = hermes.self()
        a, b, c = await chain(me)
        await ask(b, lambda: hermes.trap_exits(True))
        ref_a = hermes.monitor(a)
        crash_agent(a, me)
        down_a = await receive_down(ref_a)
        exit_msg = await forwarded(b)
        return a, down_a, exit_msg, await stays_alive(b), await stays_alive(c)

    a, down_a, exit_msg, b_alive, c_alive = run_node(main)
    assert type(down_a.reason) is ZeroDivisionError
    assert exit_msg == hermes.Exit(a, down_a.reason)
    assert b_alive and c_alive

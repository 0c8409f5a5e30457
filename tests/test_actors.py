"""Actors on one node: spawn, send, (selective) receive, self(), registered names."""
from __future__ import annotations

import time

import pytest

import hermes
from conftest import crash_log_entries, no_message, receive_down, run_node

pytestmark = pytest.mark.timeout(20)


class Echo(hermes.Actor):
    """Answers calls with the request; answers ``(reply_to, x)`` infos with ``("echo", x)``."""

    def handle_call(self, request, sender):
        return request

    def handle_info(self, msg):
        reply_to, payload = msg
        hermes.send(reply_to, ("echo", payload))


async def echo_fn():
    while True:
        reply_to, payload = await hermes.receive()
        hermes.send(reply_to, ("echo", payload))


async def report_self(to):
    hermes.send(to, ("me", hermes.self()))


# -- spawn and send ---------------------------------------------------------------------


@pytest.mark.parametrize("target", [Echo, echo_fn], ids=["Actor", "async-def"])
def test_spawned_actor_receives_and_answers(target):
    async def main():
        pid = hermes.spawn(target)
        hermes.send(pid, (hermes.self(), "hello"))
        return pid, await hermes.receive(timeout=5)

    pid, answer = run_node(main)
    assert answer == ("echo", "hello")


def test_spawn_returns_distinct_pids_on_this_node():
    async def main():
        pids = [hermes.spawn(echo_fn) for _ in range(3)] + [hermes.spawn(Echo)]
        return pids, hermes.self(), hermes.node()

    pids, me, node = run_node(main)
    assert len(set(pids + [me])) == 5
    assert all(pid.node == node for pid in pids)


def test_spawn_passes_args_and_kwargs_to_function_and_actor():
    class Args(hermes.Actor):
        def __init__(self, a, b, *, c):
            self.args = (a, b, c)

        def handle_call(self, request, sender):
            return self.args

    async def fn(to, a, b, *, c):
        hermes.send(to, ("fn", a, b, c))

    async def main():
        hermes.spawn(fn, hermes.self(), 1, [2], c="three")
        from_fn = await hermes.receive(timeout=5)
        from_actor = await hermes.call(hermes.spawn(Args, 1, [2], c="three"), "args")
        return from_fn, from_actor

    assert run_node(main) == (("fn", 1, [2], "three"), (1, [2], "three"))


def test_messages_from_one_sender_arrive_in_send_order():
    async def collector(to, n):
        hermes.send(to, [await hermes.receive() for _ in range(n)])

    async def main():
        pid = hermes.spawn(collector, hermes.self(), 1000)
        for i in range(1000):
            hermes.send(pid, i)
        return await hermes.receive(timeout=5)

    assert run_node(main) == list(range(1000))


def test_messages_are_passed_by_reference():
    async def main():
        payload = {"big": list(range(10))}
        hermes.send(hermes.self(), payload)
        return payload, await hermes.receive(timeout=5)

    sent, received = run_node(main)
    assert received is sent


# -- receive ----------------------------------------------------------------------------


def test_selective_receive_takes_first_match_and_keeps_others_in_order():
    async def main():
        for m in ["a", 1, "b", 2, "c"]:
            hermes.send(hermes.self(), m)
        first = await hermes.receive(match=lambda m: isinstance(m, int), timeout=5)
        second = await hermes.receive(match=lambda m: isinstance(m, int), timeout=5)
        rest = [await hermes.receive(timeout=5) for _ in range(3)]
        return first, second, rest

    assert run_node(main) == (1, 2, ["a", "b", "c"])


def test_selective_receive_waits_for_a_later_matching_message():
    async def late_sender(to):
        await hermes.receive()  # "go"
        hermes.send(to, "late")

    async def main():
        hermes.send(hermes.self(), "early")
        sender = hermes.spawn(late_sender, hermes.self())
        hermes.send(sender, "go")
        late = await hermes.receive(match=lambda m: m == "late", timeout=5)
        return late, await hermes.receive(timeout=5)

    assert run_node(main) == ("late", "early")


def test_receive_match_that_never_matches_times_out_and_leaves_queue_unchanged():
    queued = ["x", ("y", 1), 3]

    async def main():
        for m in queued:
            hermes.send(hermes.self(), m)
        with pytest.raises(TimeoutError):
            await hermes.receive(match=lambda m: False, timeout=0.1)
        after = [await hermes.receive(timeout=5) for _ in queued]
        assert await no_message()
        return after

    assert run_node(main) == queued


def test_receive_times_out_on_an_empty_mailbox():
    async def main():
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await hermes.receive(timeout=0.1)
        return time.monotonic() - start

    elapsed = run_node(main)
    assert 0.08 <= elapsed < 5


def test_receive_timeout_leaves_actor_able_to_receive():
    async def main():
        with pytest.raises(TimeoutError):
            await hermes.receive(timeout=0.01)
        hermes.send(hermes.self(), "next")
        return await hermes.receive(timeout=5)

    assert run_node(main) == "next"


# -- self() -----------------------------------------------------------------------------


class WhoAmI(hermes.Actor):
    def __init__(self):
        self.me_in_init = hermes.self()

    def handle_call(self, request, sender):
        return self.me_in_init, hermes.self()


def test_self_inside_actor_init_and_handlers_is_the_spawned_pid():
    async def main():
        pid = hermes.spawn(WhoAmI)
        return pid, await hermes.call(pid, "who")

    pid, (in_init, in_handler) = run_node(main)
    assert in_init == pid
    assert in_handler == pid


def test_self_inside_async_function_is_the_spawned_pid():
    async def main():
        pid = hermes.spawn(report_self, hermes.self())
        return pid, await hermes.receive(timeout=5)

    pid, (_, reported) = run_node(main)
    assert reported == pid


# -- registered names -------------------------------------------------------------------


def test_register_whereis_send_call_by_name_and_unregister():
    async def main():
        me = hermes.self()
        pid = hermes.spawn(Echo)
        assert hermes.whereis("echo") is None
        hermes.register("echo", pid)
        assert hermes.whereis("echo") == pid
        assert await hermes.call("echo", "by name") == "by name"
        assert await hermes.call(("echo", hermes.node()), "by (name, node)") == "by (name, node)"
        hermes.send("echo", (me, 1))
        hermes.send(("echo", hermes.node()), (me, 2))
        got = [await hermes.receive(timeout=5) for _ in range(2)]
        hermes.unregister("echo")
        assert hermes.whereis("echo") is None
        hermes.send("echo", (me, 3))  # unknown name now: dropped
        assert await no_message()
        return got

    assert run_node(main) == [("echo", 1), ("echo", 2)]


def test_register_without_pid_registers_the_caller():
    async def registers_itself(to):
        hermes.register("myself")
        hermes.send(to, "registered")
        await hermes.receive()

    async def main():
        pid = hermes.spawn(registers_itself, hermes.self())
        await hermes.receive(timeout=5)
        return pid, hermes.whereis("myself")

    pid, found = run_node(main)
    assert found == pid


def test_registering_a_taken_name_raises_value_error_and_keeps_the_owner():
    async def main():
        first, second = hermes.spawn(Echo), hermes.spawn(Echo)
        hermes.register("taken", first)
        with pytest.raises(ValueError):
            hermes.register("taken", second)
        assert hermes.whereis("taken") == first
        return await hermes.call("taken", "still first")

    assert run_node(main) == "still first"


def test_registering_a_dead_pid_raises_value_error_and_registers_nothing():
    async def main():
        pid = hermes.spawn(Echo)
        ref = hermes.monitor(pid)
        hermes.exit(pid, "kill")
        await receive_down(ref)
        with pytest.raises(ValueError):
            hermes.register("ghost", pid)
        return hermes.whereis("ghost")

    assert run_node(main) is None


def test_name_is_freed_when_its_actor_dies():
    async def main():
        pid = hermes.spawn(Echo)
        hermes.register("short-lived", pid)
        ref = hermes.monitor(pid)
        hermes.exit(pid, "kill")
        await receive_down(ref)
        assert hermes.whereis("short-lived") is None
        successor = hermes.spawn(Echo)
        hermes.register("short-lived", successor)
        return successor, await hermes.call("short-lived", "hi")

    successor, answer = run_node(main)
    assert answer == "hi"


def test_send_to_dead_pid_or_unknown_name_never_raises():
    async def main():
        dead = hermes.spawn(report_self, hermes.self())
        ref = hermes.monitor(dead)
        await receive_down(ref)
        await hermes.receive(timeout=5)  # its ("me", pid) message
        assert hermes.send(dead, "to the dead") is None
        assert hermes.send("nobody-has-this-name", "x") is None
        assert hermes.send(("nobody-has-this-name", hermes.node()), "x") is None
        return await no_message()

    assert run_node(main) is True


# -- many actors ------------------------------------------------------------------------


class Responder(hermes.Actor):
    def handle_info(self, msg):
        reply_to, i = msg
        hermes.send(reply_to, i)


async def responder():
    reply_to, i = await hermes.receive()
    hermes.send(reply_to, i)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("target", [Responder, responder], ids=["Actor", "async-def"])
def test_fifty_thousand_actors_each_answer_one_message(target):
    n = 50_000

    async def main():
        me = hermes.self()
        pids = [hermes.spawn(target) for _ in range(n)]
        for i, pid in enumerate(pids):
            hermes.send(pid, (me, i))
        answers = [await hermes.receive(timeout=30) for _ in range(n)]
        return len(set(pids)), sorted(answers)

    distinct, answers = run_node(main)
    assert distinct == n
    assert answers == list(range(n))


async def crashing_function():
    raise ValueError("boom in function")


def test_crash_in_async_function_ends_it_with_the_exception_and_logs_it(caplog):
    async def main():
        bystander = hermes.spawn(Echo)
        pid = hermes.spawn(crashing_function)
        ref = hermes.monitor(pid)
        down = await receive_down(ref)
        assert await hermes.call(bystander, "still here") == "still here"
        return pid, down

    pid, down = run_node(main)
    assert type(down.reason) is ValueError
    assert str(down.reason) == "boom in function"
    logged = crash_log_entries(caplog.records, pid, "crashing_function")
    assert any("boom in function" in t and "Traceback" in t for t in logged), caplog.text

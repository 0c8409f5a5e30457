"""A local call to an idle actor is handled in the caller's turn (``deliver_now``):
what that must not change — the caller still yields to the loop, identities stay
apart, order per sender is kept, and a callee that dies or defers still behaves
as the contract says."""
from __future__ import annotations

import asyncio

import pytest

import hermes
from conftest import run_node

pytestmark = pytest.mark.timeout(30)


class Echo(hermes.Actor):
    def handle_call(self, request, sender):
        return request


class Counter(hermes.Actor):
    def __init__(self):
        self.seen = []

    def handle_info(self, msg):
        self.seen.append(msg)

    def handle_call(self, request, sender):
        return list(self.seen)


class WhoAmI(hermes.Actor):
    def handle_call(self, request, sender):
        return hermes.self(), sender


class Raises(hermes.Actor):
    def handle_call(self, request, sender):
        raise ValueError("bad request")


class StopsWithoutReply(hermes.Actor):
    def handle_call(self, request, sender):
        self.defer_reply()
        self.stop("bye")
        return hermes.NOREPLY


class Defers(hermes.Actor):
    def handle_call(self, request, sender):
        ref = self.defer_reply()
        asyncio.get_running_loop().call_later(0.01, hermes.reply, ref, ("late", request))
        return hermes.NOREPLY


def test_calls_to_an_idle_actor_still_yield_to_the_loop():
    """A loop of calls must let a loop callback run (no starvation)."""

    async def main():
        echo = hermes.spawn(Echo)
        flipped = []
        asyncio.get_running_loop().call_soon(flipped.append, True)
        calls = 0
        while not flipped and calls < 10_000:
            await hermes.call(echo, calls)
            calls += 1
        return calls

    assert run_node(main) == 1  # the callback ran at the first call's yield


def test_identities_inside_and_after_an_inline_call():
    async def main():
        me = hermes.self()
        pid = hermes.spawn(WhoAmI)
        callee_self, sender = await hermes.call(pid, "who?")
        return pid, me, callee_self, sender, hermes.self()

    pid, me, callee_self, sender, after = run_node(main)
    assert callee_self == pid
    assert sender == me
    assert after == me


def test_messages_sent_before_a_call_are_handled_before_it():
    async def main():
        pid = hermes.spawn(Counter)
        for i in range(5):
            hermes.send(pid, i)
        first = await hermes.call(pid, "seen?")
        hermes.send(pid, 5)
        second = await hermes.call(pid, "seen?")
        return first, second

    assert run_node(main) == ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5])


def test_a_handler_that_raises_fails_the_call_and_only_the_callee_dies():
    async def main():
        pid = hermes.spawn(Raises)
        with pytest.raises(hermes.ActorExited) as info:
            await hermes.call(pid, "x", timeout=5)
        echo = hermes.spawn(Echo)
        return pid, info.value, hermes.process_info(pid), await hermes.call(echo, "still here")

    pid, error, info, answer = run_node(main)
    assert error.pid == pid
    assert type(error.reason) is ValueError
    assert info is None
    assert answer == "still here"


def test_a_callee_that_stops_without_replying_fails_the_call_with_its_reason():
    async def main():
        pid = hermes.spawn(StopsWithoutReply)
        with pytest.raises(hermes.ActorExited) as info:
            await hermes.call(pid, "x", timeout=5)
        return pid, info.value

    pid, error = run_node(main)
    assert error.pid == pid
    assert error.reason == "bye"


def test_a_deferred_reply_from_an_idle_callee_arrives():
    async def main():
        pid = hermes.spawn(Defers)
        return await hermes.call(pid, 7, timeout=5)

    assert run_node(main) == ("late", 7)


def test_a_call_that_times_out_leaves_no_pending_call_or_monitor():
    class Never(hermes.Actor):
        def handle_call(self, request, sender):
            self.defer_reply()
            return hermes.NOREPLY

    async def main():
        from hermes.runtime import lowlevel

        pid = hermes.spawn(Never)
        with pytest.raises(TimeoutError):
            await hermes.call(pid, "x", timeout=0.05)
        return lowlevel.current_node().statistics()["pending_calls"], lowlevel.process_of(pid).monitors

    pending, monitors = run_node(main)
    assert pending == 0
    assert not monitors

"""``Actor`` (GenServer style): handlers, one message at a time, call/cast, crashes."""
from __future__ import annotations

import asyncio
import time

import pytest

import hermes
from conftest import crash_log_entries, no_message, receive_down, receive_exit, run_node

pytestmark = pytest.mark.timeout(20)


# -- handlers, sync and async -----------------------------------------------------------


class Counter(hermes.Actor):
    """``handle_call("get")`` -> total; casts add ``n``; infos add ``100 * n``."""

    def __init__(self, start=0):
        self.total = start

    def handle_call(self, request, sender):
        if request == "sender":
            return sender
        return self.total

    def handle_cast(self, n):
        self.total += n

    def handle_info(self, n):
        self.total += 100 * n


class AsyncCounter(Counter):
    """Same, with ``async def`` handlers that really suspend between read and write:
    if two handlers ran at once, updates would be lost."""

    async def handle_call(self, request, sender):
        await asyncio.sleep(0)
        return Counter.handle_call(self, request, sender)

    async def handle_cast(self, n):
        total = self.total
        await asyncio.sleep(0)
        self.total = total + n

    async def handle_info(self, n):
        total = self.total
        await asyncio.sleep(0)
        self.total = total + 100 * n


counters = pytest.mark.parametrize("cls", [Counter, AsyncCounter], ids=["sync", "async"])


@counters
def test_handle_call_replies(cls):
    async def main():
        return await hermes.call(hermes.spawn(cls, 7), "get")

    assert run_node(main) == 7


@counters
def test_handle_call_gets_the_caller_as_sender(cls):
    async def main():
        return hermes.self(), await hermes.call(hermes.spawn(cls), "sender")

    me, sender = run_node(main)
    assert sender == me


@counters
def test_handle_cast_and_handle_info_run_one_message_at_a_time(cls):
    async def main():
        pid = hermes.spawn(cls)
        for _ in range(50):
            hermes.cast(pid, 1)
            hermes.send(pid, 1)
        return await hermes.call(pid, "get")

    assert run_node(main) == 50 * 1 + 50 * 100


def test_cast_and_call_accept_a_registered_name():
    async def main():
        hermes.register("counter", hermes.spawn(Counter))
        hermes.cast("counter", 5)
        hermes.cast(("counter", hermes.node()), 6)
        return await hermes.call("counter", "get")

    assert run_node(main) == 11


class Gate(hermes.Actor):
    """``handle_call("wait")`` returns only once ``opened`` is set; tells ``watcher`` it is waiting."""

    def __init__(self, opened: asyncio.Event, watcher):
        self.opened, self.watcher = opened, watcher

    async def handle_call(self, request, sender):
        hermes.send(self.watcher, ("gate waiting", request))
        await self.opened.wait()
        return request


class Relay(hermes.Actor):
    """Its async ``handle_call`` awaits a call to the gate; logs when each request starts and ends."""

    def __init__(self, gate, log: list):
        self.gate, self.log = gate, log

    async def handle_call(self, request, sender):
        self.log.append(("start", request))
        answer = await hermes.call(self.gate, request)
        self.log.append(("end", request))
        return answer


def test_async_handler_awaiting_a_call_blocks_only_its_own_actor():
    async def caller(relay, request, to):
        hermes.send(to, ("calling", request))
        hermes.send(to, ("answer", await hermes.call(relay, request)))

    async def main():
        me, opened, log = hermes.self(), asyncio.Event(), []
        gate = hermes.spawn(Gate, opened, me)
        relay = hermes.spawn(Relay, gate, log)
        bystander = hermes.spawn(Counter, 42)

        hermes.spawn(caller, relay, 1, me)
        assert await hermes.receive(match=lambda m: m == ("gate waiting", 1), timeout=5)
        hermes.spawn(caller, relay, 2, me)
        await hermes.receive(match=lambda m: m == ("calling", 2), timeout=5)
        # The relay is stuck in request 1; other actors still run...
        for _ in range(3):
            assert await hermes.call(bystander, "get") == 42
        # ...but the relay has not started request 2.
        assert log == [("start", 1)]
        opened.set()
        answers = {(await hermes.receive(match=lambda m: m[0] == "answer", timeout=5))[1] for _ in range(2)}
        return answers, log

    answers, log = run_node(main)
    assert answers == {1, 2}
    assert log == [("start", 1), ("end", 1), ("start", 2), ("end", 2)]


class Watcher(hermes.Actor):
    """Traps exits, links and monitors ``target``; forwards what ``handle_info`` gets to ``report``."""

    def __init__(self, target, report):
        self.report = report
        hermes.trap_exits(True)
        hermes.link(target)
        self.ref = hermes.monitor(target)

    def handle_call(self, request, sender):
        return self.ref

    def handle_info(self, msg):
        hermes.send(self.report, ("info", msg))


def test_exit_and_down_messages_arrive_at_handle_info():
    async def idle():
        await hermes.receive()

    async def main():
        target = hermes.spawn(idle)
        watcher = hermes.spawn(Watcher, target, hermes.self())
        ref = await hermes.call(watcher, "ref")
        hermes.exit(target, "boom")
        got = {(await hermes.receive(timeout=5))[1] for _ in range(2)}
        return got, hermes.Exit(target, "boom"), hermes.Down(ref, target, "boom")

    got, exit_msg, down = run_node(main)
    assert got == {exit_msg, down}


# -- terminate --------------------------------------------------------------------------


class Reporting(hermes.Actor):
    """Sends ``("terminate", reason)`` to ``report`` from ``terminate``; a cast of an
    exception raises it."""

    def __init__(self, report):
        self.report = report

    def handle_cast(self, exc):
        raise exc

    def terminate(self, reason):
        hermes.send(self.report, ("terminate", reason))


class AsyncReporting(Reporting):
    async def terminate(self, reason):
        await asyncio.sleep(0)
        hermes.send(self.report, ("terminate", reason))


reporting = pytest.mark.parametrize("cls", [Reporting, AsyncReporting], ids=["sync", "async"])


@reporting
def test_terminate_runs_with_the_exception_when_a_handler_crashes(cls):
    async def main():
        pid = hermes.spawn(cls, hermes.self())
        ref = hermes.monitor(pid)
        error = ValueError("crash for terminate")
        hermes.cast(pid, error)
        _, reason = await hermes.receive(match=lambda m: m[0] == "terminate", timeout=5)
        down = await receive_down(ref)
        return error, reason, down.reason

    error, reason, down_reason = run_node(main)
    assert reason is error
    assert down_reason is error


@reporting
def test_terminate_runs_with_the_reason_of_an_exit_signal(cls):
    async def main():
        pid = hermes.spawn(cls, hermes.self())
        ref = hermes.monitor(pid)
        hermes.exit(pid, "shutdown")
        _, reason = await hermes.receive(match=lambda m: m[0] == "terminate", timeout=5)
        return reason, (await receive_down(ref)).reason

    assert run_node(main) == ("shutdown", "shutdown")


# -- call failures ----------------------------------------------------------------------


def test_call_timeout_raises_timeout_error_and_the_callee_lives_on():
    async def main():
        opened = asyncio.Event()
        gate = hermes.spawn(Gate, opened, hermes.self())
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await hermes.call(gate, "slow", timeout=0.1)
        elapsed = time.monotonic() - start
        opened.set()  # the late reply to "slow" must not be taken for the next answer
        return elapsed, await hermes.call(gate, "next", timeout=5)

    elapsed, answer = run_node(main)
    assert 0.08 <= elapsed < 5
    assert answer == "next"


def test_late_reply_after_call_timeout_does_not_land_in_the_mailbox():
    async def main():
        opened = asyncio.Event()
        gate = hermes.spawn(Gate, opened, hermes.self())
        with pytest.raises(TimeoutError):
            await hermes.call(gate, "slow", timeout=0.05)
        opened.set()
        await hermes.call(gate, "after", timeout=5)  # so the late reply has been sent
        return await no_message(match=lambda m: not (isinstance(m, tuple) and m[0] == "gate waiting"))

    assert run_node(main) is True


def test_call_to_a_dead_pid_raises_actor_exited_noproc():
    async def main():
        pid = hermes.spawn(Counter)
        ref = hermes.monitor(pid)
        hermes.exit(pid, "kill")
        await receive_down(ref)
        with pytest.raises(hermes.ActorExited) as info:
            await hermes.call(pid, "get", timeout=5)
        return pid, info.value

    pid, error = run_node(main)
    assert error.pid == pid
    assert error.reason == "noproc"


def test_call_to_an_unknown_name_raises_actor_exited_noproc():
    async def main():
        with pytest.raises(hermes.ActorExited) as info:
            await hermes.call("no-such-name", "get", timeout=5)
        return info.value.reason

    assert run_node(main) == "noproc"


def test_call_raises_actor_exited_when_the_callee_is_killed_during_the_call():
    async def killer():
        _, victim = await hermes.receive()
        hermes.exit(victim, "kill")

    class KilledWhileServing(hermes.Actor):
        def __init__(self, killer):
            self.killer = killer

        async def handle_call(self, request, sender):
            hermes.send(self.killer, ("kill me", hermes.self()))
            await asyncio.Event().wait()  # never set

    async def main():
        pid = hermes.spawn(KilledWhileServing, hermes.spawn(killer))
        with pytest.raises(hermes.ActorExited) as info:
            await hermes.call(pid, "anything", timeout=5)
        return pid, info.value

    pid, error = run_node(main)
    assert error.pid == pid
    assert error.reason == "killed"


def test_cast_to_a_dead_actor_or_unknown_name_is_silent():
    async def main():
        pid = hermes.spawn(Counter)
        ref = hermes.monitor(pid)
        hermes.exit(pid, "kill")
        await receive_down(ref)
        assert hermes.cast(pid, 1) is None
        assert hermes.cast("no-such-name", 1) is None
        return await no_message()

    assert run_node(main) is True


# -- crashes ----------------------------------------------------------------------------


class BadInit(hermes.Actor):
    def __init__(self):
        raise ValueError("boom in __init__")


def test_crash_in_init_ends_the_actor_with_the_exception_and_logs_it(caplog):
    async def main():
        hermes.trap_exits(True)
        pid = hermes.spawn(BadInit, link=True)
        exit_msg = await receive_exit(pid)
        with pytest.raises(hermes.ActorExited):
            await hermes.call(pid, "anything", timeout=5)
        return pid, exit_msg

    pid, exit_msg = run_node(main)
    assert type(exit_msg.reason) is ValueError
    assert str(exit_msg.reason) == "boom in __init__"
    assert any("boom in __init__" in t for t in crash_log_entries(caplog.records, pid, "BadInit"))


class Crasher(hermes.Actor):
    def handle_call(self, request, sender):
        raise ValueError("boom in handle_call")

    def handle_cast(self, msg):
        raise ValueError("boom in handle_cast")

    def handle_info(self, msg):
        raise ValueError("boom in handle_info")


class AsyncCrasher(hermes.Actor):
    async def handle_call(self, request, sender):
        await asyncio.sleep(0)
        raise ValueError("boom in handle_call")

    async def handle_cast(self, msg):
        await asyncio.sleep(0)
        raise ValueError("boom in handle_cast")

    async def handle_info(self, msg):
        await asyncio.sleep(0)
        raise ValueError("boom in handle_info")


@pytest.mark.parametrize("cls", [Crasher, AsyncCrasher], ids=["sync", "async"])
@pytest.mark.parametrize("handler", ["handle_call", "handle_cast", "handle_info"])
def test_crash_in_handler_ends_only_that_actor_with_the_exception(cls, handler, caplog):
    async def main():
        bystander = hermes.spawn(Counter, 1)
        pid = hermes.spawn(cls)
        ref = hermes.monitor(pid)
        if handler == "handle_call":
            with pytest.raises(hermes.ActorExited) as info:
                await hermes.call(pid, "x", timeout=5)
            assert info.value.pid == pid
            assert type(info.value.reason) is ValueError
        elif handler == "handle_cast":
            hermes.cast(pid, "x")
        else:
            hermes.send(pid, "x")
        down = await receive_down(ref)
        assert await hermes.call(bystander, "get") == 1  # nothing else disturbed
        return pid, down

    pid, down = run_node(main)
    assert down.pid == pid
    assert type(down.reason) is ValueError
    assert str(down.reason) == f"boom in {handler}"
    logged = crash_log_entries(caplog.records, pid, cls.__name__)
    assert any(f"boom in {handler}" in t and "Traceback" in t for t in logged), caplog.text


class CrashInTerminate(hermes.Actor):
    def handle_cast(self, msg):
        raise ValueError("first crash")

    def terminate(self, reason):
        raise RuntimeError("boom in terminate")


class AsyncCrashInTerminate(CrashInTerminate):
    async def terminate(self, reason):
        await asyncio.sleep(0)
        raise RuntimeError("boom in terminate")


@pytest.mark.parametrize("cls", [CrashInTerminate, AsyncCrashInTerminate], ids=["sync", "async"])
def test_crash_in_terminate_is_logged_and_the_actor_still_ends(cls, caplog):
    async def main():
        bystander = hermes.spawn(Counter, 1)
        pid = hermes.spawn(cls)
        ref = hermes.monitor(pid)
        hermes.cast(pid, "x")
        down = await receive_down(ref)
        assert await hermes.call(bystander, "get") == 1
        return pid, down

    pid, down = run_node(main)
    assert down.pid == pid
    assert isinstance(down.reason, (ValueError, RuntimeError))
    logged = crash_log_entries(caplog.records, pid, cls.__name__)
    assert any("boom in terminate" in t for t in logged), caplog.text

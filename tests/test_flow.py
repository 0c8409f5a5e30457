"""Flow control on one node (issue 11): bounded mailboxes, process_info, warnings."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

import hermes
from conftest import run_node, wait_until

# -- bounded mailboxes ------------------------------------------------------


class Sink(hermes.Actor):
    """Records what it handles; blocked (by ``hold``) until told to go."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def handle_call(self, request: Any, sender: Any) -> Any:
        return list(self.seen) if request == "seen" else request

    def handle_info(self, msg: Any) -> None:
        self.seen.append(msg)


class Bounded(Sink):
    mailbox_limit = 10
    overflow = "drop_newest"


def _fill(pid: hermes.Pid, n: int) -> None:
    """Send 0..n-1 in one loop turn: the actor handles none of them meanwhile."""
    for i in range(n):
        hermes.send(pid, i)


@pytest.mark.parametrize("policy, kept", [("drop_oldest", list(range(90, 100))),
                                          ("drop_newest", list(range(10)))])
def test_overflow_policies_drop_exactly_and_keep_order(policy: str, kept: list[int]) -> None:
    async def main() -> tuple[Any, Any, Any]:
        pid = hermes.spawn(Sink, mailbox_limit=10, overflow=policy)
        _fill(pid, 100)
        info = hermes.process_info(pid)
        seen = await wait_until(lambda: hermes.call(pid, "seen"), timeout=5.0)
        return info, seen, hermes.process_info(pid)

    info, seen, after = run_node(main)
    assert info["mailbox"] == 10 and info["dropped"] == 90
    assert seen == kept
    assert after["mailbox"] == 0 and after["dropped"] == 90 and after["status"] == "waiting"


def test_overflow_exit_ends_the_actor_with_mailbox_overflow() -> None:
    async def main() -> Any:
        pid = hermes.spawn(Sink, mailbox_limit=5, overflow="exit")
        ref = hermes.monitor(pid)
        _fill(pid, 6)
        down = await hermes.receive(lambda m: isinstance(m, hermes.Down) and m.ref == ref, timeout=5.0)
        return down.reason, hermes.process_info(pid)

    assert run_node(main) == ("mailbox_overflow", None)


def test_class_attributes_bound_and_spawn_overrides_them() -> None:
    async def main() -> tuple[Any, Any, Any]:
        by_class = hermes.spawn(Bounded)
        overridden = hermes.spawn(Bounded, mailbox_limit=None)
        _fill(by_class, 50)
        _fill(overridden, 50)
        return hermes.process_info(by_class), hermes.process_info(overridden), await hermes.call(by_class, "seen")

    bounded, unbounded, _ = run_node(main)
    assert (bounded["mailbox"], bounded["dropped"], bounded["mailbox_limit"]) == (10, 40, 10)
    assert (unbounded["mailbox"], unbounded["dropped"], unbounded["mailbox_limit"]) == (50, 0, None)


class Gate(Sink):
    """Holds in an async handler on "hold" until ``gate`` is set."""

    def __init__(self, gate: asyncio.Event, victim: hermes.Pid) -> None:
        super().__init__()
        self.gate = gate
        hermes.trap_exits(True)
        hermes.link(victim)

    async def handle_info(self, msg: Any) -> None:
        if msg == "hold":
            await self.gate.wait()
        else:
            self.seen.append(msg)


def test_calls_and_system_messages_are_never_dropped() -> None:
    async def main() -> Any:
        gate = asyncio.Event()
        victim = hermes.spawn(Sink)
        pid = hermes.spawn(Gate, gate, victim, mailbox_limit=3, overflow="drop_oldest")
        hermes.send(pid, "hold")
        await wait_until(lambda: hermes.process_info(pid)["mailbox"] == 0)
        _fill(pid, 3)  # full of droppable messages
        calls = [asyncio.ensure_future(hermes.call(pid, ("echo", i))) for i in range(5)]
        await wait_until(lambda: hermes.process_info(pid)["mailbox"] == 8)  # the calls went in past the limit
        hermes.exit(victim, "kill")  # an Exit message (trapped) goes in past the limit too
        await wait_until(lambda: hermes.process_info(pid)["mailbox"] == 9)
        hermes.send(pid, "late1")  # each makes room by dropping the oldest plain message
        hermes.send(pid, "late2")
        info = hermes.process_info(pid)
        gate.set()
        replies = await asyncio.gather(*calls)
        return info, replies, await hermes.call(pid, "seen")

    info, replies, seen = run_node(main)
    assert info["mailbox"] == 9 and info["dropped"] == 2
    assert replies == [("echo", i) for i in range(5)]
    assert seen[0] == 2 and isinstance(seen[1], hermes.Exit) and seen[1].reason == "killed"
    assert seen[2:] == ["late1", "late2"]


def test_function_actor_bounded_by_spawn_options() -> None:
    async def slow(ready: asyncio.Event) -> list[Any]:
        await ready.wait()
        got = []
        while True:
            msg = await hermes.receive()
            if msg == "stop":
                return got
            got.append(msg)

    async def main() -> Any:
        ready = asyncio.Event()
        pid = hermes.spawn(slow, ready, mailbox_limit=4, overflow="drop_oldest")
        _fill(pid, 20)
        info = hermes.process_info(pid)
        ready.set()
        hermes.send(pid, "stop")  # a 5th message: the oldest queued (16) gives way
        ref = hermes.monitor(pid)
        await hermes.receive(lambda m: isinstance(m, hermes.Down) and m.ref == ref, timeout=5.0)
        return info, hermes.process_info(pid)

    info, after = run_node(main)
    assert (info["mailbox"], info["dropped"], info["name"]) == (4, 16, None)
    assert after is None


@pytest.mark.parametrize("options, exc, words", [
    ({"mailbox_limit": 0}, ValueError, "mailbox_limit must be at least 1"),
    ({"mailbox_limit": "10"}, TypeError, "mailbox_limit must be an int"),
    ({"overflow": "nope"}, ValueError, "overflow must be one of"),
    ({"overflow": 3}, TypeError, "overflow must be one of"),
])
def test_bad_options_raise_at_spawn_and_spawn_nothing(options: dict[str, Any], exc: type, words: str) -> None:
    async def main() -> Any:
        before = hermes.statistics()["processes"]
        try:
            hermes.spawn(Sink, **options)
        except exc as error:
            return str(error), hermes.statistics()["processes"] - before
        return None, None

    message, spawned = run_node(main)
    assert message is not None and words in message and "\n" not in message
    assert spawned == 0


def test_process_info_of_dead_and_registered_actors() -> None:
    async def main() -> Any:
        pid = hermes.spawn(Sink)
        hermes.register("sink", pid)
        alive = hermes.process_info(pid)
        hermes.exit(pid, "kill")
        await wait_until(lambda: hermes.process_info(pid) is None)
        return alive

    alive = run_node(main)
    assert alive["name"] == "sink" and alive["mailbox"] == 0 and alive["dropped"] == 0


def test_statistics_lists_the_deepest_mailboxes() -> None:
    async def main() -> Any:
        deep = hermes.spawn(Sink, mailbox_limit=100, overflow="drop_newest")
        _fill(deep, 150)
        return hermes.statistics(), str(deep)

    stats, deep = run_node(main)
    assert stats["mailboxes"][0] == {"pid": deep, "name": None, "class": "Sink", "mailbox": 100, "dropped": 50}
    assert stats["dropped"] == 50 and stats["links"] == {}


# -- warnings ---------------------------------------------------------------

class Blocking(hermes.Actor):
    def handle_info(self, msg: Any) -> None:
        if msg == "block":
            time.sleep(0.3)


def test_stall_warning_names_actor_and_handler(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> str:
        pid = hermes.spawn(Blocking)
        hermes.send(pid, "fast")
        hermes.send(pid, "block")
        await wait_until(lambda: hermes.process_info(pid)["mailbox"] == 0 and
                         hermes.process_info(pid)["status"] == "waiting")
        return str(pid)

    with caplog.at_level(logging.WARNING, logger="hermes.runtime"):
        pid = hermes.run(main, name="stall", stall_warning=0.2)
    lines = [r.getMessage() for r in caplog.records if "held the loop" in r.getMessage()]
    assert len(lines) == 1 and pid in lines[0] and "Blocking" in lines[0] and "handle_info" in lines[0]


def test_mailbox_warning_once_per_crossing(caplog: pytest.LogCaptureFixture) -> None:
    async def hold(gate: asyncio.Event) -> None:
        while True:
            await gate.wait()
            gate.clear()
            while await hermes.receive() != "mark":
                pass

    async def main() -> str:
        gate = asyncio.Event()
        pid = hermes.spawn(hold, gate)
        hermes.register("holder", pid)

        def warnings() -> int:
            return sum("has" in r.getMessage() and str(pid) in r.getMessage() for r in caplog.records)

        for crossing in (1, 2):
            _fill(pid, 1_500)
            hermes.send(pid, "mark")
            await wait_until(lambda: warnings() == crossing, timeout=10.0)
            await asyncio.sleep(2.5)  # two more scans while still above: no second line
            assert warnings() == crossing
            gate.set()  # empties the mailbox: a new crossing may be logged
            await wait_until(lambda: hermes.process_info(pid)["mailbox"] == 0)
            await asyncio.sleep(1.5)  # a scan sees it below half
        return str(pid)

    with caplog.at_level(logging.WARNING, logger="hermes.runtime"):
        pid = hermes.run(main, name="mbwarn", mailbox_warning=1_000)
    lines = [r.getMessage() for r in caplog.records if pid in r.getMessage() and "queued" in r.getMessage()]
    assert len(lines) == 2
    assert all("holder" in line and "hold" in line and "mailbox_warning 1000" in line for line in lines)

"""Call timeouts share one timer per node (``runtime._deadlines``)."""
from __future__ import annotations

import asyncio
import time

import pytest

import hermes
from hermes.runtime import lowlevel

from conftest import run_node


class Silent(hermes.Actor):
    def handle_call(self, request, sender):
        return hermes.NOREPLY


class Echo(hermes.Actor):
    def handle_call(self, request, sender):
        return request


def test_a_shorter_timeout_after_a_longer_one_fires_first() -> None:
    async def main():
        silent = hermes.spawn(Silent)
        started = time.monotonic()
        slow = asyncio.ensure_future(hermes.call(silent, "slow", timeout=30.0))
        await asyncio.sleep(0)
        with pytest.raises(TimeoutError, match="0.2s"):
            await hermes.call(silent, "fast", timeout=0.2)
        elapsed = time.monotonic() - started
        assert not slow.done()  # the long one is still waiting
        slow.cancel()
        return elapsed

    assert 0.15 <= run_node(main) < 10.0


def test_timeouts_of_many_calls_each_fire() -> None:
    async def main():
        silent = hermes.spawn(Silent)
        calls = [asyncio.ensure_future(hermes.call(silent, i, timeout=0.05 * (i % 4 + 1))) for i in range(40)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        return [type(r) for r in results]

    assert run_node(main) == [TimeoutError] * 40


def test_answered_calls_do_not_pile_up() -> None:
    async def main():
        echo = hermes.spawn(Echo)
        for i in range(20_000):
            assert await hermes.call(echo, i, timeout=60.0) == i
        return len(lowlevel.current_node().deadlines.heap)

    assert run_node(main) <= 4096


def test_a_call_answered_in_time_never_times_out() -> None:
    async def main():
        echo = hermes.spawn(Echo)
        assert await hermes.call(echo, "x", timeout=0.05) == "x"
        await asyncio.sleep(0.2)  # past its deadline: nothing fires into the done future
        return await hermes.call(echo, "y", timeout=0.05)

    assert run_node(main) == "y"

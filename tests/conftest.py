"""Shared helpers for the test suite.

Single-node tests run their body as the first actor of a fresh standalone node:

    def test_something():
        async def main():
            ...                      # inside an actor: spawn, receive, monitor...
            return value
        assert run_node(main) == value

``run_node`` starts a node, runs ``main`` and tears the node down again, so each
test gets its own runtime. An ``assert`` failing inside ``main`` is re-raised by
``hermes.run``, so assertions may live inside the actor.

The async helpers below must be awaited inside an actor. Every wait has a
deadline (STYLE rule 10): nothing here sleeps and hopes.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import hermes

NODE_NAME = "test"


def run_node(main: Callable[..., Any], *args: Any, name: str = NODE_NAME) -> Any:
    """Run ``main(*args)`` as the first actor of a fresh standalone node; return its result."""
    return hermes.run(main, *args, name=name)


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.002) -> Any:
    """Poll ``predicate`` (sync or async) until it returns a truthy value, which is returned.

    Raises ``AssertionError`` if the deadline passes first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate!r}")
        await asyncio.sleep(interval)


async def receive_down(ref: Any, timeout: float = 5.0) -> hermes.Down:
    """The ``Down`` message of monitor ``ref`` (other messages stay queued)."""
    return await hermes.receive(match=lambda m: isinstance(m, hermes.Down) and m.ref == ref, timeout=timeout)


async def receive_exit(pid: Any, timeout: float = 5.0) -> hermes.Exit:
    """The next ``Exit`` message from ``pid`` (the caller must trap exits)."""
    return await hermes.receive(match=lambda m: isinstance(m, hermes.Exit) and m.pid == pid, timeout=timeout)


async def stays_alive(pid: Any, window: float = 0.1) -> bool:
    """True if ``pid`` is alive and does not exit during the next ``window`` seconds.

    Checking that something does *not* happen needs a bounded window; keep it short.
    """
    ref = hermes.monitor(pid)
    try:
        await receive_down(ref, timeout=window)
    except TimeoutError:
        hermes.demonitor(ref)
        return True
    return False


async def no_message(match: Callable[[Any], bool] | None = None, window: float = 0.1) -> bool:
    """True if no message (matching ``match``) arrives in the caller's mailbox within ``window``."""
    try:
        await hermes.receive(match=match, timeout=window)
    except TimeoutError:
        return True
    return False


# -- an actor that runs what it is told ------------------------------------------------


@dataclass(frozen=True)
class Do:
    """A command for ``agent``: call ``fn()`` inside the agent, reply ``("done", agent, result)``."""

    fn: Callable[[], Any]
    reply_to: Any


async def agent(owner: Any) -> None:
    """An actor that runs ``Do`` commands and forwards any other message to ``owner``
    as ``("got", agent_pid, msg)``, so tests can make it link, trap exits, crash..."""
    while True:
        msg = await hermes.receive()
        if isinstance(msg, Do):
            hermes.send(msg.reply_to, ("done", hermes.self(), msg.fn()))
        else:
            hermes.send(owner, ("got", hermes.self(), msg))


async def ask(agent_pid: Any, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Run ``fn()`` inside ``agent_pid`` and return its result."""
    hermes.send(agent_pid, Do(fn, hermes.self()))
    _, _, result = await hermes.receive(
        match=lambda m: isinstance(m, tuple) and len(m) == 3 and m[:2] == ("done", agent_pid), timeout=timeout
    )
    return result


async def forwarded(agent_pid: Any, timeout: float = 5.0) -> Any:
    """The next message ``agent_pid`` forwarded to its owner (the caller)."""
    _, _, msg = await hermes.receive(
        match=lambda m: isinstance(m, tuple) and len(m) == 3 and m[:2] == ("got", agent_pid), timeout=timeout
    )
    return msg


# -- logging ---------------------------------------------------------------------------


def crash_log_entries(records: list[logging.LogRecord], pid: Any, class_name: str) -> list[str]:
    """Formatted ERROR records (message + traceback) that name both ``pid`` and ``class_name``."""
    formatter = logging.Formatter()
    texts = [formatter.format(r) for r in records if r.levelno >= logging.ERROR]
    return [t for t in texts if str(pid) in t and class_name in t]

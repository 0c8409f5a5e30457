"""``subscription``: a topic's messages for code that is not an actor.

A websocket handler, a request handler or a test is a plain coroutine: it has
no mailbox and must not borrow an actor's. A ``Subscription`` is its own
lightweight process: it has a pid in the node's process table and registers
that pid in the PubSub's Registry, so ``publish`` and a remote node's
forwarded copy reach it through the same ``(pid, deliver)`` fan-out as any
actor, with nothing added to the publish path. Its ``deliver`` appends to a
bounded deque and wakes the one waiting ``get``; no Task, no handler.

Bounds: at most ``maxsize`` messages wait. When full, the ``overflow`` policy
decides, and ``dropped`` counts every message it discarded (so
``published == received + dropped``):

- ``"drop_oldest"``: the oldest waiting message goes (a live feed);
- ``"drop_newest"``: the arriving message goes (keep the backlog);
- ``"error"``: the subscription ends; the next ``get`` raises ``SlowConsumer``
  (with ``.dropped``), as a consumer that must not miss anything should learn.

It ends (its pid exits, which removes its registrations at once) when the
``async with`` block is left, by return, exception or cancellation, and when
the node stops. A subscription is used from the node's loop only.
"""
from __future__ import annotations

import asyncio
from typing import Any

from .. import registry
from .._errors import HermesError, SlowConsumer
from ..runtime import lowlevel
from ..runtime.lowlevel import Process
from ._api import _server

POLICIES = ("drop_oldest", "drop_newest", "error")
_OLDEST, _NEWEST, _ERROR = range(3)
_RUNNING = 0  # Process.state of a live process


class _Inbox(Process):
    """The subscription's process: a bounded queue behind a pid."""

    __slots__ = ("maxsize", "policy", "dropped", "overflowed", "reconnects")

    def __init__(self, node: Any, maxsize: int, policy: int) -> None:
        super().__init__(node, node.new_pid(), None)
        self.maxsize = maxsize
        self.policy = policy
        self.dropped = 0
        self.overflowed = False
        self.reconnects = 0

    def note_reconnect(self) -> None:
        """The adapter's link came back: counted, not queued (a subscription
        delivers published messages only, as they were published)."""
        self.reconnects += 1

    def deliver(self, msg: Any) -> None:
        mailbox = self.mailbox
        if len(mailbox) >= self.maxsize or self.overflowed:
            self.dropped += 1
            if self.policy == _NEWEST:
                return
            if self.policy == _ERROR:
                if not self.overflowed:
                    self.overflowed = True
                    self.node.loop.call_soon(self.exit, "overflow")  # never inside the publisher's code
                    self._wake()
                return
            mailbox.popleft()
        mailbox.append(msg)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def stop_running(self, reason: Any) -> None:
        self.finalize()
        self._wake()

    def finalize(self) -> None:
        kept = list(self.mailbox) if self.reason in ("normal", "shutdown") else []
        super().finalize()  # clears the mailbox
        self.mailbox.extend(kept)  # what arrived before the node stopped can still be read

    def describe_kind(self) -> str:
        return "subscription"


class Subscription:
    """``async with subscription(topic) as sub: async for msg in sub: ...``"""

    def __init__(self, topic: Any, maxsize: int, overflow: str, pubsub: str | None) -> None:
        self.topic = topic
        self.maxsize = maxsize
        self.overflow = overflow
        self.pubsub = pubsub
        self._inbox: _Inbox | None = None

    # -- lifetime -----------------------------------------------------------

    async def __aenter__(self) -> Subscription:
        self.open()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()

    def open(self) -> None:
        """Subscribe now (``async with`` does it)."""
        if self._inbox is not None:
            raise HermesError("this subscription is already open")
        node = lowlevel.current_node()
        table = registry.get_registry(_server(self.pubsub).registry_name)
        inbox = _Inbox(node, self.maxsize, POLICIES.index(self.overflow))
        node.procs[inbox.pid] = inbox
        table.add(inbox.pid, self.topic, None)
        self._inbox = inbox

    def close(self) -> None:
        """Unsubscribe (idempotent): the pid exits and its registration goes with it."""
        inbox = self._inbox
        if inbox is not None:
            inbox.exit("normal")

    # -- reading ------------------------------------------------------------

    @property
    def pid(self) -> Any:
        return self._inbox.pid if self._inbox is not None else None

    @property
    def dropped(self) -> int:
        """Messages the overflow policy discarded so far."""
        return self._inbox.dropped if self._inbox is not None else 0

    @property
    def closed(self) -> bool:
        return self._inbox is not None and self._inbox.state != _RUNNING and not self._inbox.mailbox

    def qsize(self) -> int:
        return len(self._inbox.mailbox) if self._inbox is not None else 0

    def note_reconnect(self) -> None:
        """The adapter's link came back (adapters call it through the pid's process)."""
        if self._inbox is not None:
            self._inbox.note_reconnect()

    @property
    def reconnects(self) -> int:
        """How many times the PubSub's adapter reconnected (Redis) while this was
        open: each time, messages published meanwhile may have been missed."""
        return self._inbox.reconnects if self._inbox is not None else 0

    async def get(self, timeout: float | None = None) -> Any:
        """The next message. ``TimeoutError`` after ``timeout`` seconds;
        ``SlowConsumer`` once the ``"error"`` policy ended it; ``HermesError``
        when it is closed (or its node stopped) and nothing is left."""
        inbox = self._inbox
        if inbox is None:
            raise HermesError("subscription is not open: use 'async with hermes.subscription(topic) as sub'")
        if inbox.overflowed:
            raise SlowConsumer(self.topic, inbox.dropped)
        if inbox.mailbox:
            return inbox.mailbox.popleft()
        if inbox.state != _RUNNING:
            raise HermesError(f"subscription to {self.topic!r} is closed")
        waiter = inbox.waiter = inbox.node.loop.create_future()
        try:
            if timeout is None:
                await waiter
            else:
                await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise TimeoutError(f"no message on {self.topic!r} within {timeout}s") from None
        finally:
            inbox.waiter = None
        return await self.get()  # woken: a message, an overflow or the end

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        inbox = self._inbox
        if inbox is not None and inbox.state != _RUNNING and not inbox.mailbox and not inbox.overflowed:
            raise StopAsyncIteration
        try:
            return await self.get()
        except SlowConsumer:
            raise
        except HermesError:
            if inbox is not None and inbox.state != _RUNNING:
                raise StopAsyncIteration from None
            raise

    def statistics(self) -> dict[str, Any]:
        return {"topic": self.topic, "queued": self.qsize(), "maxsize": self.maxsize, "dropped": self.dropped,
                "overflow": self.overflow, "reconnects": self.reconnects, "open": self._inbox is not None
                and self._inbox.state == _RUNNING}

    def __repr__(self) -> str:
        return f"<hermes.Subscription {self.topic!r} pid={self.pid} dropped={self.dropped}>"


def subscription(topic: Any, *, maxsize: int = 10_000, overflow: str = "drop_oldest",
                 pubsub: str | None = None) -> Subscription:
    """A subscription to ``topic`` with its own bounded queue, for any coroutine
    on the node's loop: ``async with subscription(topic) as sub:``."""
    if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize <= 0:
        raise ValueError(f"maxsize is a positive integer, not {maxsize!r}")
    if overflow not in POLICIES:
        raise ValueError(f"overflow is one of {', '.join(POLICIES)}, not {overflow!r}")
    return Subscription(topic, maxsize, overflow, pubsub)

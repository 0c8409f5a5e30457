"""One timer per event loop for the ticks of every link (not one per link).

An idle node with N peers used to wake N times per tick interval, once per
link, at N different moments; its peers then woke once per arriving tick. A
``Ticker`` calls ``tick()`` on all its links in one loop turn, and fires on
multiples of the interval of ``time.monotonic()`` (CLOCK_MONOTONIC, shared by
the processes of a machine), so the ticks of co-located nodes arrive together
and a node reads them in one or a few loop turns instead of N.

Knows nothing of frames or sockets: a member is anything with ``tick()``.
"""
from __future__ import annotations

import asyncio
import time
import weakref
from typing import Protocol

__all__ = ["Ticker", "aligned_delay", "ticker_for"]


class Tickable(Protocol):
    def tick(self) -> None: ...


_TICKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, Ticker]] = weakref.WeakKeyDictionary()


def aligned_delay(interval: float) -> float:
    """Seconds until the next multiple of ``interval`` of ``time.monotonic()``, at
    least a quarter interval: periodic work of a node (and of its neighbours on the
    machine) scheduled this way runs in one loop wake-up instead of one each."""
    delay = interval - time.monotonic() % interval
    if delay < interval / 4:  # fired a little early, or scheduled just before a boundary
        delay += interval
    return delay


def ticker_for(loop: asyncio.AbstractEventLoop, interval: float) -> Ticker:
    """The ticker of ``loop`` for ``interval`` (made on first use)."""
    by_interval = _TICKERS.setdefault(loop, {})
    ticker = by_interval.get(interval)
    if ticker is None:
        ticker = by_interval[interval] = Ticker(loop, interval)
    return ticker


class Ticker:
    """Calls ``tick()`` on each member every ``interval`` seconds; its timer runs
    only while it has members."""

    __slots__ = ("loop", "interval", "members", "_handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        self.members: dict[Tickable, None] = {}  # insertion-ordered set
        self._handle: asyncio.TimerHandle | None = None

    def add(self, member: Tickable) -> None:
        self.members[member] = None
        if self._handle is None:
            self._schedule()

    def remove(self, member: Tickable) -> None:
        self.members.pop(member, None)
        if not self.members and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        self._handle = self.loop.call_later(aligned_delay(self.interval), self._fire)

    def _fire(self) -> None:
        self._handle = None
        for member in list(self.members):
            member.tick()
        if self.members:
            self._schedule()

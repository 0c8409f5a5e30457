"""Flow control of one link (a mixin of ``Connection``).

Sending: the bytes queued on this link (our buffer + the transport's) are
bounded by ``max_link_buffer``; past it the link is closed as overloaded,
as Erlang closes a busy distribution port's link rather than grow without
bound. Everything queued is dropped with it: what the peer got is a prefix
of what we sent, never a stream with a gap. ``drain`` is the cooperative
way to stay below it. Receiving: the owner may ``pause_reading`` while it
cannot deliver what arrives; TCP then pushes back on the peer's link buffer.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

log = logging.getLogger("hermes.transport._connection")


class LinkFlowControl:
    """The link's bounds: ``max_link_buffer``, ``drain``, pausing reads."""

    __slots__ = ()  # the state is Connection's (its __slots__ name it)
    _link_limit: int
    _room: int
    _paused: bool
    _overloaded: bool
    _wbuf: bytearray
    _pending_frames: int
    _drainers: list[asyncio.Future[None]] | None
    _reading_paused: bool
    _transport: Any
    _loop: asyncio.AbstractEventLoop
    closed: bool

    if TYPE_CHECKING:  # Connection's
        def _who(self) -> str: ...
        def _shutdown(self, reason: str, *, abort: bool) -> None: ...

    def set_link_limit(self, limit: int) -> None:
        """Bound the bytes queued on this link (see above); the transport's own
        high-water mark is kept well below it, so ``drain`` wakes early enough."""
        if limit < 1:
            raise ValueError(f"max_link_buffer must be positive, not {limit}")
        self._link_limit = limit
        if not self._paused and not self._overloaded:
            self._room = limit
        if self._transport is not None:
            high = max(min(limit // 4, 1 << 20), 1)
            self._transport.set_write_buffer_limits(high=high, low=high // 4)

    def queued_bytes(self) -> int:
        """Bytes not yet handed to the kernel: our buffer plus the transport's."""
        transport = self._transport
        held = transport.get_write_buffer_size() if transport is not None and not transport.is_closing() else 0
        return len(self._wbuf) + held

    def _overload(self) -> None:
        # Called from a sender's code: drop what is queued now, close from a loop
        # callback of our own (the delegate's node-down work never runs inside a
        # publish). Until then every send lands here and is dropped too.
        queued = self.queued_bytes()
        self._wbuf = bytearray()
        self._pending_frames = 0
        if self._overloaded:
            return
        self._overloaded = True
        self._room = -1
        log.warning("link to %s overloaded: %d bytes queued (max_link_buffer %d); closing it", self._who(),
                    queued, self._link_limit)
        self._loop.call_soon(self._shutdown_overloaded)

    def _shutdown_overloaded(self) -> None:
        self._shutdown("overloaded", abort=True)

    async def drain(self) -> None:
        """Return once this link's queue is below the transport's low-water mark
        (or the link is closed: nothing is queued any more)."""
        if self.closed or (not self._paused and not self._wbuf):
            return
        if self._drainers is None:
            self._drainers = []
        waiter = self._loop.create_future()
        self._drainers.append(waiter)
        await waiter

    def _wake_drainers(self) -> None:
        drainers, self._drainers = self._drainers, None
        for waiter in drainers or ():
            if not waiter.done():
                waiter.set_result(None)

    def pause_reading(self) -> None:
        """Stop reading from the peer (its sends then queue on its side); ticks
        from it are not expected meanwhile."""
        if self._transport is not None and not self._reading_paused and not self.closed:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if self._transport is not None and not self.closed:
                self._transport.resume_reading()

    @property
    def reading_paused(self) -> bool:
        return self._reading_paused

"""The write path of a link (a mixin of ``Connection``): framing and coalescing.

Frames are a 4-byte big-endian length + payload. A frame goes out at once,
with no loop callback, if nothing is queued, the link is not streaming and it
is *armed*: something was read on it, or its last flush ran, since the last
frame written that way. That is a request or its reply: each side then spends
one loop turn per call, not two. Otherwise the frame waits in one bytearray
for a ``flush`` scheduled with ``call_soon``, which writes all of the turn's
frames at once; a sender that put several frames in one turn is *streaming*
and gets one write per turn, not two. So a frame waits at most to the end of
its turn. While the transport is paused
(peer slow), frames stay in that buffer, never dropped; order is kept.

Knows bytes and the transport's write side only; the state is ``Connection``'s.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from hermes._errors import SerializationError
from hermes.transport._codec import dumps
from hermes.transport._handshake import FRAME_HEADER

_pack = FRAME_HEADER.pack
_HEADER = FRAME_HEADER.size


class FrameWriter:
    """``send``/``send_payload``, the coalesced flush, and the transport's
    ``pause_writing``/``resume_writing``."""

    __slots__ = ()  # the state is Connection's (its __slots__ name it)
    _max_frame: int
    _wbuf: bytearray
    _room: int
    _link_limit: int
    _pending_frames: int
    _flush_scheduled: bool
    _armed: bool
    _streaming: bool
    _paused: bool
    _overloaded: bool
    _wrote: bool
    _frames_out: int
    _writes: int
    _bytes_out: int
    _drainers: list[asyncio.Future[None]] | None
    _transport: Any
    _loop: asyncio.AbstractEventLoop
    authenticated: bool
    closed: bool

    if TYPE_CHECKING:  # LinkFlowControl's
        def _overload(self) -> None: ...
        def _wake_drainers(self) -> None: ...

    def send(self, obj: Any) -> None:
        """Pickle ``obj`` and queue it. ``SerializationError`` propagates, nothing is queued."""
        payload = dumps(obj)
        if len(payload) > self._max_frame:
            raise SerializationError(type(obj).__qualname__, f"pickled size {len(payload)} exceeds max_frame")
        self.send_payload(payload)

    def send_payload(self, payload: bytes | bytearray | memoryview) -> None:
        """Queue an already-pickled payload (copied at once; byte-format buffers only).

        Frames sent before the handshake completes wait for it; frames sent
        after close are dropped, like a message to a dead node.
        """
        size = len(payload)
        if not size or size > self._max_frame:
            if size:  # too big: the same error as send()'s, whoever pickled it
                raise SerializationError("payload", f"pickled size {size} exceeds max_frame {self._max_frame}")
            raise ValueError("an empty payload is a TICK, not a frame")
        if self.closed:
            return
        wbuf = self._wbuf
        if self._flush_scheduled:  # a later frame of this turn (a stream's): it waits for that flush
            wbuf += _pack(size)
            wbuf += payload
            if len(wbuf) > self._room:  # past max_link_buffer: see _overload
                self._overload()
            else:
                self._pending_frames += 1
            return
        if (self._armed and not wbuf and not self._streaming and not self._paused
                and self.authenticated and size + _HEADER <= self._room):
            # A request or a reply on an idle, armed link (see below): written here, in one
            # piece, without the buffer and the three calls of _write_buffer/_write.
            self._armed = False
            data = _pack(size) + payload
            self._transport.write(data)
            self._frames_out += 1
            self._writes += 1
            self._bytes_out += len(data)
            self._wrote = True
            return
        wbuf += _pack(size)
        wbuf += payload
        if len(wbuf) > self._room:  # past max_link_buffer: see _overload
            self._overload()
            return
        self._pending_frames += 1
        if self.authenticated:  # (no flush is scheduled: see above)
            if self._armed and not self._streaming and not self._paused:
                # A request or a reply on a link that is not streaming: out at once,
                # with no flush to schedule (that cost each side a loop turn per call).
                self._armed = False
                self._write_buffer()
                return
            # The frames that follow wait for one coalesced write at the end of the turn.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        # This turn's frames: those pending, plus the one written at once (not armed) if any.
        self._streaming = self._pending_frames + (not self._armed) > 1
        self._armed = True  # a turn boundary: the next frame may go out at once again
        if self._paused or not self._wbuf or self.closed:
            return
        self._write_buffer()
        if self._drainers is not None and not self._paused:
            self._wake_drainers()

    def _write_buffer(self) -> None:
        # Hand the bytearray over and start a new one: since 3.12 the transport
        # may keep a view of what it could not send at once, so never reuse it.
        data, self._wbuf = self._wbuf, bytearray()
        self._frames_out += self._pending_frames
        self._pending_frames = 0
        self._write(data)
        self._wrote = True

    def _write(self, data: bytes | bytearray) -> None:
        assert self._transport is not None
        self._transport.write(data)
        self._writes += 1
        self._bytes_out += len(data)

    def pause_writing(self) -> None:
        self._paused = True
        if self._transport is not None:  # what the transport holds counts against the limit
            self._room = self._link_limit - self._transport.get_write_buffer_size()

    def resume_writing(self) -> None:
        self._paused = False
        if not self._overloaded:
            self._room = self._link_limit
        if self._drainers is not None and not self._wbuf:
            self._wake_drainers()
        if self._wbuf and not self._flush_scheduled and self.authenticated and not self.closed:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

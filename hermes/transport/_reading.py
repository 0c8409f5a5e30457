"""The read path of a link (a mixin of ``Connection``): buffers and framing.

Reads go into one reused ``bytearray`` per link (``get_buffer``, asyncio's
``BufferedProtocol``) instead of a fresh bytes object per read: asyncio's own
256 KiB read buffer is above glibc's mmap threshold, so each read cost an mmap
and a munmap. Frames are a 4-byte big-endian length + payload; length 0 is a
TICK. A length above ``max_frame`` closes the connection before anything of
the frame is buffered. No byte from a peer may stop the node: whatever
unpickling or handling a frame raises is logged in one line and the frame
dropped, the link kept.

Knows bytes and the delegate's ``frame_received``; the state is ``Connection``'s.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hermes.transport._codec import loads
from hermes.transport._handshake import FRAME_HEADER

log = logging.getLogger("hermes.transport._connection")

_unpack_from = FRAME_HEADER.unpack_from
_HEADER_SIZE = FRAME_HEADER.size
READ_MIN = 16 * 1024     # bytes offered to a read at first
READ_MAX = 256 * 1024    # ... and at most, as asyncio's own reads


class FrameReader:
    """``get_buffer``/``buffer_updated`` and the delivery of every complete frame."""

    __slots__ = ()  # the state is Connection's (its __slots__ name it)
    _rbuf: bytearray
    _rstart: int
    _rend: int
    _offered: int
    _read_size: int
    _heard: bool
    _armed: bool
    _max_frame: int
    _frames_in: int
    _ticks_in: int
    _bytes_in: int
    _undecodable: int
    _delegate: Any
    authenticated: bool
    closed: bool

    if TYPE_CHECKING:  # Connection's
        def _who(self) -> str: ...
        def _shutdown(self, reason: str, *, abort: bool) -> None: ...
        def _handshake_data(self, data: bytes) -> None: ...

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self._rbuf) - self._rend < self._read_size:
            self._make_room(self._read_size)
        self._offered = len(self._rbuf) - self._rend
        return memoryview(self._rbuf)[self._rend:]

    def _make_room(self, free: int) -> None:
        """At least ``free`` bytes after the unparsed ones (and room for the whole
        frame they begin, so a big frame is copied once, not per read).

        Never resizes ``_rbuf`` in place: the transport may still hold a view of it."""
        buf, start, end = self._rbuf, self._rstart, self._rend
        pending = end - start
        need = pending + free
        if pending >= _HEADER_SIZE:
            need = max(need, _HEADER_SIZE + _unpack_from(buf, start)[0])
        if need <= len(buf) <= 4 * READ_MAX:
            buf[:pending] = buf[start:end]  # same length: a move, no resize
        else:
            fresh = bytearray(max(need, READ_MIN))
            fresh[:pending] = buf[start:end]
            self._rbuf = fresh
        self._rstart, self._rend = 0, pending

    def buffer_updated(self, nbytes: int) -> None:
        if nbytes == self._offered and self._read_size < READ_MAX:
            self._read_size *= 2  # a streaming peer: fewer, larger reads
        self._bytes_in += nbytes
        self._heard = self._armed = True  # a read begins a turn: see FrameWriter.send_payload
        start, end = self._rstart, self._rend + nbytes
        self._rend = end
        if self.closed:
            self._rstart = self._rend = 0
            return
        if not self.authenticated:
            self._rstart = self._rend = 0
            self._handshake_data(bytes(self._rbuf[start:end]))
            return
        self._consume(start, end)

    def _consume(self, start: int, end: int) -> None:
        pos = self._deliver_frames(self._rbuf, start, end)
        if pos == end or self.closed:
            self._rstart = self._rend = 0
        else:
            self._rstart = pos

    def data_received(self, data: bytes) -> None:
        """Bytes handed over another way (a TLS upgrade's early bytes): as if read."""
        size = len(data)
        if len(self._rbuf) - self._rend < size:
            self._make_room(size)
        self._rbuf[self._rend:self._rend + size] = data
        self._offered = -1  # a copy, not a read: no growth of the read size
        self.buffer_updated(size)

    def _receive_frames(self, data: bytes) -> None:
        """Bytes that arrived another way (the handshake's leftover): as if read."""
        self._make_room(len(data))
        start = self._rend
        self._rbuf[start:start + len(data)] = data
        self._rend = start + len(data)
        self._consume(self._rstart, self._rend)

    def _deliver_frames(self, buf: bytearray, pos: int, available: int) -> int:
        """Deliver every complete frame in ``buf[pos:available]``; return where the rest starts."""
        deliver = self._delegate.frame_received
        max_frame = self._max_frame
        frames = ticks = 0
        with memoryview(buf) as view:  # released before anyone resizes ``buf``
            while available - pos >= _HEADER_SIZE:
                (size,) = _unpack_from(buf, pos)
                if size > max_frame:
                    self._oversized(size)
                    break
                start = pos + _HEADER_SIZE
                end = start + size
                if end > available:
                    break
                if size:
                    frames += 1
                    # BaseException, not Exception: a pickle's __reduce__ may raise SystemExit,
                    # KeyboardInterrupt or GeneratorExit, and no peer's bytes may stop the node.
                    # (The node's own shutdown never comes through a frame: it is node.stop.)
                    try:
                        obj = loads(view[start:end])
                    except BaseException as exc:  # any unpickling failure: drop the frame, keep the link
                        self._drop_undecodable(exc)
                    else:
                        try:
                            deliver(self, obj)
                        except BaseException as exc:
                            self._handler_failed(exc)
                else:
                    ticks += 1
                pos = end
                if self.closed:  # the delegate closed us: deliver nothing more
                    break
        self._frames_in += frames
        self._ticks_in += ticks
        return pos

    def _drop_undecodable(self, exc: BaseException) -> None:
        self._undecodable += 1
        # No exc_info: a kept traceback would pin the receive buffer's view.
        log.warning("dropped a frame from %s that failed to unpickle: %s", self._who(), describe(exc))

    def _handler_failed(self, exc: BaseException) -> None:
        # One line names the peer; the traceback (a bug of ours, or a frame of a wrong
        # shape) only at debug level, so that a hostile peer cannot flood the log.
        log.error("dropped a frame from %s: handling it raised %s", self._who(), describe(exc))
        log.debug("traceback of the failed frame from %s", self._who(), exc_info=exc)

    def _oversized(self, size: int) -> None:
        log.warning("%s announced a frame of %d bytes (max_frame %d); closing", self._who(), size, self._max_frame)
        self._shutdown(f"oversized frame ({size} bytes)", abort=True)


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception a peer's bytes raised; its ``__str__`` may raise too."""
    try:
        text = str(exc)
    except BaseException:  # a hostile exception's __str__: name its type only
        text = "?"
    text = " ".join(text[:200].split())  # one line, even for a multi-line message
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

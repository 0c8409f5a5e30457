"""One authenticated TCP link to a peer node: framing, handshake, writes, ticks.

Owns the byte stream of one connection. It must not know about actors, pids,
routing or what the frames mean: payloads are opaque pickled objects, handed
to a delegate (the lead's distribution manager) one by one. Dialling and
listening (``open_connection``, ``start_listener``) live in ``_endpoints``.

Rules:

- Frames are a 4-byte big-endian length + payload; length 0 is a TICK. The
  read path (a reused buffer, framing, delivery) is ``_reading``'s, the write
  path (coalesced writes, one per loop turn) ``_writing``'s, the link's bounds
  (``max_link_buffer``, paused reads) ``_linkflow``'s: mixins of ``Connection``.
- Until the handshake (``_handshake``) is done nothing from the peer is
  unpickled and nothing is delivered; any handshake failure aborts the
  transport. ``connection_closed`` is called exactly once for every
  connection that reached ``connection_made``, established or not
  (``conn.peer is None`` tells it never was).
- Ticks, as Erlang's net_ticktime: a TICK is written once ``TICK_EVERY``
  tick intervals passed with nothing else written, and the connection is closed when nothing at all arrived
  during ``TICK_MISSES`` intervals. All nodes must use the same interval. One
  timer per loop drives the ticks of every link (``_ticks``), so an idle node
  wakes once per interval, not once per peer.
- Everything runs on the event loop thread; nothing here is thread-safe.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Any, Protocol

from hermes._errors import HandshakeError
from hermes.transport._handshake import FRAME_HEADER, Handshake, HandshakeRefused, PeerInfo, Role, State
from hermes.transport._linkflow import LinkFlowControl
from hermes.transport._reading import READ_MIN, FrameReader, describe
from hermes.transport._ticks import Ticker, ticker_for
from hermes.transport._writing import FrameWriter

__all__ = [
    "DEFAULT_MAX_FRAME", "TICK_MISSES", "Connection", "ConnectionDelegate", "ConnectionStatistics",
    "PeerInfo", "PeerRefusedError",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_FRAME = 64 * 2**20
DEFAULT_MAX_LINK_BUFFER = 64 * 2**20
TICK_MISSES = 4
# A TICK goes out after this many intervals in which nothing was written: the
# peer still hears something at least every 2 of its 4 intervals, and an idle
# cluster sends half the ticks (they are most of its idle cost).
TICK_EVERY = 2
_TICK = FRAME_HEADER.pack(0)


class PeerRefusedError(ConnectionRefusedError):
    """The peer authenticated us, then declined (NOK): e.g. a duplicate connection."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"connection refused by peer: {reason}")


class ConnectionDelegate(Protocol):
    """What a connection reports to its owner. All calls happen on the loop thread."""

    def accept_peer(self, conn: Connection, peer: PeerInfo) -> bool:
        """Acceptor side only: the authenticated ``peer`` wants in; False sends NOK."""
        return True

    def connection_established(self, conn: Connection) -> None:
        """After a successful handshake, on both sides, before any frame_received."""

    def frame_received(self, conn: Connection, obj: Any) -> None:
        """One unpickled frame, in the order the peer sent them."""

    def connection_closed(self, conn: Connection, reason: str) -> None:
        """Exactly once per connection; ``conn.peer is None`` if it never got established."""


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int
    writes: int  # transport.write calls, i.e. syscalls at most
    ticks_in: int
    ticks_out: int
    undecodable: int  # frames dropped because they failed to unpickle
    queued_bytes: int  # waiting in user space (flush pending or transport paused)
    paused: bool


class Connection(FrameWriter, FrameReader, LinkFlowControl, asyncio.BufferedProtocol):
    """An ``asyncio.BufferedProtocol`` for one node-to-node link; see the module docstring."""

    # Slots make the attribute reads and writes of the hot path cheaper.
    __slots__ = (
        "_delegate", "role", "local", "peer", "authenticated", "closed", "close_reason",
        "_loop", "_transport", "_address", "_handshake", "_max_frame", "_tick_interval", "_handshake_timeout",
        "_wbuf", "_rbuf", "_rstart", "_rend", "_read_size", "_offered", "_flush_scheduled", "_armed", "_streaming", "_paused", "_pending_frames", "_wrote", "_heard", "_silent", "_quiet",
        "_timer", "_ticker", "_linger", "_waiter", "_failure",
        "_frames_in", "_frames_out", "_bytes_in", "_bytes_out", "_writes", "_ticks_in", "_ticks_out", "_undecodable",
        "_link_limit", "_room", "_overloaded", "_drainers", "_reading_paused",  # flow control
    )

    def __init__(
        self, delegate: ConnectionDelegate, *, role: Role, local: PeerInfo, cookie: bytes,
        max_frame: int = DEFAULT_MAX_FRAME, tick_interval: float = 1.0, handshake_timeout: float = 5.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        _check_options(max_frame, tick_interval, handshake_timeout)
        self._delegate = delegate
        self.role: Role = role
        self.local = local
        # Who the peer is, once established (kept after close). Typed as what
        # everyone past the handshake sees: only this class and a delegate's
        # connection_closed (``peer is None``: it never got established) see None.
        self.peer: PeerInfo = None  # type: ignore[assignment]
        self.authenticated = False  # handshake completed (stays True after close)
        self.closed = False
        self.close_reason: str | None = None
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._address = "?"
        self._handshake: Handshake | None = Handshake(role, local, cookie)
        self._max_frame = max_frame
        self._tick_interval = tick_interval
        self._handshake_timeout = handshake_timeout
        self._wbuf = bytearray()
        # Unparsed bytes are _rbuf[_rstart:_rend]; reads land after them. The read size
        # starts small (idle links cost little memory) and doubles while reads fill it.
        self._rbuf = bytearray(READ_MIN)
        self._rstart = self._rend = self._offered = 0
        self._read_size = READ_MIN
        self._flush_scheduled = self._armed = self._streaming = self._paused = self._wrote = self._heard = False
        self._pending_frames = self._silent = self._quiet = 0
        self._timer: asyncio.TimerHandle | None = None  # the handshake timeout
        self._ticker: Ticker | None = None  # once established
        self._linger: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[BaseException | None] | None = None  # open_connection's
        self._failure: BaseException | None = None
        self._frames_in = self._frames_out = self._bytes_in = self._bytes_out = self._writes = 0
        self._ticks_in = self._ticks_out = self._undecodable = 0
        # flow control: bytes this link may queue (user buffer + transport's), and how
        # many more the user buffer may take now (the limit less what the transport holds)
        self._link_limit = self._room = DEFAULT_MAX_LINK_BUFFER
        self._overloaded = self._reading_paused = False
        self._drainers: list[asyncio.Future[None]] | None = None

    def __repr__(self) -> str:
        who = self.peer.name if self.peer else self._address
        state = "closed" if self.closed else "up" if self.authenticated else "handshaking"
        return f"<Connection {self.role} {who} {state}>"

    # -- handshake -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's transports are not asyncio.Transport
        # subclasses, only the same interface.
        self._transport = transport  # type: ignore[assignment]
        self._address = _format_address(transport.get_extra_info("peername"))
        _set_nodelay(transport)
        assert self._handshake is not None
        self._timer = self._loop.call_later(self._handshake_timeout, self._handshake_timed_out)
        hello = self._handshake.initiate()
        if hello:
            self._write(hello)

    def _handshake_data(self, data: bytes) -> None:
        handshake = self._handshake
        assert handshake is not None
        try:
            reply = handshake.receive_data(data)
            if reply:
                self._write(reply)
            if handshake.state is State.AWAIT_VERDICT:
                self._write(handshake.verdict(self._ask_accept(handshake)))
        except HandshakeRefused as exc:
            log.info("%s refused the connection: %s", self._address, exc.reason)
            self._fail(f"refused: {exc.reason}", PeerRefusedError(exc.reason))
            return
        except HandshakeError as exc:
            log.warning("handshake with %s failed: %s", self._address, exc)
            self._fail(f"handshake failed: {exc}", exc)
            return
        except BaseException as exc:  # whatever the peer's bytes make the parser raise: drop the connection
            log.warning("handshake with %s failed: %s", self._address, describe(exc))
            self._fail("handshake failed", HandshakeError(f"bad handshake from {self._address}"))
            return
        if handshake.state is State.REFUSED:
            self.close("peer not accepted")  # graceful, so that the NOK reaches the connector
        elif handshake.state is State.DONE:
            self._establish(handshake.peer, handshake.take_leftover())

    def _ask_accept(self, handshake: Handshake) -> bool:
        assert handshake.peer is not None
        try:
            return bool(self._delegate.accept_peer(self, handshake.peer))
        except Exception:
            log.exception("accept_peer failed for %s; refusing it", handshake.peer.name)
            return False

    def _establish(self, peer: PeerInfo | None, leftover: bytes) -> None:
        assert peer is not None
        self._handshake = None  # the cookie and nonces are no longer needed
        self.peer = peer
        self.authenticated = True
        self._cancel_timer()
        self._ticker = ticker_for(self._loop, self._tick_interval)
        self._ticker.add(self)
        log.debug("connection %s with %s established", self.role, peer.name)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        try:
            self._delegate.connection_established(self)
        except Exception:
            log.exception("connection_established failed for %s", peer.name)
        if self.closed:
            return
        if self._wbuf and not self._flush_scheduled:  # frames sent before or during establishment
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        if leftover:
            self._receive_frames(leftover)

    def _handshake_timed_out(self) -> None:
        log.warning("handshake with %s timed out after %.1f s", self._address, self._handshake_timeout)
        self._fail("handshake timeout", TimeoutError(f"handshake with {self._address} timed out"))

    def _fail(self, reason: str, failure: BaseException) -> None:
        if not self.closed:
            self._failure = failure
            self._shutdown(reason, abort=True)

    # -- ticks ---------------------------------------------------------------

    def tick(self) -> None:
        """Called by the loop's ``Ticker`` every ``tick_interval``."""
        if self.closed:
            return
        self._silent = 0 if self._heard or self._reading_paused else self._silent + 1
        self._heard = False
        if self._silent >= TICK_MISSES:
            log.warning("tick timeout: nothing from %s for %d intervals; closing", self._who(), self._silent)
            self._shutdown("tick timeout", abort=True)
            return
        self._quiet = 0 if self._wrote else self._quiet + 1
        self._wrote = False
        if self._quiet >= TICK_EVERY and not self._wbuf and not self._paused:
            self._write(_TICK)
            self._ticks_out += 1
            self._quiet = 0

    # -- closing -------------------------------------------------------------

    def close(self, reason: str = "closed") -> None:
        """Close gracefully: frames already queued are written first. Idempotent."""
        if self.closed:
            return
        if self._wbuf and self.authenticated and self._transport is not None:
            self._write_buffer()
        self._shutdown(reason, abort=False)

    def abort(self, reason: str = "aborted") -> None:
        """Close at once, dropping whatever is still queued. Idempotent."""
        if not self.closed:
            self._shutdown(reason, abort=True)

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        if self.closed:
            return
        reason = f"connection lost: {exc}" if exc else "connection closed by peer"
        if not self.authenticated:
            log.warning("%s closed the connection during the handshake", self._address)
            self._failure = HandshakeError(f"{self._address} closed the connection during the handshake")
        self._shutdown(reason, abort=False)

    def _shutdown(self, reason: str, *, abort: bool) -> None:
        # The one place that closes: guarded so the delegate hears it exactly once,
        # even when two timers (ours and open_connection's) fire in the same turn.
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._cancel_timer()
        if self._drainers is not None:
            self._wake_drainers()
        self._wbuf = bytearray()
        self._rbuf = bytearray()
        self._rstart = self._rend = 0
        self._handshake = None
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if abort:
                transport.abort()
            else:
                transport.close()
                # A peer that never reads would keep the socket forever; cap it.
                self._linger = self._loop.call_later(max(self._handshake_timeout, 1.0), transport.abort)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self._failure or ConnectionResetError(reason))
        log.debug("connection %s with %s closed: %s", self.role, self._who(), reason)
        if transport is not None:  # never connected at all: the delegate never knew us
            try:
                self._delegate.connection_closed(self, reason)
            except Exception:
                log.exception("connection_closed failed for %s", self._who())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ticker is not None:
            self._ticker.remove(self)
            self._ticker = None

    # -- introspection -------------------------------------------------------

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            frames_in=self._frames_in, frames_out=self._frames_out, bytes_in=self._bytes_in,
            bytes_out=self._bytes_out, writes=self._writes, ticks_in=self._ticks_in, ticks_out=self._ticks_out,
            undecodable=self._undecodable, queued_bytes=len(self._wbuf), paused=self._paused,
        )

    @property
    def peer_address(self) -> str:
        """The socket address of the other end, as ``host:port``."""
        return self._address

    def _who(self) -> str:
        return f"{self.peer.name} ({self._address})" if self.peer else self._address


def _check_options(max_frame: int, tick_interval: float, handshake_timeout: float) -> None:
    if not 0 < max_frame < 2**32:
        raise ValueError(f"max_frame must be in 1..2**32-1, not {max_frame}")
    if tick_interval <= 0 or handshake_timeout <= 0:
        raise ValueError("tick_interval and handshake_timeout must be positive")


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _format_address(peername: Any) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        return f"{peername[0]}:{peername[1]}"
    return str(peername)


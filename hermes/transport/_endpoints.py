"""Endpoints of the node-to-node transport: dialling a peer and listening for peers.

What it owns: ``open_connection`` (connect + handshake under one timeout,
turning the connection's failure into the exception the caller sees) and
``start_listener`` (one ``Connection`` per accepted socket, announcing the
port actually bound when asked for port 0).

Rules: ``timeout`` covers connect and handshake together; a cancelled or
timed-out ``open_connection`` leaves no connection behind.

TLS (``ssl=`` a context from ``_tls``): the connector wraps the socket in
``create_connection``; the listener accepts plain TCP and upgrades each socket
with ``loop.start_tls`` itself, because asyncio's own TLS server logs a
failed handshake nowhere (an ``OSError`` goes only to a debug-mode log): this
way a peer that does not present a certificate chaining to the CA, or speaks
plain TCP to a TLS node, is refused with one warning naming its address. The
cookie handshake then runs inside the TLS session as it does on plain TCP.

What it must not know: framing, ticks or the handshake's messages (``_connection``
and ``_handshake`` own them), and, like the whole transport, actors, pids and routing.
"""
from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from dataclasses import replace
from typing import Any, Callable, cast

from hermes.transport._connection import DEFAULT_MAX_FRAME, Connection, ConnectionDelegate, PeerInfo, _check_options
from hermes.transport._tls import describe

__all__ = ["open_connection", "start_listener"]

log = logging.getLogger("hermes.transport")


async def open_connection(
    delegate: ConnectionDelegate, host: str, port: int, *, local: PeerInfo, cookie: bytes,
    timeout: float = 5.0, max_frame: int = DEFAULT_MAX_FRAME, tick_interval: float = 1.0,
    ssl: _ssl.SSLContext | None = None,
) -> Connection:
    """Connect and run the handshake; return the established connection.

    Raises ``PeerRefusedError`` (the peer's NOK; a ``ConnectionRefusedError``
    like a TCP refusal),
    ``HandshakeError`` (authentication failed), ``TimeoutError`` (``timeout``
    covers connect + handshake) or another ``OSError`` (unreachable; with
    ``ssl``, an ``ssl.SSLError`` when the peer's certificate is refused or it
    does not speak TLS, logged as one warning naming the address).
    """
    loop = asyncio.get_running_loop()
    conn = Connection(delegate, role="connect", local=local, cookie=cookie, max_frame=max_frame,
                      tick_interval=tick_interval, handshake_timeout=timeout, loop=loop)
    waiter = conn._waiter = loop.create_future()
    try:
        async with asyncio.timeout(timeout):
            if ssl is None:
                await loop.create_connection(lambda: conn, host, port)
            else:
                await _connect_tls(loop, conn, host, port, ssl, timeout)
            failure = await waiter
    except TimeoutError:
        conn._fail("connect timeout", TimeoutError())
        raise TimeoutError(f"connecting to {host}:{port} timed out after {timeout} s") from None
    except BaseException:
        conn.abort("connect cancelled")
        raise
    if failure is not None:
        raise failure
    return conn


async def start_listener(
    delegate: ConnectionDelegate | Callable[[], ConnectionDelegate], host: str, port: int, *,
    local: PeerInfo, cookie: bytes, max_frame: int = DEFAULT_MAX_FRAME, tick_interval: float = 1.0,
    handshake_timeout: float = 5.0, ssl: _ssl.SSLContext | None = None,
) -> asyncio.Server:
    """Listen for peers. ``delegate`` is a delegate or a zero-argument factory of them.

    If ``local.address`` has port 0, accepted connections announce the port
    actually bound (read it back from ``server.sockets[0].getsockname()``).
    """
    _check_options(max_frame, tick_interval, handshake_timeout)
    loop = asyncio.get_running_loop()
    if isinstance(delegate, type) or not hasattr(delegate, "frame_received"):
        make_delegate = cast("Callable[[], ConnectionDelegate]", delegate)
    else:
        shared = cast(ConnectionDelegate, delegate)
        make_delegate = lambda: shared  # noqa: E731
    identity = local

    def accept() -> Connection:
        return Connection(make_delegate(), role="accept", local=identity, cookie=cookie, max_frame=max_frame,
                          tick_interval=tick_interval, handshake_timeout=handshake_timeout, loop=loop)

    if ssl is None:
        server = await loop.create_server(accept, host, port)
    else:
        upgrades: set[asyncio.Task[None]] = set()
        server = await loop.create_server(lambda: _TLSAcceptor(accept, ssl, handshake_timeout, upgrades), host, port)
    if local.address[1] == 0:
        identity = replace(local, address=(local.address[0], server.sockets[0].getsockname()[1]))
    return server


async def _connect_tls(loop: asyncio.AbstractEventLoop, conn: Connection, host: str, port: int,
                       context: _ssl.SSLContext, timeout: float) -> None:
    try:
        # server_hostname: SNI only; check_hostname is off (see _tls for why).
        await loop.create_connection(lambda: conn, host, port, ssl=context, server_hostname=host,
                                     ssl_handshake_timeout=timeout)
    except (_ssl.SSLError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
        # refused during the TLS handshake (nothing listening is a plain ConnectionRefusedError:
        # discovery retries it quietly, as without TLS)
        log.warning("TLS connection to %s:%s refused: %s", host, port, describe(exc))
        raise


class _TLSAcceptor(asyncio.Protocol):
    """Holds an accepted plain socket until ``start_tls`` hands it, upgraded, to a ``Connection``."""

    def __init__(self, accept: Callable[[], Connection], context: _ssl.SSLContext, timeout: float,
                 upgrades: set[asyncio.Task[None]]) -> None:
        self._accept, self._context, self._timeout, self._upgrades = accept, context, timeout, upgrades

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # any stream transport (uvloop's are not asyncio.Transport subclasses)
        transport.pause_reading()  # type: ignore[attr-defined]  # not a byte for us: start_tls resumes reading under TLS
        task = asyncio.get_running_loop().create_task(self._upgrade(transport))  # type: ignore[arg-type]
        self._upgrades.add(task)
        task.add_done_callback(self._upgrades.discard)

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        address = _address(transport.get_extra_info("peername"))
        conn = self._accept()
        early = _Early()  # holds what arrives between the TLS handshake and this task's turn
        try:
            tls_transport = await loop.start_tls(transport, early, self._context, server_side=True,
                                                 ssl_handshake_timeout=self._timeout)
        except (OSError, TimeoutError, EOFError) as exc:  # ssl.SSLError is an OSError
            log.warning("refused a TLS connection from %s: %s", address, describe(exc))
            conn.abort("TLS handshake failed")  # never made: closes quietly, no delegate call
            transport.abort()
            return
        except asyncio.CancelledError:
            transport.abort()
            raise
        if tls_transport is None:  # the peer closed during the TLS handshake
            conn.abort("TLS handshake failed")
            transport.abort()
            return
        tls_transport.set_protocol(conn)
        conn.connection_made(tls_transport)
        for data in early.data:
            conn.data_received(data)
        if early.lost is not None:
            conn.connection_lost(early.lost[0])


class _Early(asyncio.Protocol):
    """The connector speaks as soon as its TLS handshake ends, maybe before ``start_tls``
    returns here: keep those bytes (and a close) for the ``Connection``."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lost: tuple[Exception | None] | None = None

    def data_received(self, data: bytes) -> None:
        self.data.append(bytes(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = (exc,)


def _address(peername: Any) -> str:
    return f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) and len(peername) >= 2 else str(peername)

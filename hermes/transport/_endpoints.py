"""Endpoints of the node-to-node transport: dialling a peer and listening for peers.

What it owns: ``open_connection`` (connect + handshake under one timeout,
turning the connection's failure into the exception the caller sees) and
``start_listener`` (one ``Connection`` per accepted socket, announcing the
port actually bound when asked for port 0).

Rules: ``timeout`` covers connect and handshake together; a cancelled or
timed-out ``open_connection`` leaves no connection behind.

What it must not know: framing, ticks or the handshake's messages (``_connection``
and ``_handshake`` own them), and, like the whole transport, actors, pids and routing.
"""
from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Callable, cast

from hermes.transport._connection import DEFAULT_MAX_FRAME, Connection, ConnectionDelegate, PeerInfo, _check_options

__all__ = ["open_connection", "start_listener"]


async def open_connection(
    delegate: ConnectionDelegate, host: str, port: int, *, local: PeerInfo, cookie: bytes,
    timeout: float = 5.0, max_frame: int = DEFAULT_MAX_FRAME, tick_interval: float = 1.0,
) -> Connection:
    """Connect and run the handshake; return the established connection.

    Raises ``PeerRefusedError`` (the peer's NOK; a ``ConnectionRefusedError``
    like a TCP refusal),
    ``HandshakeError`` (authentication failed), ``TimeoutError`` (``timeout``
    covers connect + handshake) or another ``OSError`` (unreachable).
    """
    loop = asyncio.get_running_loop()
    conn = Connection(delegate, role="connect", local=local, cookie=cookie, max_frame=max_frame,
                      tick_interval=tick_interval, handshake_timeout=timeout, loop=loop)
    waiter = conn._waiter = loop.create_future()
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: conn, host, port)
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
    handshake_timeout: float = 5.0,
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

    server = await loop.create_server(accept, host, port)
    if local.address[1] == 0:
        identity = replace(local, address=(local.address[0], server.sockets[0].getsockname()[1]))
    return server

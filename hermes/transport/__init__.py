"""Transport: bytes and sockets between two nodes. It knows no actors.

- ``codec``: pickle first, cloudpickle only for what pickle cannot do; one
  place names the type that could not be pickled.
- ``cookie``: where the cluster cookie comes from (argument, ``HERMES_COOKIE``,
  ``~/.hermes/cookie``).
- ``handshake``: the sans-IO cookie handshake (HMAC-SHA256 both ways); no byte
  of a peer is unpickled before it succeeds.
- ``connection``: one authenticated, length-prefixed, size-limited framed
  link with ticks and coalesced writes; it tells a delegate what happens.
- ``endpoints``: listening and connecting (over TLS when given a context).
- ``tls``: the ``ssl`` contexts of a ``TLSConfig`` (mutual, CERT_REQUIRED, TLS >= 1.2).

The mesh (``hermes.mesh``) is its only user inside a node; the layers above
never see a ``Connection``.
"""
from __future__ import annotations

from ._codec import NAMES_A_GLOBAL, PROTOCOL, dumps, dumps_rest, loads
from ._connection import (DEFAULT_MAX_FRAME, Connection, ConnectionDelegate, ConnectionStatistics,
                          PeerRefusedError)
from ._cookie import ENV_VAR as COOKIE_ENV_VAR
from ._cookie import ResolvedCookie, resolve_cookie
from ._endpoints import open_connection, start_listener
from ._handshake import FRAME_HEADER, Handshake, HandshakeRefused, PeerInfo
from ._tls import client_context, server_context
from ._ticks import aligned_delay

__all__ = [
    "COOKIE_ENV_VAR", "DEFAULT_MAX_FRAME", "FRAME_HEADER", "Connection", "ConnectionDelegate",
    "ConnectionStatistics", "Handshake", "HandshakeRefused", "PeerInfo", "PeerRefusedError", "ResolvedCookie",
    "dumps", "loads", "open_connection", "resolve_cookie", "start_listener",
    "client_context", "server_context",
    "aligned_delay",
    "NAMES_A_GLOBAL", "PROTOCOL", "dumps_rest",
]

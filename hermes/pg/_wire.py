"""The wire to the pg service: one authenticated manager connection whose every wait is bounded.

What it owns: ``ServiceConnection`` (the ``multiprocessing.managers`` request
protocol over a plain socket, bound to the directory's well-known ident),
``ServiceUnavailable``, ``ping_service``, and ``tune_socket``, the socket
options both ends use (the service tunes its accepted sockets with it too).

Rules:

- TCP_NODELAY on every socket (a manager call is ~177 ms without it).
- OS-level I/O timeouts (SO_RCVTIMEO/SO_SNDTIMEO), so no call outlives
  ``timeout``, not even against a SIGSTOPped service.
- ``OSError``/``EOFError`` become ``ServiceUnavailable`` here, at this one
  boundary; a request that fails to pickle raises ``SerializationError`` and
  leaves the connection usable.
- TLS (``tls=`` a ``TLSConfig``): the socket is an ``ssl.SSLSocket`` (mutual,
  the node's own certificate and CA) and the manager protocol, cookie
  challenge included, runs inside it through ``SocketConnection``: the stdlib
  ``Connection`` reads and writes the raw fd, which would bypass TLS. Its
  waits are then the socket's timeout (``settimeout``), as TLS needs a socket
  object, not SO_RCVTIMEO on a raw fd.

What it must not know: sessions, leases, memberships, or what the directory's
methods mean (``_client`` and ``_service`` do); asyncio, actors, pids.
"""
from __future__ import annotations

import functools
import io
import logging
import os
import pickle
import socket
import ssl
import struct
from multiprocessing import AuthenticationError, connection, managers
from typing import Any

from hermes._config import TLSConfig
from hermes._errors import HermesError, SerializationError
from hermes.transport import client_context

__all__ = ["DIRECTORY_ID", "CookieRejected", "ServiceConnection", "ServiceUnavailable", "SocketConnection",
           "check_service", "ping_service", "tune_socket"]

log = logging.getLogger(__name__)

DIRECTORY_ID = "directory"   # the well-known manager ident under which the server pins the Directory
Address = tuple[str, int]


class ServiceUnavailable(HermesError, ConnectionError):
    """The pg service could not be reached, or the connection to it broke or timed out."""


class CookieRejected(HermesError, AuthenticationError):
    """A pg service answered but the cookies differ: a configuration error, not "not up yet"."""

    def __init__(self, address: Address) -> None:
        self.address = address
        super().__init__(f"the pg service at {address[0]}:{address[1]} rejected this node's cookie: "
                         "use the same HERMES_COOKIE or ~/.hermes/cookie as the cluster")


def tune_socket(sock: socket.socket, io_timeout: float | None = None) -> None:
    """TCP_NODELAY (a manager call is ~177 ms without it) and, optionally, OS-level I/O timeouts."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if io_timeout is not None:
        # SO_RCVTIMEO/SO_SNDTIMEO, not settimeout(): multiprocessing.connection reads the
        # raw fd with os.read, which needs a blocking fd; on timeout it raises BlockingIOError.
        seconds = int(io_timeout)
        timeval = struct.pack("@ll", seconds, int((io_timeout - seconds) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class SocketConnection(connection.Connection):
    """``multiprocessing.connection.Connection`` over a socket object (an ``ssl.SSLSocket``):
    the same message format, written and read through the socket instead of its raw fd."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        super().__init__(sock.fileno())

    def _send(self, buf: Any, write: Any = None) -> None:
        self._sock.sendall(buf)

    def _recv(self, size: int, read: Any = None) -> io.BytesIO:
        buf = io.BytesIO()
        remaining = size
        while remaining > 0:
            chunk = self._sock.recv(min(remaining, 1 << 20))
            if not chunk:
                if remaining == size:
                    raise EOFError
                raise OSError("got end of file during message")
            buf.write(chunk)
            remaining -= len(chunk)
        return buf

    def _close(self, _close: Any = None) -> None:
        self._sock.close()


@functools.lru_cache(maxsize=4)
def _client_context(tls: TLSConfig) -> ssl.SSLContext:
    return client_context(tls)  # made once per config: loading a key costs a millisecond or more


class ServiceConnection:
    """One authenticated manager connection bound to the Directory; every wait is bounded.

    Not thread-safe: one connection per thread. ``abort()`` may be called from any
    thread to wake a blocked call (it then fails with ``ServiceUnavailable``).
    """

    def __init__(self, address: Address, cookie: bytes, *, timeout: float = 2.0, name: str = "hermes-pg",
                 tls: TLSConfig | None = None) -> None:
        self.address = (address[0], int(address[1]))
        try:
            self._sock = socket.create_connection(self.address, timeout=timeout)
        except OSError as exc:
            raise ServiceUnavailable(f"cannot connect to the pg service at {self.address}: {exc}") from exc
        try:
            if tls is not None:
                tune_socket(self._sock)
                self._sock = _client_context(tls).wrap_socket(self._sock, server_hostname=self.address[0])
                self._conn: connection.Connection = SocketConnection(self._sock)
            else:
                self._sock.settimeout(None)
                tune_socket(self._sock, timeout)
                self._conn = connection.Connection(os.dup(self._sock.fileno()))
            try:
                connection.answer_challenge(self._conn, cookie)
                connection.deliver_challenge(self._conn, cookie)
            except AuthenticationError as exc:
                raise CookieRejected(self.address) from exc
            self._request(None, "accept_connection", (name,))
        except (OSError, EOFError) as exc:
            self.close()
            raise ServiceUnavailable(f"pg service at {self.address}: handshake failed: {exc!r}") from exc
        except BaseException:
            self.close()
            raise

    def call(self, method: str, *args: Any) -> Any:
        return self._request(DIRECTORY_ID, method, args)

    def abort(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        if hasattr(self, "_conn"):
            self._conn.close()
        self._sock.close()

    def _request(self, ident: str | None, method: str, args: tuple[Any, ...]) -> Any:
        try:
            data = pickle.dumps((ident, method, args, {}), pickle.HIGHEST_PROTOCOL)
        except Exception as exc:   # nothing was written: the connection stays usable
            raise SerializationError("pg request", repr(exc)) from exc
        try:
            self._conn.send_bytes(data)
            kind, result = self._conn.recv()
        except (OSError, EOFError) as exc:
            raise ServiceUnavailable(f"pg service at {self.address}: {method} failed: {exc!r}") from exc
        if kind == "#RETURN":
            return result
        raise managers.convert_to_error(kind, result)  # type: ignore[attr-defined]  # private, as the proxies use it


def ping_service(address: Address, cookie: bytes, timeout: float = 1.0, *, tls: TLSConfig | None = None) -> bool:
    """True if a pg service answers at ``address`` with this cookie (within ``timeout``)."""
    try:
        return check_service(address, cookie, timeout, tls=tls)
    except CookieRejected as exc:
        log.debug("%s", exc)
        return False


def check_service(address: Address, cookie: bytes, timeout: float = 1.0, *, tls: TLSConfig | None = None) -> bool:
    """True if a pg service answers at ``address``, False if none does; ``CookieRejected``
    if one answers but refuses this cookie."""
    try:
        conn = ServiceConnection(address, cookie, timeout=timeout, name="hermes-ping", tls=tls)
    except (ServiceUnavailable, managers.RemoteError) as exc:
        log.debug("no pg service at %s: %r", address, exc)
        return False
    try:
        return isinstance(conn.call("ping"), str)
    except (ServiceUnavailable, managers.RemoteError) as exc:
        log.debug("pg service at %s did not answer ping: %r", address, exc)
        return False
    finally:
        conn.close()

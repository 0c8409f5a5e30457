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

What it must not know: sessions, leases, memberships, or what the directory's
methods mean (``_client`` and ``_service`` do); asyncio, actors, pids.
"""
from __future__ import annotations

import logging
import os
import pickle
import socket
import struct
from multiprocessing import AuthenticationError, connection, managers
from typing import Any

from hermes._errors import HermesError, SerializationError

__all__ = ["DIRECTORY_ID", "CookieRejected", "ServiceConnection", "ServiceUnavailable", "check_service",
           "ping_service", "tune_socket"]

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


class ServiceConnection:
    """One authenticated manager connection bound to the Directory; every wait is bounded.

    Not thread-safe: one connection per thread. ``abort()`` may be called from any
    thread to wake a blocked call (it then fails with ``ServiceUnavailable``).
    """

    def __init__(self, address: Address, cookie: bytes, *, timeout: float = 2.0, name: str = "hermes-pg") -> None:
        self.address = (address[0], int(address[1]))
        try:
            self._sock = socket.create_connection(self.address, timeout=timeout)
        except OSError as exc:
            raise ServiceUnavailable(f"cannot connect to the pg service at {self.address}: {exc}") from exc
        try:
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


def ping_service(address: Address, cookie: bytes, timeout: float = 1.0) -> bool:
    """True if a pg service answers at ``address`` with this cookie (within ``timeout``)."""
    try:
        return check_service(address, cookie, timeout)
    except CookieRejected as exc:
        log.debug("%s", exc)
        return False


def check_service(address: Address, cookie: bytes, timeout: float = 1.0) -> bool:
    """True if a pg service answers at ``address``, False if none does; ``CookieRejected``
    if one answers but refuses this cookie."""
    try:
        conn = ServiceConnection(address, cookie, timeout=timeout, name="hermes-ping")
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

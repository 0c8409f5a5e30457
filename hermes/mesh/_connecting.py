"""Connecting to other nodes: by name (resolved by the layers' resolvers, e.g.
the pg service), by address, kept connected (static peers), and in the
background (mesh completion, discovery). A failure is logged once per new
reason, in words (unknown host, refused, cookie rejected, timeout).

Who dials: two nodes that both learn of each other from the directory (the pg
service: first discovery round, feed, reconcile) would dial each other at the
same moment, and one of the two handshakes would be refused as a duplicate.
So, as the duplicate rule keeps the link the greater name started, the node
with the greater name dials at once and the other waits ``DIAL_GRACE`` for
that link before it dials itself (the other may be slow, stuck, or not know
it yet). An explicit ``connect``, static peers, and names heard from a
peer's list on a node without a directory (the other end may not know us)
are dialled at once.

A mixin of ``Distribution``: it uses its ``conns``, ``pending``, ``addresses``,
``resolvers``, ``failures``, ``arrivals`` and ``_tasks``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Any, Callable, cast

from .._errors import HandshakeError, HermesError
from ..transport import ConnectionDelegate, PeerInfo, PeerRefusedError, open_connection

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("hermes.mesh")
DIAL_GRACE = 2.0  # seconds the smaller name of a pair waits for the greater one's dial


class Connecting:
    # the host's (``Distribution``'s) attributes this mixin uses
    node: Any
    local: PeerInfo
    cookie: bytes
    hidden: bool
    connect_timeout: float
    tick_interval: float
    max_frame: int
    client_ssl: ssl.SSLContext | None
    resolvers: list[Callable[[str], tuple[str, int] | None]]
    conns: dict[str, Any]
    pending: dict[str, asyncio.Future[bool]]
    addresses: dict[str, tuple[str, int]]
    failures: dict[str, str]
    arrivals: dict[str, asyncio.Future[None]]  # set by the host when a link to that name is up
    _tasks: set[asyncio.Task[Any]]

    async def connect(self, name: str) -> bool:
        if name in self.conns:
            return True
        address = self.addresses.get(name) or self._resolve(name)
        if address is None:
            where = "the pg service does not list it" if self.resolvers else "no address known (a standalone node: use peers)"
            self._failed(name, f"unknown node ({where})")
            return False
        return await self.connect_address(address, expect=name)

    def _resolve(self, name: str) -> tuple[str, int] | None:
        for resolver in self.resolvers:
            address = resolver(name)
            if address is not None:
                return address
        return None

    async def connect_address(self, address: tuple[str, int], expect: str | None = None) -> bool:
        """Connect to whatever node listens at ``address`` (``expect``: its name)."""
        if expect is None and self._connected_to(address):
            return True
        key = expect or f"{address[0]}:{address[1]}"
        pending = self.pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut = self.node.loop.create_future()
        self.pending[key] = fut
        try:
            result = await self._open(address, expect)
        finally:
            del self.pending[key]
        fut.set_result(result)
        return result

    async def _open(self, address: tuple[str, int], expect: str | None) -> bool:
        try:
            conn = await open_connection(cast(ConnectionDelegate, self), address[0], address[1], local=self.local, cookie=self.cookie,
                                         timeout=self.connect_timeout, tick_interval=self.tick_interval,
                                         max_frame=self.max_frame, ssl=self.client_ssl)
        except PeerRefusedError:
            # refused at the handshake: a duplicate (we may be connected the other way)
            return await self._wait_connected(expect, address)
        except (OSError, TimeoutError, HermesError) as exc:
            self._failed(expect or f"{address[0]}:{address[1]}", _connect_failure(address, exc))
            return False
        self.failures.pop(expect or f"{address[0]}:{address[1]}", None)
        if expect is not None and conn.peer.name != expect:
            log.warning("node at %s is %s, not %s", address, conn.peer.name, expect)
        return True

    def _failed(self, key: str, reason: str) -> None:
        """One line per new reason (a static peer retried every second logs it once).
        A hidden node is a tool (a remote shell, a status probe) that reports it itself."""
        level = logging.DEBUG if self.hidden or self.failures.get(key) == reason else logging.WARNING
        self.failures[key] = reason
        log.log(level, "cannot connect to %s: %s", key, reason)

    async def connect_in_turn(self, name: str) -> bool:
        """``connect`` to a node that knows us from the directory as we know it:
        the greater name dials at once, the smaller first waits ``DIAL_GRACE``
        for its link (see the module docstring)."""
        if name not in self.conns and self.node.name < name and await self._until_connected(name, DIAL_GRACE):
            return True
        return await self.connect(name)

    async def _until_connected(self, name: str, timeout: float) -> bool:
        """Whether a link to ``name`` is up within ``timeout`` seconds (no polling)."""
        if name in self.conns:
            return True
        arrival = self.arrivals.get(name)
        if arrival is None or arrival.done():
            arrival = self.arrivals[name] = self.node.loop.create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(arrival), timeout)
        if not arrival.done() and self.arrivals.get(name) is arrival:
            del self.arrivals[name]  # nobody is waiting for it now: a later ``connect_soon`` waits anew
        return name in self.conns

    def _connecting_to(self, peer: Any) -> bool:
        """Whether an attempt of ours to ``peer`` is under way, by name or by address
        (a static peer is dialled by address: its name is not known before the handshake)."""
        host, port = peer.address
        return peer.name in self.pending or f"{host}:{port}" in self.pending

    def _connected_to(self, address: tuple[str, int]) -> bool:
        return any(c.peer is not None and tuple(c.peer.address) == tuple(address) for c in self.conns.values())

    async def _wait_connected(self, name: str | None, address: tuple[str, int], timeout: float = 1.0) -> bool:
        if name is not None:
            return await self._until_connected(name, timeout)
        deadline = self.node.loop.time() + timeout
        while not self._connected_to(address) and self.node.loop.time() < deadline:
            await asyncio.sleep(0.005)
        return self._connected_to(address)

    def keep_connected(self, addresses: list[tuple[str, int]], interval: float = 1.0) -> None:
        """Static discovery: connect to these addresses now and whenever the
        node there is not connected (checked every ``interval`` seconds)."""

        async def loop() -> None:
            while True:
                connected = {tuple(c.peer.address) for c in self.conns.values() if c.peer is not None}
                for address in addresses:
                    if address not in connected and address != tuple(self.local.address):
                        await self.connect_address(address)
                await asyncio.sleep(interval)

        task = self.node.loop.create_task(loop())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def disconnect(self, name: str) -> bool:
        conn = self.conns.get(name)
        if conn is None:
            return False
        conn.send(("bye",))  # written before the close: the peer knows we hung up on purpose
        conn.close("disconnect")
        return True

    def connect_soon(self, name: str, address: tuple[str, int] | None = None, *, in_turn: bool = False) -> None:
        """Connect in the background (mesh completion, discovery); ``in_turn``: the
        node knows us from the directory too (``connect_in_turn``)."""
        if name == self.node.name or name in self.conns or name in self.pending:
            return
        if address is not None:
            self.addresses[name] = address
        if in_turn and self.node.name < name:
            if name in self.arrivals and not self.arrivals[name].done():
                return  # already waiting for its dial
            attempt = self.connect_in_turn(name)
        else:
            attempt = self.connect(name)
        task = self.node.loop.create_task(attempt)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _strerror(exc: OSError) -> str:
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


def _connect_failure(address: tuple[str, int], exc: BaseException) -> str:
    """Why a connect failed, in words: unknown host, refused, cookie rejected, timeout."""
    host, port = address
    if isinstance(exc, socket.gaierror):
        return f"unknown host {host!r}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused at {host}:{port} (no node listens there)"
    if isinstance(exc, HandshakeError):
        return f"the node at {host}:{port} rejected this node's cookie, or this node its: use the same cookie ({exc})"
    if isinstance(exc, TimeoutError):
        return f"no answer from {host}:{port} in time ({exc})"
    return f"{type(exc).__name__}: {exc}"

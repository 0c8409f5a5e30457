"""Tests for hermes.transport._writing over real sockets on 127.0.0.1: a request
or its reply on an armed link is written at once and schedules no flush (one
loop turn per call on each side), while a turn with several frames still gets
one coalesced flush."""
from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

from hermes.transport import Connection, PeerInfo, open_connection, start_listener

pytestmark = pytest.mark.timeout(30)

COOKIE = b"writing-test-cookie"
ALICE = PeerInfo("alice@host", 1, ("127.0.0.1", 4001))
BOB = PeerInfo("bob@host", 2, ("127.0.0.1", 0))


class CountingLoop(asyncio.SelectorEventLoop):
    """A real selector loop that counts the ``Connection._flush`` callbacks scheduled on it."""

    flushes = 0

    def call_soon(self, callback: Callable[..., Any], *args: Any, context: Any = None) -> asyncio.Handle:
        if getattr(callback, "__name__", "") == "_flush":
            self.flushes += 1
        return super().call_soon(callback, *args, context=context)


class Peer:
    """Delegate: records frames; the server side echoes each one back as ``("re", n)``."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.frames: list[Any] = []
        self.conn: Connection | None = None
        self.waiter: asyncio.Future[Any] | None = None

    def accept_peer(self, conn: Connection, peer: PeerInfo) -> bool:
        return True

    def connection_established(self, conn: Connection) -> None:
        self.conn = conn

    def frame_received(self, conn: Connection, obj: Any) -> None:
        self.frames.append(obj)
        if self.echo:
            conn.send(("re", obj[1]))
        elif self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(obj)

    def connection_closed(self, conn: Connection, reason: str) -> None:
        pass


async def _pair() -> tuple[asyncio.Server, Connection, Peer, Peer]:
    server_peer, client_peer = Peer(echo=True), Peer(echo=False)
    server = await start_listener(server_peer, "127.0.0.1", 0, local=BOB, cookie=COOKIE)
    conn = await open_connection(client_peer, "127.0.0.1", server.sockets[0].getsockname()[1], local=ALICE,
                                 cookie=COOKIE)
    async with asyncio.timeout(10):
        while server_peer.conn is None:
            await asyncio.sleep(0.01)
    return server, conn, client_peer, server_peer


def test_request_and_reply_schedule_no_flush() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, CountingLoop)
        server, conn, client, srv = await _pair()
        try:
            # a first exchange arms both ends (a read on each)
            client.waiter = loop.create_future()
            conn.send(("req", -1))
            await asyncio.wait_for(client.waiter, 10)
            before, writes = loop.flushes, conn.statistics().writes
            for i in range(50):
                client.waiter = loop.create_future()
                conn.send(("req", i))
                assert conn.statistics().queued_bytes == 0  # written at once
                assert await asyncio.wait_for(client.waiter, 10) == ("re", i)
            assert loop.flushes == before  # neither the requests nor the replies scheduled one
            assert conn.statistics().writes - writes == 50
            assert [f[1] for f in srv.frames] == list(range(-1, 50))

            # several frames in one turn: the first at once, the rest in the turn's one flush
            writes = conn.statistics().writes
            for i in range(50, 60):
                conn.send(("req", i))
            assert conn.statistics().queued_bytes > 0
            assert loop.flushes == before + 1
            async with asyncio.timeout(10):
                while len(srv.frames) < 61:
                    await asyncio.sleep(0.01)
            assert conn.statistics().writes - writes == 2
            assert [f[1] for f in srv.frames] == list(range(-1, 60))  # order kept
        finally:
            conn.close()
            server.close()

    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        runner.run(main())

"""Tests for hermes.transport._connection over real sockets on 127.0.0.1: framing,
delivery order, coalesced writes, back-pressure, ticks and closing."""
from __future__ import annotations

import asyncio
import contextlib
import pickle
import threading
from typing import Any, Awaitable, Callable

import pytest

from hermes._errors import SerializationError
from hermes.transport._connection import Connection, PeerInfo
from hermes.transport._endpoints import open_connection, start_listener
from hermes.transport._handshake import FRAME_HEADER, Handshake, State

from conftest import wait_until

pytestmark = pytest.mark.timeout(30)

COOKIE = b"connection-test-cookie"
ALICE = PeerInfo("alice@host", 1, ("127.0.0.1", 4001))
BOB = PeerInfo("bob@host", 2, ("127.0.0.1", 0))


class Recorder:
    def __init__(self, on_established: Callable[[Connection], None] | None = None) -> None:
        self.on_established = on_established
        self.established: list[Connection] = []
        self.frames: list[Any] = []
        self.closed: list[tuple[Connection, str]] = []

    def accept_peer(self, conn: Connection, peer: PeerInfo) -> bool:
        return True

    def connection_established(self, conn: Connection) -> None:
        self.established.append(conn)
        if self.on_established:
            self.on_established(conn)

    def frame_received(self, conn: Connection, obj: Any) -> None:
        self.frames.append(obj)

    def connection_closed(self, conn: Connection, reason: str) -> None:
        self.closed.append((conn, reason))


Test = Callable[[Connection, Recorder, Connection, Recorder], Awaitable[None]]


def with_pair(test: Test, *, server_options: dict[str, Any] | None = None, **options: Any) -> None:
    """Run ``test(client_conn, client_delegate, server_conn, server_delegate)`` on a fresh pair."""

    async def main() -> None:
        server_delegate, client_delegate = Recorder(), Recorder()
        server = await start_listener(server_delegate, "127.0.0.1", 0, local=BOB, cookie=COOKIE,
                                      **{**options, **(server_options or {})})
        try:
            port = server.sockets[0].getsockname()[1]
            conn = await open_connection(client_delegate, "127.0.0.1", port, local=ALICE, cookie=COOKIE, **options)
            await wait_until(lambda: len(server_delegate.established) == 1)
            assert conn.peer == PeerInfo("bob@host", 2, ("127.0.0.1", port))  # port 0 filled in
            await test(conn, client_delegate, server_delegate.established[0], server_delegate)
            conn.abort()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


async def raw_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Authenticate by hand, so that the test controls every byte afterwards."""
    handshake = Handshake("connect", ALICE, COOKIE)
    writer.write(handshake.initiate())
    while handshake.state is not State.DONE:
        data = await reader.read(4096)
        assert data, "server closed during the handshake"
        writer.write(handshake.receive_data(data))


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):  # the server may have reset the connection
        await writer.wait_closed()


def frame(payload: bytes) -> bytes:
    return FRAME_HEADER.pack(len(payload)) + payload


def test_100k_messages_arrive_in_order() -> None:
    async def test(conn: Connection, client: Recorder, server_conn: Connection, server: Recorder) -> None:
        for start in range(0, 100_000, 1000):
            for i in range(start, start + 1000):
                conn.send(i)
            await asyncio.sleep(0)
        await wait_until(lambda: len(server.frames) == 100_000, timeout=25.0)
        assert server.frames == list(range(100_000))
        assert server_conn.statistics().frames_in == 100_000

    with_pair(test)


def test_sends_in_one_loop_turn_share_one_write() -> None:
    async def test(conn: Connection, client: Recorder, server_conn: Connection, server: Recorder) -> None:
        before = conn.statistics()
        for i in range(10_000):
            conn.send(("msg", i))
        assert conn.statistics().queued_bytes > 0
        await wait_until(lambda: len(server.frames) == 10_000)
        after = conn.statistics()
        # the turn's first frame is written at once, the other 9,999 share one write
        assert after.writes - before.writes == 2
        assert after.frames_out - before.frames_out == 10_000 and after.queued_bytes == 0
        assert server.frames[-1] == ("msg", 9999)

    with_pair(test)


def test_a_streaming_sender_gets_one_write_per_turn() -> None:
    async def turn(conn: Connection, frames: int) -> tuple[int, int]:
        """Send ``frames`` in one loop turn; (queued bytes right after, writes the turn cost)."""
        before = conn.statistics().writes
        for i in range(frames):
            conn.send(("msg", i))
        queued = conn.statistics().queued_bytes
        await asyncio.sleep(0)  # the turn's flush runs
        return queued, conn.statistics().writes - before

    async def test(conn: Connection, client: Recorder, server_conn: Connection, server: Recorder) -> None:
        await asyncio.sleep(0)
        queued, writes = await turn(conn, 1000)
        assert writes == 2  # the first frame at once, the other 999 together
        queued, writes = await turn(conn, 1000)
        assert (queued > 0, writes) == (True, 1)  # streaming: all 1,000 in the turn's one write
        queued, writes = await turn(conn, 1)
        assert (queued > 0, writes) == (True, 1)  # right after a burst: waits for the flush
        queued, writes = await turn(conn, 1)
        assert (queued, writes) == (0, 1)  # a lone frame again: written at once
        await wait_until(lambda: len(server.frames) == 2002)
        assert server.frames[-1] == ("msg", 0) and server.frames[999] == ("msg", 999)

    with_pair(test)


def test_frames_stay_queued_while_the_peer_does_not_read() -> None:
    async def test(conn: Connection, client: Recorder, server_conn: Connection, server: Recorder) -> None:
        server_conn._transport.pause_reading()  # type: ignore[union-attr]
        chunk = b"x" * 65536
        for i in range(400):  # 25 MiB: far beyond the kernel and transport buffers
            conn.send((i, chunk))
            await asyncio.sleep(0)
        await wait_until(lambda: conn.statistics().paused)
        assert conn.statistics().queued_bytes > 0
        server_conn._transport.resume_reading()  # type: ignore[union-attr]
        await wait_until(lambda: len(server.frames) == 400)
        assert [i for i, _ in server.frames] == list(range(400))
        assert not conn.statistics().paused

    with_pair(test, tick_interval=5.0)


def test_a_frame_that_fails_to_unpickle_is_dropped_and_the_link_stays_up() -> None:
    async def test(conn: Connection, client: Recorder, server_conn: Connection, server: Recorder) -> None:
        conn.send_payload(b"not a pickle at all")
        conn.send_payload(b"cno_such_module_hermes\nThing\n.")
        conn.send_payload(memoryview(pickle.dumps("after")))
        await wait_until(lambda: server.frames == ["after"])
        assert server_conn.statistics().undecodable == 2 and not server_conn.closed

    with_pair(test)


def test_a_delegate_exception_does_not_stop_delivery() -> None:
    async def test(conn: Connection, client: Recorder, server_conn: Connection, server: Recorder) -> None:
        original = server.frame_received

        def flaky(c: Connection, obj: Any) -> None:
            if obj == "bad":
                raise RuntimeError("delegate bug")
            original(c, obj)

        server.frame_received = flaky  # type: ignore[method-assign]
        conn.send("bad")
        conn.send("good")
        await wait_until(lambda: server.frames == ["good"])
        assert not server_conn.closed

    with_pair(test)


def test_oversized_frame_closes_the_connection() -> None:
    async def test(conn: Connection, client: Recorder, server_conn: Connection, server: Recorder) -> None:
        conn.send_payload(b"x" * 2000)
        await wait_until(lambda: len(server.closed) == 1 and len(client.closed) == 1)
        assert server.closed[0][1].startswith("oversized frame") and server.frames == []

    with_pair(test, server_options={"max_frame": 1024})


def test_oversized_announcement_closes_before_buffering() -> None:
    async def main() -> None:
        server_delegate = Recorder()
        server = await start_listener(server_delegate, "127.0.0.1", 0, local=BOB, cookie=COOKIE, max_frame=1024)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        await raw_handshake(reader, writer)
        writer.write(FRAME_HEADER.pack(2**31))  # the announcement alone, no body
        async with asyncio.timeout(5):
            while await reader.read(4096):
                pass
        assert server_delegate.closed[0][1] == f"oversized frame ({2**31} bytes)"
        assert server_delegate.frames == []
        await close_writer(writer)
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_frames_right_after_ok_in_the_same_segment_are_delivered() -> None:
    async def main() -> None:
        async def raw_acceptor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            handshake = Handshake("accept", BOB, COOKIE)
            handshake.initiate()
            while handshake.state is not State.AWAIT_VERDICT:
                writer.write(handshake.receive_data(await reader.read(4096)))
            writer.write(handshake.verdict(True) + frame(pickle.dumps("first")) + frame(b"") + frame(pickle.dumps(2)))
            await reader.read()  # until the client closes
            await close_writer(writer)
            finished.set()

        finished = asyncio.Event()
        server = await asyncio.start_server(raw_acceptor, "127.0.0.1", 0)
        client = Recorder()
        conn = await open_connection(client, "127.0.0.1", server.sockets[0].getsockname()[1], local=ALICE,
                                     cookie=COOKIE)
        await wait_until(lambda: client.frames == ["first", 2])
        assert conn.statistics().ticks_in == 1
        conn.close()
        await asyncio.wait_for(finished.wait(), 5)
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_send_from_connection_established_reaches_the_peer() -> None:
    async def main() -> None:
        server_delegate = Recorder(on_established=lambda conn: conn.send("welcome"))
        server = await start_listener(server_delegate, "127.0.0.1", 0, local=BOB, cookie=COOKIE)
        client = Recorder()
        conn = await open_connection(client, "127.0.0.1", server.sockets[0].getsockname()[1], local=ALICE,
                                     cookie=COOKIE)
        await wait_until(lambda: client.frames == ["welcome"])
        conn.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_unpicklable_send_raises_and_queues_nothing() -> None:
    async def test(conn: Connection, client: Recorder, server_conn: Connection, server: Recorder) -> None:
        with pytest.raises(SerializationError):
            conn.send({"lock": threading.Lock()})
        assert conn.statistics().queued_bytes == 0
        conn.send("fine")
        await wait_until(lambda: server.frames == ["fine"])

    with_pair(test)


def test_close_writes_queued_frames_first_and_reports_once() -> None:
    async def test(conn: Connection, client: Recorder, server_conn: Connection, server: Recorder) -> None:
        for i in range(100):
            conn.send(i)
        conn.close("bye")
        conn.close("again")
        conn.send("dropped")  # after close: silently dropped, like a message to a dead node
        await wait_until(lambda: len(server.closed) == 1)
        assert server.frames == list(range(100))
        assert client.closed == [(conn, "bye")] and conn.close_reason == "bye"
        assert server.closed[0][1] == "connection closed by peer"

    with_pair(test)


def test_idle_connection_is_kept_alive_by_ticks() -> None:
    async def test(conn: Connection, client: Recorder, server_conn: Connection, server: Recorder) -> None:
        await wait_until(lambda: min(conn.statistics().ticks_in, server_conn.statistics().ticks_in) >= 10)
        assert not conn.closed and not server_conn.closed
        assert conn.statistics().ticks_out >= 10

    with_pair(test, tick_interval=0.05)


def test_silent_peer_is_closed_after_four_tick_intervals() -> None:
    async def main() -> None:
        server_delegate = Recorder()
        server = await start_listener(server_delegate, "127.0.0.1", 0, local=BOB, cookie=COOKIE, tick_interval=0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        await raw_handshake(reader, writer)  # then neither reads nor writes
        loop = asyncio.get_running_loop()
        established = loop.time()
        await wait_until(lambda: len(server_delegate.closed) == 1, timeout=5.0)
        elapsed = loop.time() - established
        assert server_delegate.closed[0][1] == "tick timeout"
        assert 0.3 <= elapsed < 2.0
        await close_writer(writer)
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_option_guards() -> None:
    async def main() -> None:
        with pytest.raises(ValueError):
            Connection(Recorder(), role="accept", local=BOB, cookie=COOKIE, max_frame=0)
        with pytest.raises(ValueError):
            await start_listener(Recorder(), "127.0.0.1", 0, local=BOB, cookie=COOKIE, tick_interval=0)

    asyncio.run(main())

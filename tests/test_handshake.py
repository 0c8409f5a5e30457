"""Tests for the cookie handshake (hermes.transport._handshake) and cookie resolution
(hermes.transport._cookie): the state machine on bytes, then the same rules over
real sockets, where no byte from an unauthenticated peer may be unpickled."""
from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from hermes._errors import HandshakeError
from hermes.transport._connection import Connection, PeerInfo, PeerRefusedError
from hermes.transport._endpoints import open_connection, start_listener
from hermes.transport._cookie import ENV_VAR, resolve_cookie
from hermes.transport._handshake import (
    FRAME_HEADER, MAGIC, Handshake, HandshakeRefused, State, connector_proof, encode_message,
)

from conftest import wait_until

pytestmark = pytest.mark.timeout(30)

COOKIE = b"secret-cookie"
ALICE = PeerInfo("alice@host", 1, ("127.0.0.1", 4001))
BOB = PeerInfo("bob@host", 7, ("127.0.0.1", 4002))


# -- the state machine alone --------------------------------------------------


def run_handshake(connector: Handshake, acceptor: Handshake, accept: bool = True) -> None:
    """Shuttle bytes between two state machines until neither has anything to say."""
    acceptor.initiate()
    to_acceptor, to_connector = connector.initiate(), b""
    while to_acceptor or to_connector:
        if to_acceptor:
            to_connector += acceptor.receive_data(to_acceptor)
            to_acceptor = b""
            if acceptor.state is State.AWAIT_VERDICT:
                to_connector += acceptor.verdict(accept)
        if to_connector:
            to_acceptor = connector.receive_data(to_connector)
            to_connector = b""


def test_state_machines_agree_and_learn_each_other() -> None:
    connector, acceptor = Handshake("connect", ALICE, COOKIE), Handshake("accept", BOB, COOKIE)
    run_handshake(connector, acceptor)
    assert connector.state is State.DONE and acceptor.state is State.DONE
    assert connector.peer == BOB and acceptor.peer == ALICE


@pytest.mark.parametrize(("connector_cookie", "acceptor_cookie"), [(b"wrong", COOKIE), (COOKIE, b"wrong")])
def test_wrong_cookie_on_either_side_fails_on_the_connector(connector_cookie: bytes, acceptor_cookie: bytes) -> None:
    connector, acceptor = Handshake("connect", ALICE, connector_cookie), Handshake("accept", BOB, acceptor_cookie)
    with pytest.raises(HandshakeError, match="wrong cookie"):
        run_handshake(connector, acceptor)
    assert connector.state is State.FAILED and acceptor.peer is None


def test_acceptor_rejects_a_forged_response() -> None:
    acceptor = Handshake("accept", BOB, COOKIE)
    acceptor.initiate()
    hello = Handshake("connect", ALICE, b"attacker-guess").initiate()
    acceptor.receive_data(hello)
    with pytest.raises(HandshakeError, match="wrong cookie"):
        acceptor.receive_data(encode_message({"t": "response", "proof": "00" * 32}))
    assert acceptor.state is State.FAILED and acceptor.peer is None


def test_hidden_flag_crosses_the_handshake() -> None:
    hidden_alice = PeerInfo("alice@host", 1, ("127.0.0.1", 4001), hidden=True)
    connector, acceptor = Handshake("connect", hidden_alice, COOKIE), Handshake("accept", BOB, COOKIE)
    run_handshake(connector, acceptor)
    assert acceptor.peer == hidden_alice and connector.peer == BOB and not BOB.hidden


def test_proofs_bind_role_and_identities() -> None:
    na, nb = os.urandom(32), os.urandom(32)
    assert connector_proof(COOKIE, na, nb, ALICE, BOB) != connector_proof(COOKIE, na, nb, ALICE, ALICE)
    hidden_alice = PeerInfo(ALICE.name, ALICE.creation, ALICE.address, hidden=True)
    assert connector_proof(COOKIE, na, nb, ALICE, BOB) != connector_proof(COOKIE, na, nb, hidden_alice, BOB)
    assert connector_proof(COOKIE, na, nb, ALICE, BOB) != connector_proof(COOKIE, nb, na, BOB, ALICE)


def test_nok_raises_handshake_refused_on_the_connector() -> None:
    connector, acceptor = Handshake("connect", ALICE, COOKIE), Handshake("accept", BOB, COOKIE)
    with pytest.raises(HandshakeRefused):
        run_handshake(connector, acceptor, accept=False)
    assert acceptor.state is State.REFUSED


@pytest.mark.parametrize(
    "data",
    [b"GET / HTTP/1.1\r\n", b"X", MAGIC + FRAME_HEADER.pack(5000), MAGIC + FRAME_HEADER.pack(0),
     MAGIC + FRAME_HEADER.pack(3) + b"{x]", MAGIC + encode_message({"t": "response", "proof": "00"}),
     MAGIC + FRAME_HEADER.pack(len(pickle.dumps([1]))) + pickle.dumps([1])],
)
def test_acceptor_rejects_garbage_at_once(data: bytes) -> None:
    acceptor = Handshake("accept", BOB, COOKIE)
    acceptor.initiate()
    with pytest.raises(HandshakeError):
        acceptor.receive_data(data)
    assert acceptor.state is State.FAILED


def test_bytes_after_ok_are_left_over_for_the_connection() -> None:
    connector, acceptor = Handshake("connect", ALICE, COOKIE), Handshake("accept", BOB, COOKIE)
    acceptor.initiate()
    challenge = acceptor.receive_data(connector.initiate())
    acceptor.receive_data(connector.receive_data(challenge))
    ok = acceptor.verdict(True)
    for byte in ok + b"\x00\x00\x00\x00rest":  # one byte at a time: partial reads are fine
        connector.receive_data(bytes([byte]))
    assert connector.state is State.DONE
    assert connector.take_leftover() == b"\x00\x00\x00\x00rest"


# -- cookie resolution --------------------------------------------------------


def test_cookie_explicit_then_env_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "from-env")
    assert resolve_cookie("given", path=tmp_path / "c").value == b"given"
    assert resolve_cookie(b"given").source == "explicit"
    assert (resolve_cookie(None).value, resolve_cookie(None).source) == (b"from-env", "env")
    monkeypatch.delenv(ENV_VAR)
    first = resolve_cookie(None, path=tmp_path / "dir" / "cookie")
    second = resolve_cookie(None, path=tmp_path / "dir" / "cookie")
    assert first.generated and second.source == "file" and first.value == second.value
    assert len(first.value) >= 40 and "value" not in repr(first)
    assert stat.S_IMODE((tmp_path / "dir").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "dir" / "cookie").stat().st_mode) == 0o600
    with pytest.raises(ValueError):
        resolve_cookie("")


@pytest.mark.timeout(60)
def test_processes_starting_at_once_agree_on_one_cookie(tmp_path: Path) -> None:
    path = tmp_path / "cookie"
    code = ("import sys; from hermes.transport._cookie import resolve_cookie; "
            "c = resolve_cookie(None, path=sys.argv[1]); print(c.value.decode(), c.source)")
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, env=env, text=True)
             for _ in range(6)]
    results = [p.communicate(timeout=50)[0].split() for p in procs]
    assert len({value for value, _ in results}) == 1
    assert [source for _, source in results].count("generated") == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


# -- over real sockets --------------------------------------------------------


class Recorder:
    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.established: list[Connection] = []
        self.frames: list[Any] = []
        self.closed: list[tuple[Connection, str]] = []

    def accept_peer(self, conn: Connection, peer: PeerInfo) -> bool:
        return self.accept

    def connection_established(self, conn: Connection) -> None:
        self.established.append(conn)

    def frame_received(self, conn: Connection, obj: Any) -> None:
        self.frames.append(obj)

    def connection_closed(self, conn: Connection, reason: str) -> None:
        self.closed.append((conn, reason))


def with_listener(test: Callable[[Recorder, int], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        server_delegate = Recorder()
        server = await start_listener(server_delegate, "127.0.0.1", 0, local=BOB, cookie=COOKIE, **options)
        try:
            await test(server_delegate, server.sockets[0].getsockname()[1])
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes; fails if it does not close in time."""
    received = b""
    async with asyncio.timeout(timeout):
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):  # the server may have reset the connection
        await writer.wait_closed()


class Evil:
    """Unpickling this creates a file: proof that someone unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def evil_frame(path: Path) -> bytes:
    payload = pickle.dumps(Evil(path))
    return FRAME_HEADER.pack(len(payload)) + payload


def test_the_evil_payload_is_live(tmp_path: Path) -> None:
    pickle.loads(evil_frame(tmp_path / "control")[4:]).close()
    assert (tmp_path / "control").exists()  # so its absence below means something


def test_handshake_succeeds_and_frames_flow_both_ways() -> None:
    async def test(server: Recorder, port: int) -> None:
        client = Recorder()
        conn = await open_connection(client, "127.0.0.1", port, local=ALICE, cookie=COOKIE)
        assert conn.authenticated and conn.peer == BOB and client.established == [conn]
        await wait_until(lambda: len(server.established) == 1)
        assert server.established[0].peer == ALICE
        conn.send("ping")
        await wait_until(lambda: server.frames == ["ping"])
        server.established[0].send("pong")
        await wait_until(lambda: client.frames == ["pong"])
        conn.close("done")
        await wait_until(lambda: len(server.closed) == 1)
        assert client.closed == [(conn, "done")]

    with_listener(test)


@pytest.mark.parametrize("who_is_wrong", ["connector", "acceptor"])
def test_wrong_cookie_fails_and_no_frame_is_ever_delivered(who_is_wrong: str) -> None:
    async def main() -> None:
        server_delegate, client = Recorder(), Recorder()
        server_cookie, client_cookie = (COOKIE, b"bad") if who_is_wrong == "connector" else (b"bad", COOKIE)
        server = await start_listener(server_delegate, "127.0.0.1", 0, local=BOB, cookie=server_cookie)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(HandshakeError):
            await open_connection(client, "127.0.0.1", port, local=ALICE, cookie=client_cookie)
        await wait_until(lambda: len(server_delegate.closed) == 1)
        for delegate in (server_delegate, client):
            assert delegate.established == [] and delegate.frames == []
            assert len(delegate.closed) == 1 and delegate.closed[0][0].peer is None
        server.close()
        await server.wait_closed()

    asyncio.run(main())


@pytest.mark.parametrize("prefix", ["nothing", "magic", "magic+hello"])
def test_malicious_pickle_before_authentication_is_never_unpickled(tmp_path: Path, prefix: str) -> None:
    marker = tmp_path / "pwned"

    async def test(server: Recorder, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opening = {"nothing": b"", "magic": MAGIC, "magic+hello": Handshake("connect", ALICE, b"x").initiate()}[prefix]
        writer.write(opening + evil_frame(marker) * 3)
        await read_until_closed(reader)
        await close_writer(writer)
        await wait_until(lambda: len(server.closed) == 1)
        assert server.frames == [] and server.established == []

    with_listener(test)
    assert not marker.exists()


def test_forged_response_then_malicious_pickle_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    async def test(server: Recorder, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(Handshake("connect", ALICE, b"guess").initiate())
        header = await reader.readexactly(4)
        await reader.readexactly(FRAME_HEADER.unpack(header)[0])  # the challenge; we cannot answer it
        writer.write(encode_message({"t": "response", "proof": "ab" * 32}) + evil_frame(marker))
        await read_until_closed(reader)
        await close_writer(writer)
        await wait_until(lambda: len(server.closed) == 1)
        assert "handshake failed" in server.closed[0][1] and server.frames == []

    with_listener(test)
    assert not marker.exists()


def test_garbage_closes_the_connection_at_once() -> None:
    async def test(server: Recorder, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await read_until_closed(reader, timeout=2.0) == b""
        await close_writer(writer)
        await wait_until(lambda: len(server.closed) == 1)
        assert server.closed[0][1].startswith("handshake failed: bad magic")

    with_listener(test, handshake_timeout=10.0)  # closed by the check, not by the timeout


def test_silent_peer_is_closed_after_the_timeout_without_slowing_others() -> None:
    async def test(server: Recorder, port: int) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        client = Recorder()
        conn = await open_connection(client, "127.0.0.1", port, local=ALICE, cookie=COOKIE)
        for i in range(1000):
            conn.send(i)
        await wait_until(lambda: len(server.frames) == 1000)
        busy_done = loop.time() - started
        assert not any(c.peer is None for c, _ in server.closed)  # the idle one is still waiting
        await read_until_closed(idle_reader, timeout=5.0)
        idle_elapsed = loop.time() - started
        await close_writer(idle_writer)
        await wait_until(lambda: any(reason == "handshake timeout" for _, reason in server.closed))
        assert busy_done < 1.5 <= idle_elapsed
        conn.close()

    with_listener(test, handshake_timeout=1.5)


def test_accept_peer_false_sends_nok_and_the_connector_is_refused() -> None:
    async def main() -> None:
        server_delegate, client = Recorder(accept=False), Recorder()
        server = await start_listener(server_delegate, "127.0.0.1", 0, local=BOB, cookie=COOKIE)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(PeerRefusedError) as info:
            await open_connection(client, "127.0.0.1", port, local=ALICE, cookie=COOKIE)
        assert isinstance(info.value, ConnectionRefusedError) and info.value.reason == "rejected"
        await wait_until(lambda: len(server_delegate.closed) == 1)
        assert server_delegate.established == [] and client.established == []
        assert server_delegate.closed[0][0].peer is None and len(client.closed) == 1
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_unreachable_port_raises_connection_refused() -> None:
    async def main() -> None:
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        client = Recorder()
        with pytest.raises(ConnectionRefusedError) as info:
            await open_connection(client, "127.0.0.1", port, local=ALICE, cookie=COOKIE)
        assert not isinstance(info.value, PeerRefusedError)
        assert client.closed == []  # never connected: the delegate never saw it

    asyncio.run(main())


def test_connector_times_out_against_a_mute_acceptor() -> None:
    async def main() -> None:
        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                with contextlib.suppress(OSError):
                    await reader.read()  # reads the hello, never answers
            finally:
                await close_writer(writer)
                finished.set()

        finished = asyncio.Event()
        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        client = Recorder()
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await open_connection(client, "127.0.0.1", server.sockets[0].getsockname()[1], local=ALICE,
                                  cookie=COOKIE, timeout=0.3)
        assert 0.25 <= asyncio.get_running_loop().time() - started < 3.0
        assert len(client.closed) == 1 and client.closed[0][0].peer is None and client.established == []
        await asyncio.wait_for(finished.wait(), 5)
        server.close()
        await server.wait_closed()

    asyncio.run(main())

"""Hostile bytes: 10,000 random and mutated frames per run against a node's authenticated
link, its handshake and the pg service port. No node dies, and the node's other links keep
answering calls.

Frames are made from a valid capture (pickled frames as the mesh sends them): bit flips,
truncations, wrong lengths, random bytes, valid pickles of wrong shapes, and pickles whose
loading raises SystemExit, KeyboardInterrupt, GeneratorExit... They are sent in batches,
one connection per batch, so the run stays short on a loaded machine. The seed is printed
(shown on failure); ``HERMES_FUZZ_SEED=N`` replays a run.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import random
import socket
import struct
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import hermes
from hermes.pg._wire import DIRECTORY_ID
from hermes.pg.service import ServiceConnection, ServiceUnavailable, start_service_process
from hermes.transport import Handshake, PeerInfo, open_connection, start_listener
from hermes.transport._handshake import MAGIC, State

from _tls_peer import COOKIE, free_port, peer_node, wait_listening
from conftest import wait_until

HEADER = struct.Struct(">I")
MESH_FRAMES, HANDSHAKES, SERVICE_FRAMES = 8000, 500, 1500  # 10,000 in all
BATCH = 250
RAISES = ("SystemExit", "KeyboardInterrupt", "GeneratorExit", "RecursionError", "MemoryError", "StopIteration")


class Raiser:
    """Pickles as a call of ``exec`` that raises ``exc`` while the receiver unpickles it."""

    def __init__(self, exc: str) -> None:
        self.code = f"raise {exc}(3)"

    def __reduce__(self) -> Any:
        return (exec, (self.code,))


def valid_frames() -> list[bytes]:
    """A capture of frames as a peer would send them (ids that name no actor)."""
    frames: list[Any] = [
        ("m", 10**12, "hello"), ("m", 10**12 + 1, {"k": [1, 2.5, None]}), ("c", 10**12, "req", None, 77),
        ("r", 10**12, "value"), ("f", "hermes.pubsub", "fuzz-topic", b"payload" * 10, None),
        ("send_name", "nobody-here", "msg"), ("cn", "nobody-here", "req", None, 78), ("peers", []),
    ]
    return [pickle.dumps(f, 5) for f in frames]


def wrong_shape(rng: random.Random) -> bytes:
    tags = ["m", "c", "cn", "r", "x", "send_name", "exit", "link_exit", "link", "unlink", "monitor", "demonitor",
            "down", "spawn", "rpc", "peers", "f", "pg_sync", "zz", ""]
    junk = [None, "s", 2.5, b"b", [1, "x"], {"a": None}, (), 2**70, -1.0, object.__name__, {1, 2}]
    shapes: list[Callable[[], Any]] = [
        lambda: (rng.choice(tags), *rng.sample(junk, rng.randrange(0, 6))),
        lambda: rng.choice(junk),
        lambda: (),
        lambda: [rng.choice(tags)],
        lambda: (rng.choice(tags),),
        lambda: {"t": rng.choice(tags)},
    ]
    return pickle.dumps(rng.choice(shapes)(), 5)


def mutate(rng: random.Random, capture: list[bytes]) -> bytes:
    """One frame body (never empty: length 0 is a tick), never one with a huge memo index."""
    while True:
        body = _mutate(rng, capture)
        if not huge_memo(body):
            return body


def _mutate(rng: random.Random, capture: list[bytes]) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:  # bit flips
        body = bytearray(rng.choice(capture))
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
        return bytes(body)
    if kind == 1:  # truncated
        body = rng.choice(capture)
        return body[: rng.randrange(1, len(body))]
    if kind == 2:
        return rng.randbytes(rng.randint(1, 300))
    if kind == 3:
        return wrong_shape(rng)
    if kind == 4:  # raising while unpickled, alone or inside a valid frame
        raiser = Raiser(rng.choice(RAISES))
        return pickle.dumps(rng.choice([raiser, ("m", 10**12, raiser), ("f", "hermes.pubsub", "t", raiser, None)]), 5)
    return rng.choice(capture)  # valid: the link must still work between hostile frames


def huge_memo(body: bytes) -> bool:
    """True if unpickling ``body`` would ask for a memo slot past 2**20: CPython's C unpickler
    then grows its memo array to that index (a 43-byte pickle can ask for 20 GB and hang the
    process in allocation). A known hole of pickle itself, not an exception a node can catch:
    left out of the run, and named in docs/operations.md (authenticate peers; TLS)."""
    import pickletools
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # genops decoding mutated STRING opcodes
        try:
            for opcode, arg, _pos in pickletools.genops(body):
                if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and int(arg) > 2**20:
                    return True
        except Exception:  # malformed from here on: the unpickler stops here too
            return False
    return False


def wrong_length(rng: random.Random, body: bytes) -> bytes:
    """A last frame whose header lies: longer than what follows, or past max_frame."""
    return HEADER.pack(rng.choice([len(body) + rng.randint(1, 1000), 2**31 + rng.randrange(2**30)])) + body


# -- the three targets --------------------------------------------------------------------

def authenticated_socket(port: int, name: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    handshake = Handshake("connect", PeerInfo(name, 1, ("127.0.0.1", 1), True), COOKIE.encode())
    sock.sendall(handshake.initiate())
    while handshake.state is not State.DONE:
        data = sock.recv(4096)
        assert data, "the node closed the link during the handshake"
        reply = handshake.receive_data(data)
        if reply:
            sock.sendall(reply)
    return sock


def finish(sock: socket.socket) -> None:
    """Half-close and read until the node closes: every byte sent is read by it (no RST)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sock.recv(65536):
            pass
    sock.close()


def fuzz_mesh(rng: random.Random, port: int) -> None:
    capture = valid_frames()
    for batch in range(MESH_FRAMES // BATCH):
        sock = authenticated_socket(port, f"fuzz{batch}@127.0.0.1")
        bodies = [mutate(rng, capture) for _ in range(BATCH - 1)]
        data = b"".join(HEADER.pack(len(b)) + b for b in bodies) + wrong_length(rng, rng.choice(capture))
        sock.sendall(data)
        finish(sock)


def fuzz_handshake(rng: random.Random, port: int) -> None:
    hello = json.dumps({"t": "hello", "v": 1, "name": "x@h", "creation": 1, "address": ["127.0.0.1", 1],
                        "hidden": False, "nonce": "00" * 32}, separators=(",", ":")).encode()
    capture = MAGIC + HEADER.pack(len(hello)) + hello
    for _ in range(HANDSHAKES):
        kind = rng.randrange(5)
        if kind == 0:
            data = bytearray(capture)
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data = bytearray(capture[: rng.randrange(1, len(capture))])
        elif kind == 2:
            data = bytearray(MAGIC + HEADER.pack(rng.choice([0, 2**31, 5000, len(hello) + 9])) + hello)
        elif kind == 3:
            nested = b"[" * 3000 + b"]" * 3000  # deep JSON
            data = bytearray(MAGIC + HEADER.pack(len(nested)) + nested)
        else:
            data = bytearray(rng.randbytes(rng.randint(1, 200)))
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(bytes(data))
            finish(sock)


def fuzz_service(rng: random.Random, port: int) -> int:
    """Mutated requests on authenticated service connections; returns how many connections were dropped."""
    capture = [pickle.dumps(r, 5) for r in ((DIRECTORY_ID, "ping", (), {}), (DIRECTORY_ID, "nodes", (), {}),
                                            (DIRECTORY_ID, "snapshot", (), {}))]
    conn, dropped, sent = None, 0, 0
    while sent < SERVICE_FRAMES:
        if conn is None:
            conn = ServiceConnection(("127.0.0.1", port), COOKIE.encode(), timeout=5.0)
        body = mutate(rng, capture)
        sent += 1
        if rng.random() < 0.02:  # a lying length: the service waits for bytes that never come
            conn._sock.sendall(wrong_length(rng, body))
            conn.close()
            conn, dropped = None, dropped + 1
            continue
        try:
            conn._conn.send_bytes(body)
            conn._conn.recv()
        except (OSError, EOFError):
            conn.close()
            conn, dropped = None, dropped + 1
    if conn is not None:
        conn.close()
    return dropped


# -- the test -----------------------------------------------------------------------------

def test_no_frame_stops_a_node(tmp_path: Path) -> None:
    seed = int(os.environ.get("HERMES_FUZZ_SEED", time.time_ns() % 2**32))
    print(f"fuzz seed {seed} (replay: HERMES_FUZZ_SEED={seed})")
    rng = random.Random(seed)
    port, service_port = free_port(), free_port()
    log_path = tmp_path / "fuzzb.log"
    service = start_service_process("127.0.0.1", service_port, COOKIE.encode(), log_path=tmp_path / "service.log")
    try:
        with peer_node("fuzzb", port, None, log_path) as proc:
            wait_listening(port, proc)

            async def main() -> dict[str, Any]:
                loop = asyncio.get_running_loop()
                peer = await wait_until(lambda: next((n for n in hermes.nodes() if n.startswith("fuzzb")), None),
                                        timeout=60)
                assert await hermes.call(("echo", peer), 1, timeout=30) == ("echo", 1)
                # a plain send of objects whose unpickling raises, through the API
                for exc in RAISES:
                    hermes.send(("echo", peer), Raiser(exc))
                started = time.monotonic()
                await loop.run_in_executor(None, fuzz_mesh, rng, port)
                await loop.run_in_executor(None, fuzz_handshake, rng, port)
                dropped = await loop.run_in_executor(None, fuzz_service, rng, service_port)
                # the other link (ours) still answers, and still the same incarnation of the node
                reply = await hermes.call(("echo", peer), "still here", timeout=30)
                return {"reply": reply, "nodes": hermes.nodes(), "seconds": time.monotonic() - started,
                        "dropped": dropped}

            result = hermes.run(main, name="fuzza", cookie=COOKIE, peers=[f"127.0.0.1:{port}"])
            assert proc.poll() is None, f"seed {seed}: the node died"
        log = log_path.read_text(errors="replace")
        assert result["reply"] == ("echo", "still here"), f"seed {seed}"
        assert any(n.startswith("fuzzb") for n in result["nodes"]), f"seed {seed}: our link was dropped"
        assert log.count("failed to unpickle") >= 500, f"seed {seed}: the frames never reached decoding"
        assert "node stopping" not in log and "Traceback" not in log, f"seed {seed}"
        # every drop is one log line. (CPython's unpickler itself may print "SystemError:
        # deallocated bytearray object has exported buffers" for some mutated protocol-5
        # pickles, from the C code, outside logging: the node is unaffected.)
        stray = [ln for ln in log.splitlines() if not ln.startswith("20") and "exported buffers" not in ln]
        assert not stray, f"seed {seed}: log lines that are not one-line records: {stray[:5]}"
        assert service.poll() is None, f"seed {seed}: the service died"
        with contextlib.closing(ServiceConnection(("127.0.0.1", service_port), COOKIE.encode())) as conn:
            assert isinstance(conn.call("ping"), str), f"seed {seed}"
        assert result["dropped"] > 0  # the hostile requests did reach the service
    except ServiceUnavailable as exc:
        raise AssertionError(f"seed {seed}: the service stopped answering: {exc}") from exc
    finally:
        service.kill()
        service.wait(timeout=30)


# -- one test per hostile case, on a real link in this process ------------------------------

class Frames:
    """A connection delegate that keeps the frames it gets and raises on ("raise", exc)."""

    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.closed: list[str] = []

    def accept_peer(self, conn: Any, peer: Any) -> bool:
        return True

    def connection_established(self, conn: Any) -> None:
        pass

    def frame_received(self, conn: Any, obj: Any) -> None:
        if type(obj) is tuple and obj[:1] == ("raise",):
            exec(f"raise {obj[1]}(3)")  # a handler failing with anything at all
        self.frames.append(obj)

    def connection_closed(self, conn: Any, reason: str) -> None:
        self.closed.append(reason)


@pytest.mark.parametrize("where", ["unpickling", "handling"])
@pytest.mark.parametrize("exc", RAISES)
def test_a_frame_raising_anything_is_dropped_with_one_line(caplog: pytest.LogCaptureFixture, exc: str,
                                                           where: str) -> None:
    async def main() -> None:
        server_side = Frames()
        local = PeerInfo("server@host", 1, ("127.0.0.1", 0))
        server = await start_listener(server_side, "127.0.0.1", 0, local=local, cookie=b"c")
        port = server.sockets[0].getsockname()[1]
        client = await open_connection(Frames(), "127.0.0.1", port, local=PeerInfo("client@host", 2,
                                       ("127.0.0.1", 1)), cookie=b"c", timeout=30)
        try:
            if where == "unpickling":
                client.send_payload(pickle.dumps(("m", 1, Raiser(exc)), 5))
            else:
                client.send(("raise", exc))
            client.send("after")
            await wait_until(lambda: server_side.frames == ["after"], timeout=30)
            assert server_side.closed == []  # the link goes on, and so does this loop
        finally:
            client.close()
            server.close()

    with caplog.at_level(logging.DEBUG, logger="hermes.transport"):
        asyncio.run(main())
    drops = [r for r in caplog.records if "dropped a frame from client@host" in r.getMessage()]
    assert len(drops) == 1 and exc in drops[0].getMessage() and "\n" not in drops[0].getMessage()

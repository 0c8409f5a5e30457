"""The cookie handshake, as a state machine on bytes (no sockets, no asyncio).

Owns the handshake wire format and its rules. It must not know about
sockets, timers, pickle or actors: ``_connection`` feeds it the bytes that
arrive before authentication and writes the bytes it returns.

Protocol (every message is one frame: 4-byte big-endian length + compact JSON
of at most ``MAX_HANDSHAKE_FRAME`` bytes, with a ``"t"`` type field)::

    connector                                   acceptor
    MAGIC + hello {v, name, creation,
                   address, nonce: Na}  ---->
                                        <----   challenge {name, creation, address,
                                                           nonce: Nb, proof: Pa}
    verify Pa
    response {proof: Pc}                ---->
                                                verify Pc, ask the delegate
                                        <----   ok {}  |  nok {reason}

    Pa = HMAC-SHA256(cookie, b"acceptor|"  + Na + Nb + ids)
    Pc = HMAC-SHA256(cookie, b"connector|" + Nb + Na + ids)
    ids = JSON [[connector name, creation, host, port, hidden], [acceptor ...]]

Why it is safe: each side proves the cookie over a nonce chosen by the other,
so a recorded proof is useless later; the role label and the nonce order
differ between the two proofs, so a proof obtained from one side can never
be reflected back as the other side's; the identities are inside the MAC, so
a man in the middle cannot rename either side. Nothing here ever unpickles:
until ``State.DONE`` the peer is untrusted and only small JSON is parsed.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

from hermes._errors import HandshakeError

__all__ = [
    "FRAME_HEADER", "MAGIC", "MAX_HANDSHAKE_FRAME", "NONCE_SIZE", "VERSION",
    "Handshake", "HandshakeRefused", "PeerInfo", "Role", "State",
    "acceptor_proof", "connector_proof", "encode_message",
]

MAGIC = b"HRMS1"
VERSION = 1
NONCE_SIZE = 32
MAX_HANDSHAKE_FRAME = 4096
MAX_NAME = 255
FRAME_HEADER = struct.Struct(">I")

Role = Literal["connect", "accept"]


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Who a node is: its name, its incarnation, where it listens, and whether
    it is hidden (Erlang's hidden nodes: connected but not part of the mesh)."""

    name: str
    creation: int
    address: tuple[str, int]
    hidden: bool = False


class HandshakeRefused(HandshakeError):
    """The acceptor authenticated us, then declined the connection (NOK)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"connection refused by peer: {reason}")


class State(enum.Enum):
    START = "start"
    AWAIT_MAGIC = "await magic"  # acceptor
    AWAIT_HELLO = "await hello"  # acceptor
    AWAIT_CHALLENGE = "await challenge"  # connector
    AWAIT_RESPONSE = "await response"  # acceptor
    AWAIT_VERDICT = "await verdict"  # acceptor: the local delegate decides, call verdict()
    AWAIT_OK = "await ok"  # connector
    DONE = "done"
    REFUSED = "refused"  # acceptor sent NOK
    FAILED = "failed"


def acceptor_proof(cookie: bytes, nonce_a: bytes, nonce_b: bytes, connector: PeerInfo, acceptor: PeerInfo) -> bytes:
    return hmac.digest(cookie, b"acceptor|" + nonce_a + nonce_b + _ids(connector, acceptor), hashlib.sha256)


def connector_proof(cookie: bytes, nonce_a: bytes, nonce_b: bytes, connector: PeerInfo, acceptor: PeerInfo) -> bytes:
    return hmac.digest(cookie, b"connector|" + nonce_b + nonce_a + _ids(connector, acceptor), hashlib.sha256)


def encode_message(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return FRAME_HEADER.pack(len(body)) + body


class Handshake:
    """One side of one handshake. Feed it peer bytes; write what it returns.

    Usage: ``initiate()`` once (connector: returns the hello to send), then
    ``receive_data(data)`` for each chunk; an acceptor reaching
    ``State.AWAIT_VERDICT`` calls ``verdict(accept)``. At ``State.DONE``,
    ``peer`` is authenticated and ``take_leftover()`` returns the bytes that
    followed the last handshake message (the first ordinary frames).
    Failures raise ``HandshakeError`` (``HandshakeRefused`` for a NOK).
    """

    def __init__(self, role: Role, local: PeerInfo, cookie: bytes, *, nonce: bytes | None = None) -> None:
        if role not in ("connect", "accept"):
            raise ValueError(f"role must be 'connect' or 'accept', not {role!r}")
        if not cookie:
            raise ValueError("the cookie is empty")
        self.role: Role = role
        self.local = local
        self.state = State.START
        self.peer: PeerInfo | None = None  # set once the peer has proved the cookie
        self._cookie = cookie
        self._nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
        self._peer_nonce = b""
        self._claimed: PeerInfo | None = None  # who the peer says it is, not yet proven
        self._buffer = bytearray()

    def initiate(self) -> bytes:
        self._expect_state(State.START)
        if self.role == "accept":
            self.state = State.AWAIT_MAGIC
            return b""
        self.state = State.AWAIT_CHALLENGE
        hello = {"t": "hello", "v": VERSION, **_identity_fields(self.local), "nonce": self._nonce.hex()}
        return MAGIC + encode_message(hello)

    def receive_data(self, data: bytes) -> bytes:
        """Consume peer bytes; return the bytes to send back (maybe empty)."""
        if self.state in (State.START, State.FAILED, State.REFUSED):
            raise HandshakeError(f"handshake is in state {self.state.value!r}")
        self._buffer += data
        replies = []
        try:
            while self.state in _TRANSITIONS or self.state is State.AWAIT_MAGIC:
                message = self._next_message()
                if message is None:
                    break
                replies.append(getattr(self, _TRANSITIONS[self.state][message["t"]])(message))
        except HandshakeError:
            self.state = State.FAILED
            raise
        return b"".join(replies)

    def verdict(self, accept: bool, reason: str = "rejected") -> bytes:
        """Acceptor only: the local decision on the authenticated peer; returns OK or NOK."""
        self._expect_state(State.AWAIT_VERDICT)
        if accept:
            self.state = State.DONE
            return encode_message({"t": "ok"})
        self.state = State.REFUSED
        return encode_message({"t": "nok", "reason": reason[:200]})

    def take_leftover(self) -> bytes:
        self._expect_state(State.DONE)
        leftover = bytes(self._buffer)
        self._buffer.clear()
        return leftover

    # -- parsing -------------------------------------------------------------

    def _next_message(self) -> dict[str, Any] | None:
        buffer = self._buffer
        if self.state is State.AWAIT_MAGIC:
            if not _starts_like_magic(buffer):
                raise HandshakeError("bad magic: the peer does not speak the Hermes protocol")
            if len(buffer) < len(MAGIC):
                return None
            del buffer[: len(MAGIC)]
            self.state = State.AWAIT_HELLO
        if len(buffer) < FRAME_HEADER.size:
            return None
        (size,) = FRAME_HEADER.unpack_from(buffer)
        if not 0 < size <= MAX_HANDSHAKE_FRAME:
            raise HandshakeError(f"handshake frame of {size} bytes (limit {MAX_HANDSHAKE_FRAME})")
        end = FRAME_HEADER.size + size
        if len(buffer) < end:
            return None
        body = bytes(buffer[FRAME_HEADER.size : end])
        del buffer[:end]
        return self._parse(body)

    def _parse(self, body: bytes) -> dict[str, Any]:
        try:
            message = json.loads(body)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise HandshakeError(f"malformed handshake message: {exc}") from exc
        if not isinstance(message, dict):
            raise HandshakeError("malformed handshake message: not an object")
        expected = _TRANSITIONS[self.state]
        if message.get("t") not in expected:
            raise HandshakeError(f"unexpected handshake message {message.get('t')!r} in state {self.state.value!r}")
        return message

    # -- transitions (named in _TRANSITIONS) --------------------------------

    def _on_hello(self, message: dict[str, Any]) -> bytes:
        if message.get("v") != VERSION:
            raise HandshakeError(f"unsupported protocol version {message.get('v')!r}")
        self._claimed = _identity(message)
        self._peer_nonce = _hex_field(message, "nonce", NONCE_SIZE)
        if hmac.compare_digest(self._peer_nonce, self._nonce):
            raise HandshakeError("the peer echoed our nonce (reflection attempt)")
        proof = acceptor_proof(self._cookie, self._peer_nonce, self._nonce, self._claimed, self.local)
        self.state = State.AWAIT_RESPONSE
        challenge = {"t": "challenge", **_identity_fields(self.local), "nonce": self._nonce.hex(), "proof": proof.hex()}
        return encode_message(challenge)

    def _on_challenge(self, message: dict[str, Any]) -> bytes:
        claimed = _identity(message)
        self._peer_nonce = _hex_field(message, "nonce", NONCE_SIZE)
        expected = acceptor_proof(self._cookie, self._nonce, self._peer_nonce, self.local, claimed)
        if not hmac.compare_digest(_hex_field(message, "proof", 32), expected):
            raise HandshakeError("the acceptor failed to prove the cookie (wrong cookie?)")
        self.peer = claimed
        self.state = State.AWAIT_OK
        proof = connector_proof(self._cookie, self._nonce, self._peer_nonce, self.local, claimed)
        return encode_message({"t": "response", "proof": proof.hex()})

    def _on_response(self, message: dict[str, Any]) -> bytes:
        assert self._claimed is not None  # set by _on_hello, the only way here
        expected = connector_proof(self._cookie, self._peer_nonce, self._nonce, self._claimed, self.local)
        if not hmac.compare_digest(_hex_field(message, "proof", 32), expected):
            raise HandshakeError("the connector failed to prove the cookie (wrong cookie?)")
        self.peer = self._claimed
        self.state = State.AWAIT_VERDICT
        return b""

    def _on_ok(self, message: dict[str, Any]) -> bytes:
        self.state = State.DONE
        return b""

    def _on_nok(self, message: dict[str, Any]) -> bytes:
        raise HandshakeRefused(str(message.get("reason", ""))[:200])

    def _expect_state(self, state: State) -> None:
        if self.state is not state:
            raise HandshakeError(f"handshake is in state {self.state.value!r}, expected {state.value!r}")


# The protocol as data: state -> {message type the peer may send: handler}.
# A message type missing from the current state's row closes the connection.
_TRANSITIONS: dict[State, dict[str, str]] = {
    State.AWAIT_HELLO: {"hello": "_on_hello"},
    State.AWAIT_CHALLENGE: {"challenge": "_on_challenge"},
    State.AWAIT_RESPONSE: {"response": "_on_response"},
    State.AWAIT_OK: {"ok": "_on_ok", "nok": "_on_nok"},
}


def _starts_like_magic(buffer: bytearray) -> bool:
    # Compare what has arrived so far, so garbage is refused on its first byte.
    n = min(len(buffer), len(MAGIC))
    return buffer[:n] == MAGIC[:n]


def _ids(connector: PeerInfo, acceptor: PeerInfo) -> bytes:
    # JSON makes the concatenation unambiguous whatever characters names hold.
    return json.dumps([[p.name, p.creation, *p.address, p.hidden] for p in (connector, acceptor)]).encode()


def _identity_fields(info: PeerInfo) -> dict[str, Any]:
    return {"name": info.name, "creation": info.creation, "address": list(info.address), "hidden": info.hidden}


def _identity(message: dict[str, Any]) -> PeerInfo:
    name, creation, address = message.get("name"), message.get("creation"), message.get("address")
    hidden = message.get("hidden", False)
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise HandshakeError(f"bad node name {name!r}")
    if not _is_int(creation):
        raise HandshakeError(f"bad creation {creation!r}")
    if not (isinstance(address, list) and len(address) == 2 and isinstance(address[0], str) and _is_int(address[1])):
        raise HandshakeError(f"bad address {address!r}")
    if not isinstance(hidden, bool):
        raise HandshakeError(f"bad hidden flag {hidden!r}")
    return PeerInfo(name, creation, (address[0], address[1]), hidden)


def _hex_field(message: dict[str, Any], key: str, size: int) -> bytes:
    value = message.get(key)
    if not isinstance(value, str) or len(value) != 2 * size:
        raise HandshakeError(f"bad {key!r} field")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise HandshakeError(f"bad {key!r} field") from exc


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a number

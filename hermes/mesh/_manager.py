"""The distribution manager: this node's connections to the other nodes.

It owns the listener and one authenticated ``Connection`` per peer name, and
turns the runtime's remote operations into frames and frames back into
runtime operations. Frames are tuples whose first item is a tag; the table
in ``_frames`` says what each does on arrival.

Rules:
- one connection per peer: a duplicate is refused at the handshake; when two
  nodes connect to each other at the same moment, the connection initiated by
  the node with the greater name wins (both sides apply the same rule);
- the mesh is transitive: on every new connection each side sends its peer
  list, and the other connects to the peers it lacks (hidden nodes excepted);
  of two nodes that know each other from the directory, the greater name
  dials first (``_connecting``);
- a peer that restarted (new creation) replaces its old connection; pids of
  the old incarnation are dead: sends to them are dropped, monitors get
  ``"noproc"``;
- on a lost connection the runtime fails links, monitors and calls with
  ``"noconnection"`` and the node-down listeners (pg, discovery) are told.

It knows nothing of registries, process groups or pubsub: those layers add
the frames they need through ``register_frame`` and hear of nodes through
``on_node_up``/``on_node_down``. Connecting lives in ``_connecting``, link
backpressure in ``_backpressure`` (both mixins of ``Distribution``), start-up
in ``_start``.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Callable, NoReturn, cast

from .._config import TLSConfig
from .._errors import RemoteError, SerializationError
from ..runtime import NodeDown, NodeUp, Pid, Ref
from ..runtime.lowlevel import Node
from ..transport import (Connection, PeerInfo, aligned_delay, client_context, dumps, server_context,
                         start_listener)
from ._backpressure import Backpressure
from ._connecting import Connecting
from ._frames import HANDLERS, MSG, unsendable_reply

log = logging.getLogger("hermes.mesh")

# Closes that say nothing about the peer's health: we hung up, or it told us it hangs up.
DELIBERATE_CLOSES = ("disconnect", "disconnected by peer", "node stopping", "duplicate",
                     "replaced by a new incarnation")
STALL = 1.0  # seconds: a loop that could not run this long was frozen, not its peers
EXIT_SIGNALS = ("exit", "link_exit", "down")  # frames whose last item is an exit reason
REMOTE_SPAWN_BASE = 1 << 40  # ids chosen by a spawning peer: never clash with the local counter


class Distribution(Connecting, Backpressure):
    """This node's side of the mesh (``node.dist``)."""

    def __init__(self, node: Node, cookie: bytes, *, hidden: bool = False, tick_interval: float = 1.0,
                 max_frame: int = 64 * 2**20, connect_timeout: float = 5.0,
                 max_link_buffer: int = 64 * 2**20, tls: TLSConfig | None = None) -> None:
        self.node = node
        self.max_link_buffer = max_link_buffer
        # TLS: built once, shared by every link (a context is costly to make, cheap to use)
        self.server_ssl = server_context(tls) if tls is not None else None
        self.client_ssl = client_context(tls) if tls is not None else None
        self.cookie = cookie
        self.hidden = hidden
        self.tick_interval = tick_interval
        self.max_frame = max_frame
        self.connect_timeout = connect_timeout
        # who we are to peers; the address (port 0: not listening) is set by listen()
        self.local = PeerInfo(node.name, node.creation, ("127.0.0.1", 0), hidden)
        self.server: asyncio.Server | None = None
        self.conns: dict[str, Connection] = {}
        self.links = 0  # bumped whenever a connection comes or goes: a ``sender`` older than it is stale
        self.addresses: dict[str, tuple[str, int]] = {}
        self.pending: dict[str, asyncio.Future[bool]] = {}
        self.arrivals: dict[str, asyncio.Future[None]] = {}  # links awaited (``_connecting``)
        self.up_listeners: list[Callable[[str, PeerInfo], None]] = []
        self.down_listeners: list[Callable[[str, int, bool], None]] = []  # name, creation, lost?
        self.resolvers: list[Callable[[str], tuple[str, int] | None]] = []
        self.failures: dict[str, str] = {}  # the last reason a connect to that name/address failed
        # what each arriving frame does, by tag: _frames.HANDLERS plus the layers' own
        self.handlers: dict[str, Callable[[Distribution, Connection, tuple[Any, ...]], None]] = dict(HANDLERS)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._beat = node.loop.time()
        self._stalled_at = float("-inf")
        self._heartbeat = node.loop.call_later(aligned_delay(STALL / 2), self._check_stall)
        self._frames_seen: dict[Connection, int] = {}  # frames_in at the last backlog scan
        self._paused_links: set[Connection] = set()  # links whose reading the backlog scan paused
        node.backlog_listeners.append(self._backlog)

    def _check_stall(self) -> None:
        now = self.node.loop.time()
        if now - self._beat > STALL:
            self._stalled_at = now
        self._beat = now
        self._heartbeat = self.node.loop.call_later(aligned_delay(STALL / 2), self._check_stall)

    def _recently_stalled(self) -> bool:
        now = self.node.loop.time()
        return now - self._beat > STALL or now - self._stalled_at < 4 * STALL

    # -- lifecycle ------------------------------------------------------------

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        self.local = PeerInfo(self.node.name, self.node.creation, (host, port), self.hidden)
        self.server = await start_listener(self, host, port, local=self.local, cookie=self.cookie,
                                           tick_interval=self.tick_interval, max_frame=self.max_frame,
                                           ssl=self.server_ssl)
        bound = self.server.sockets[0].getsockname()[:2]
        self.local = PeerInfo(self.node.name, self.node.creation, (host, bound[1]), self.hidden)
        log.debug("node %s listening on %s:%d", self.node.name, host, bound[1])
        return host, bound[1]

    async def stop(self) -> None:
        self._heartbeat.cancel()
        if self._backlog in self.node.backlog_listeners:
            self.node.backlog_listeners.remove(self._backlog)
        if self.server is not None:
            self.server.close()
        for conn in list(self.conns.values()):
            conn.send(("bye",))  # a clean stop is not a crash: peers need not report us
            conn.close("node stopping")
        for task in list(self._tasks):
            task.cancel()
        self.node.dist = None

    def statistics(self) -> dict[str, Any]:
        """Per peer: its connection's counters (frames, bytes, writes, queued...)."""
        return {name: conn.statistics() for name, conn in self.conns.items()}

    # -- the seams for the layers above (pg, pubsub, presence) ---------------

    def register_frame(self, tag: str, handler: Callable[[Distribution, Connection, tuple[Any, ...]], None]) -> None:
        """Handle arriving frames ``(tag, ...)`` with ``handler(dist, conn, frame)``.
        A layer's tags must not clash with the runtime's (``_frames.HANDLERS``)."""
        if tag in HANDLERS or tag == MSG:
            raise ValueError(f"frame tag {tag!r} belongs to the runtime")
        self.handlers[tag] = handler

    def on_node_up(self, listener: Callable[[str, PeerInfo], None]) -> None:
        """``listener(name, peer)`` once a connection to a node is established."""
        self.up_listeners.append(listener)

    def on_node_down(self, listener: Callable[[str, int, bool], None]) -> None:
        """``listener(name, creation, lost)`` once that connection is gone (after the
        runtime failed links, monitors and calls). ``lost``: the peer vanished, as
        opposed to a deliberate close by either side."""
        self.down_listeners.append(listener)

    def peer(self, node: str) -> PeerInfo | None:
        """Who is at the other end of the link to ``node`` (name, creation, address,
        hidden), or ``None`` if it is not connected."""
        conn = self.conns.get(node)
        return conn.peer if conn is not None else None

    def send_frame(self, node: str, frame: tuple[Any, ...]) -> bool:
        """One frame to ``node``; ``False`` if it is not connected."""
        conn = self.conns.get(node)
        if conn is None:
            return False
        conn.send(frame)
        return True

    def multicast(self, nodes: Any, frame: tuple[Any, ...] | bytes) -> int:
        """The same frame to each of ``nodes`` (names; unconnected ones skipped),
        pickled once: a publish to 200 subscribers on 3 nodes writes 3 frames.
        ``frame`` may already be pickled (``transport.dumps``). Returns how many
        nodes it was written to. ``SerializationError`` before anything is sent."""
        payload = frame if type(frame) is bytes else dumps(frame)
        conns = self.conns
        sent = 0
        for name in nodes:
            conn = conns.get(name)
            if conn is not None:
                conn.send_payload(payload)
                sent += 1
        return sent

    def sender(self, nodes: Any) -> Callable[[bytes], Any] | None:
        """``multicast`` of a pickled frame to ``nodes``, bound once for a hot path:
        a function that writes its payload to each of them connected now (``None``
        if none is). Valid while ``links`` is unchanged: ask again when it moves
        (a frame written through a stale one to a closed link is dropped). A
        payload over ``max_frame`` raises ``SerializationError`` before anything
        is written."""
        sends = tuple(conn.send_payload for name in nodes if (conn := self.conns.get(name)) is not None)
        if not sends:
            return None
        if len(sends) == 1:
            return sends[0]  # the usual case: no loop, no call in between

        def send_each(payload: bytes) -> None:
            for send in sends:
                send(payload)

        return send_each

    # -- the runtime's interface ---------------------------------------------

    def nodes(self) -> list[str]:
        return [name for name, conn in self.conns.items() if not conn.peer.hidden]

    def connected(self, name: str) -> bool:
        return name in self.conns

    def peer_creation(self, name: str) -> int | None:
        conn = self.conns.get(name)
        return conn.peer.creation if conn is not None and conn.peer is not None else None

    def send(self, pid: Pid, msg: Any) -> None:
        conn = self.conns.get(pid[0])
        if conn is None:
            self._check_picklable(msg)  # an unpicklable message is an error even if it would be dropped
            return
        if conn.peer.creation != pid[1]:
            return  # an old incarnation's pid: dead
        try:  # pickled here, not by conn.send: one call less on the cross-node send's path
            conn.send_payload(dumps((MSG, pid[2], msg)))  # ids only: a Pid pickles ~7x slower than an int
            return
        except SerializationError as exc:
            frame_error = exc
        _raise_own_error(msg, frame_error)  # the message's own type, not the frame's tuple

    def send_signal(self, name: str, signal: tuple[Any, ...]) -> None:
        conn = self.conns.get(name)
        if conn is None:
            if signal[0] == "send_name":
                self._check_picklable(signal[2])
            return
        try:
            conn.send(signal)
            return
        except SerializationError as exc:
            if signal[0] in EXIT_SIGNALS:  # an exit reason must reach the peer in some form
                conn.send((*signal[:-1], portable_reason(signal[-1])))
                return
            if signal[0] != "send_name":
                raise
            frame_error = exc
        _raise_own_error(signal[2], frame_error)  # name the message's own type

    def call(self, pid: Pid, request: Any, sender: Pid | None, ref: Ref) -> str | None:
        """One frame per remote call: the callee's node sets up the monitor, and
        its reply ends it there, so no monitor/demonitor frames are needed.
        ``None`` once sent; else why it cannot be: ``"noconnection"``, or
        ``"noproc"`` for a pid of an earlier incarnation of the peer."""
        conn = self.conns.get(pid[0])
        if conn is None:
            return "noconnection"
        peer = conn.peer
        if peer is not None and peer.creation != pid[1]:
            return "noproc"
        try:
            conn.send(("c", pid[2], request, sender[2] if sender is not None else None, ref[2]))
            return None
        except SerializationError as exc:
            frame_error = exc
        _raise_own_error(request, frame_error)  # name the request's own type

    def call_name(self, node: str, name: str, request: Any, sender: Pid | None, ref: Ref) -> None:
        """A call to the actor registered as ``name`` on ``node``: the name is
        resolved there, from this same one frame (no lookup round trip)."""
        conn = self.conns[node]
        try:
            conn.send(("cn", name, request, sender[2] if sender is not None else None, ref[2]))
            return
        except SerializationError as exc:
            frame_error = exc
        _raise_own_error(request, frame_error)

    def reply(self, ref: Ref, value: Any, rpc: bool = False) -> None:
        conn = self.conns.get(ref[0])
        if conn is None or conn.peer.creation != ref[1]:
            return  # the caller's node (that incarnation) is gone
        try:
            conn.send(("r", ref[2], value))
        except SerializationError as exc:
            conn.send(unsendable_reply(ref[2], value, exc, rpc))

    @staticmethod
    def _check_picklable(msg: Any) -> None:
        dumps(msg)

    # -- spawning on other nodes ---------------------------------------------

    def spawn(self, name: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *,
              parent: Any, link: bool) -> Pid:
        conn = self.conns.get(name)
        creation = conn.peer.creation if conn is not None else 0
        pid = Pid(name, creation, REMOTE_SPAWN_BASE + secrets.randbits(40))
        link_from = parent.pid if (link and parent is not None) else None
        if conn is not None:
            conn.send(("spawn", pid, target, args, kwargs, link_from))
        else:
            self._check_picklable((target, args, kwargs))
        if link_from is not None:
            if parent.links is None:
                parent.links = set()
            parent.links.add(pid)
            if conn is None:
                self.node.route_exit(parent.pid, pid, "noconnection")
        return pid

    # -- the Connection delegate ---------------------------------------------

    def accept_peer(self, conn: Connection, peer: PeerInfo) -> bool:
        if peer.name == self.node.name:
            return False
        existing = self.conns.get(peer.name)
        if existing is not None:
            if existing.peer.creation != peer.creation:
                existing.close("replaced by a new incarnation")  # the peer restarted
                return True
            return False
        if self.node.name > peer.name and self._connecting_to(peer):
            return False  # simultaneous connect: ours (from the greater name) wins
        return True

    def connection_established(self, conn: Connection) -> None:
        conn.set_link_limit(self.max_link_buffer)
        peer = conn.peer
        old = self.conns.get(peer.name)
        if old is not None and old is not conn:
            if old.peer.creation == peer.creation and _initiator(old) > _initiator(conn):
                conn.close("duplicate")  # both sides keep the one the greater name started
                return
            old.close("duplicate")
        self.conns[peer.name] = conn
        self.links += 1
        self.addresses[peer.name] = tuple(peer.address)  # type: ignore[assignment]
        arrival = self.arrivals.pop(peer.name, None)
        if arrival is not None and not arrival.done():
            arrival.set_result(None)
        log.info("node %s connected to %s", self.node.name, peer.name)
        if not self.hidden and not peer.hidden:
            conn.send(("peers", [(p.name, tuple(p.address)) for n, c in self.conns.items()
                                 if n != peer.name and (p := c.peer) is not None and not p.hidden]))
        for listener in self.up_listeners:
            listener(peer.name, peer)
        if not peer.hidden:
            self.node.notify_node_watchers(NodeUp(peer.name))

    def connection_closed(self, conn: Connection, reason: Any) -> None:
        peer = conn.peer
        if peer is None or self.conns.get(peer.name) is not conn:
            return
        del self.conns[peer.name]
        self.links += 1
        log.info("node %s lost connection to %s: %s", self.node.name, peer.name, reason)
        self.node.node_down(peer.name)
        if not peer.hidden:
            self.node.notify_node_watchers(NodeDown(peer.name))
        # lost: the peer vanished. Not when we or it hung up, nor when *we* were the
        # frozen one (a SIGSTOP or a long stall): then our peers dropped us.
        lost = reason not in DELIBERATE_CLOSES and not self._recently_stalled()
        for listener in self.down_listeners:
            listener(peer.name, peer.creation, lost)

    def frame_received(self, conn: Connection, frame: Any) -> None:
        try:
            tag = frame[0]
            if tag == MSG:  # a message to one of our actors (every cross-node send): see _frames.MSG
                node = self.node
                proc = node.procs.get((node.name, node.creation, frame[1]))
                if proc is not None:
                    proc.deliver(frame[2])
                return
            handler = self.handlers[tag]
        except (KeyError, TypeError, IndexError):
            log.warning("dropping a malformed frame from %s: %r", conn.peer.name, type(frame).__name__)
            return
        handler(self, conn, frame)


def _initiator(conn: Connection) -> str:
    """The name of the node that opened ``conn``."""
    return conn.local.name if conn.role == "connect" else conn.peer.name


def of(node: Node) -> Distribution | None:
    """``node.dist`` as this module's ``Distribution``, for the layers above
    (pg, pubsub, the cluster tools): the runtime sees only its own protocol."""
    return cast("Distribution | None", node.dist)


def portable_reason(reason: Any) -> Any:
    """An exit reason that cannot be pickled, as one that can: an exception
    becomes a ``RemoteError`` with its repr and traceback text."""
    if isinstance(reason, BaseException):
        return RemoteError.from_exception(reason)
    return RemoteError(f"an exit reason that could not be sent: {reason!r}")


def _raise_own_error(value: Any, frame_error: SerializationError) -> NoReturn:
    """Raise the error that names the user's value, not the frame that carried
    it; its cause is the pickler's error. Called outside the frame error's
    handler, so that error is not chained to it."""
    try:
        dumps(value)
    except SerializationError as own:
        error = own
    else:  # the value pickles: the frame was too big, and the error still names the value's type
        error = SerializationError(type(value).__qualname__, frame_error.detail)
        error.__cause__ = frame_error.__cause__
    raise error from error.__cause__


__all__ = ["Distribution", "of", "portable_reason"]

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
- a peer that restarted (new creation) replaces its old connection; pids of
  the old incarnation are dead: sends to them are dropped, monitors get
  ``"noproc"``;
- on a lost connection the runtime fails links, monitors and calls with
  ``"noconnection"`` and the node-down listeners (pg, discovery) are told.

It knows nothing of registries, process groups or pubsub: those layers add
the frames they need to ``handlers``, the one table that dispatches arrivals.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import socket
from typing import Any, Callable, NoReturn, cast

from .._config import NodeConfig, TLSConfig, parse_address
from .._errors import HandshakeError, HermesError, RemoteError, SerializationError
from ..runtime import NodeDown, NodeUp, Pid, Ref
from ..runtime.lowlevel import Node
from ..transport import (Connection, PeerInfo, PeerRefusedError, client_context, dumps, open_connection, resolve_cookie,
                         server_context, start_listener)
from ._frames import HANDLERS, unsendable_reply

log = logging.getLogger("hermes.mesh")

# Closes that say nothing about the peer's health: we hung up, or it told us it hangs up.
DELIBERATE_CLOSES = ("disconnect", "disconnected by peer", "node stopping", "duplicate",
                     "replaced by a new incarnation")
STALL = 1.0  # seconds: a loop that could not run this long was frozen, not its peers
EXIT_SIGNALS = ("exit", "link_exit", "down")  # frames whose last item is an exit reason
REMOTE_SPAWN_BASE = 1 << 40  # ids chosen by a spawning peer: never clash with the local counter


class Distribution:
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
        self.addresses: dict[str, tuple[str, int]] = {}
        self.pending: dict[str, asyncio.Future[bool]] = {}
        self.up_listeners: list[Callable[[str, PeerInfo], None]] = []
        self.down_listeners: list[Callable[[str, int, bool], None]] = []  # name, creation, lost?
        self.resolvers: list[Callable[[str], tuple[str, int] | None]] = []
        self.failures: dict[str, str] = {}  # the last reason a connect to that name/address failed
        # what each arriving frame does, by tag: _frames.HANDLERS plus the layers' own
        self.handlers: dict[str, Callable[[Distribution, Connection, tuple[Any, ...]], None]] = dict(HANDLERS)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._beat = node.loop.time()
        self._stalled_at = float("-inf")
        self._heartbeat = node.loop.call_later(STALL / 2, self._check_stall)
        self._frames_seen: dict[Connection, int] = {}  # frames_in at the last backlog scan
        node.backlog_listeners.append(self._backlog)

    def _check_stall(self) -> None:
        now = self.node.loop.time()
        if now - self._beat > STALL:
            self._stalled_at = now
        self._beat = now
        self._heartbeat = self.node.loop.call_later(STALL / 2, self._check_stall)

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
        if tag in HANDLERS:
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
        try:
            conn.send(("m", pid[2], msg))  # ids only: a Pid pickles ~7x slower than an int
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

    def call(self, pid: Pid, request: Any, sender: Pid | None, ref: Ref) -> None:
        """One frame per remote call: the callee's node sets up the monitor, and
        its reply ends it there, so no monitor/demonitor frames are needed."""
        conn = self.conns[pid[0]]
        try:
            conn.send(("c", pid[2], request, sender[2] if sender is not None else None, ref[2]))
            return
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

    # -- connecting -----------------------------------------------------------

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
            conn = await open_connection(self, address[0], address[1], local=self.local, cookie=self.cookie,
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

    def _connected_to(self, address: tuple[str, int]) -> bool:
        return any(c.peer is not None and tuple(c.peer.address) == tuple(address) for c in self.conns.values())

    async def _wait_connected(self, name: str | None, address: tuple[str, int], timeout: float = 1.0) -> bool:
        def done() -> bool:
            return name in self.conns if name is not None else self._connected_to(address)

        deadline = self.node.loop.time() + timeout
        while not done() and self.node.loop.time() < deadline:
            await asyncio.sleep(0.005)
        return done()

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

    def connect_soon(self, name: str, address: tuple[str, int] | None = None) -> None:
        """Connect in the background (mesh completion, discovery)."""
        if name == self.node.name or name in self.conns or name in self.pending:
            return
        if address is not None:
            self.addresses[name] = address
        task = self.node.loop.create_task(self.connect(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        if peer.name in self.pending and self.node.name > peer.name:
            return False  # simultaneous connect: ours (from the greater name) wins
        return True

    def connection_established(self, conn: Connection) -> None:
        conn.set_link_limit(self.max_link_buffer)
        peer = conn.peer
        old = self.conns.get(peer.name)
        if old is not None and old is not conn:
            old.close("duplicate")
        self.conns[peer.name] = conn
        self.addresses[peer.name] = tuple(peer.address)  # type: ignore[assignment]
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
        log.info("node %s lost connection to %s: %s", self.node.name, peer.name, reason)
        self.node.node_down(peer.name)
        if not peer.hidden:
            self.node.notify_node_watchers(NodeDown(peer.name))
        # lost: the peer vanished. Not when we or it hung up, nor when *we* were the
        # frozen one (a SIGSTOP or a long stall): then our peers dropped us.
        lost = reason not in DELIBERATE_CLOSES and not self._recently_stalled()
        for listener in self.down_listeners:
            listener(peer.name, peer.creation, lost)

    # -- flow control ----------------------------------------------------------

    def link_statistics(self) -> dict[str, dict[str, Any]]:
        """Per peer: bytes queued on the link (ours + the transport's), whether
        the transport asked us to stop writing, whether we stopped reading."""
        return {name: {"queued_bytes": conn.queued_bytes(), "paused": conn.statistics().paused,
                       "reading_paused": conn.reading_paused, "max_link_buffer": self.max_link_buffer}
                for name, conn in self.conns.items()}

    async def drain(self, name: str | None = None) -> None:
        """Until the link to ``name`` (each link if None) is below its low-water mark."""
        if name is not None:
            conn = self.conns.get(name)
            if conn is not None:
                await conn.drain()
            return
        for conn in list(self.conns.values()):
            await conn.drain()

    def _backlog(self, queued: int) -> None:
        """The node's mailboxes hold ``queued`` messages (told by its periodic scan).
        Above the high-water mark (the node's ``mailbox_warning``: what it already
        calls too many queued), stop reading the links that fed a quarter or more
        of what arrived since the last scan, so the senders' link buffers take the
        pressure instead of our memory; calls and replies on the other links keep
        flowing. Reading resumes below half the mark. The proxy (a link's frames
        since the last scan) stands for "the mailboxes it fed", which the runtime
        cannot track without a cost on every delivery."""
        high = self.node.config.mailbox_warning if self.node.config is not None else 100_000
        seen, self._frames_seen = self._frames_seen, {}
        fed: dict[Connection, int] = {}
        for conn in self.conns.values():
            frames = conn.statistics().frames_in
            self._frames_seen[conn] = frames
            fed[conn] = frames - seen.get(conn, 0)
        if queued < high // 2:
            for conn in self.conns.values():
                if conn.reading_paused:
                    log.info("node %s resumes reading %s: %d messages queued", self.node.name, conn.peer.name,
                             queued)
                    conn.resume_reading()
            return
        if queued <= high:
            return
        total = sum(fed.values())
        for conn, frames in fed.items():
            if total and frames * 4 >= total and not conn.reading_paused:
                log.warning("node %s stops reading %s: %d messages queued in its mailboxes (high-water %d)",
                            self.node.name, conn.peer.name, queued, high)
                conn.pause_reading()

    def frame_received(self, conn: Connection, frame: Any) -> None:
        try:
            handler = self.handlers[frame[0]]
        except (KeyError, TypeError, IndexError):
            log.warning("dropping a malformed frame from %s: %r", conn.peer.name, type(frame).__name__)
            return
        handler(self, conn, frame)


# -- what each frame does on arrival ----------------------------------------

def of(node: Node) -> Distribution | None:
    """``node.dist`` as this module's ``Distribution``, for the layers above
    (pg, pubsub, the cluster tools): the runtime sees only its own protocol."""
    return cast("Distribution | None", node.dist)


async def drain(node: str | None = None, *, timeout: float | None = None) -> None:
    """Wait until the link to ``node`` (every link if None) is below its low-water
    mark: cooperative backpressure for a fast publisher, like ``StreamWriter.drain``.
    ``TimeoutError`` after ``timeout`` seconds. Returns at once for an unknown or
    unconnected node, or on a node without distribution."""
    from ..runtime.lowlevel import current_node

    if node is not None and not isinstance(node, str):
        raise TypeError(f"drain(node=) takes a node name or None, not {type(node).__name__}")
    dist = of(current_node())
    if dist is None:
        return
    if timeout is None:
        await dist.drain(node)
    else:
        await asyncio.wait_for(dist.drain(node), timeout)


def statistics() -> dict[str, Any]:
    """This node's statistics: ``Node.statistics()`` (processes, queued messages,
    the deepest mailboxes and dropped counts) plus ``"links"``, per peer: the
    bytes queued on the link and whether it is paused either way."""
    from ..runtime.lowlevel import current_node

    node = current_node()
    stats = node.statistics()
    dist = of(node)
    stats["links"] = dist.link_statistics() if dist is not None else {}
    return stats


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
    else:
        error = frame_error
    raise error from error.__cause__


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


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def start(node: Node, config: NodeConfig) -> Distribution:
    """Start distribution for ``node``: resolve the cookie and listen on ``host:port``.

    ``config.peers``: the static discovery strategy, addresses that this node
    connects to and keeps reconnecting to."""
    host, port, hidden, listen, peers = config.host, config.port, config.hidden, config.listen, config.peers
    if listen and not is_loopback(host):
        resolved = resolve_cookie(config.cookie, create=False)
    else:
        resolved = resolve_cookie(config.cookie)
    if listen and not is_loopback(host) and resolved.source == "generated":
        raise HermesError(f"refusing to listen on {host} with a cookie made up just now: other machines "
                          "cannot know it. Pass cookie=, set HERMES_COOKIE or write ~/.hermes/cookie.")
    dist = Distribution(node, resolved.value, hidden=hidden, tick_interval=config.tick_interval,
                        max_frame=config.max_frame, connect_timeout=config.connect_timeout,
                        max_link_buffer=config.max_link_buffer, tls=config.tls)
    node.dist = dist
    if listen:
        try:
            await dist.listen(host, port)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {_strerror(exc)}: choose another "
                          "port (0: any free one) or stop the process that holds it") from exc
    else:
        dist.local = PeerInfo(node.name, node.creation, (host, 0), hidden)
    if peers:
        dist.keep_connected(list(peers))
    return dist


__all__ = ["Distribution", "drain", "start", "statistics"]

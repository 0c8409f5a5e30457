"""The mesh adapter, built the way Phoenix.PubSub's PG2 adapter is built.

- ``broadcast`` pickles one ``("f", name, topic, msg, exclude)`` frame (name
  ``None`` for the default PubSub: 15 bytes and a string less to pickle and
  unpickle, ~3% of the publisher's work and ~7% of the receiver's) and has
  the mesh write those same bytes once to every other node that has a member
  in the group ``("hermes", name)`` (the mesh's ``multicast``, bound once
  as ``Distribution.sender`` and asked again when pg's members or the
  mesh's links change).
- This module registers the ``f`` frame's handler with the node's
  distribution: it hands the frame to the PGServer of that name, queued as
  ``(FORWARD, topic, msg, exclude)`` if that one is busy, which fans it out to
  its own node's subscribers: a publish of a 20 kB message to 200 subscribers
  on another node writes about 20 kB, not 200 copies, and is pickled once
  however many nodes there are.

If the message cannot be pickled, ``broadcast`` raises ``SerializationError``
before any node receives it.
"""
from __future__ import annotations

from pickle import dumps as _pickle_dumps
from typing import Any, Callable

from .._errors import SerializationError
from ..mesh import of as dist_of
from ..runtime import Pid
from ..runtime import lowlevel
from ..transport import NAMES_A_GLOBAL, PROTOCOL, dumps, dumps_rest
from ._adapter import DEFAULT, Adapter, fan_out, instances, log

FORWARD = "hermes.pubsub.forward"  # tags a forward waiting in a PGServer's mailbox
_FAILED = bytes([NAMES_A_GLOBAL])  # broadcast's pickle raised (it contains the opcode: one test for both cases)


class PGServer(Adapter):
    """The mesh adapter: receives remote publishes and fans them out locally."""

    def __init__(self, name: str, registry_name: str) -> None:
        self._remote: tuple[str, ...] = ()  # see remote_nodes
        self._generation = -1  # pg's generation ``_remote`` was derived at
        self._send: Callable[[bytes], Any] | None = None  # the mesh's sender to the remote nodes
        # pg's generation ``_send`` was bound at (not ``_generation``); -1 when a
        # connection came or went (``_watch_links``: the sender binds connections)
        self._send_generation = -1
        super().__init__(name, registry_name)
        self.wire_name = None if name == DEFAULT else name  # our name in our frames
        self.dist = dist_of(self.node)
        self.mesh: Any = self.dist if self.dist is not None else _Offline
        self.max_frame = self.mesh.max_frame
        # read by every forward from another node: the process that queues one
        # when it must wait, and the registry's ready (pid, deliver) pairs (if the
        # registry restarts, so does this server: rest_for_one)
        self.mesh_proc = lowlevel.process_of_actor(self)
        self.delivery = self.registry.delivery
        if self.dist is not None:  # our frame: one handler for the node's PGServers
            self.dist.register_frame("f", _forward_handler(instances()))
            lowlevel.layer_state("pubsub.links", lambda: _watch_links(self.dist, instances()))

    def remote_nodes(self) -> tuple[str, ...]:
        """The other nodes with a member in our group.

        Recomputed only when pg's generation moved: pg bumps it whenever a
        member or a node's visibility (its connection) changes, and when its
        scope restarts. (``broadcast`` makes the same check inline.)"""
        wiring = self.pg
        if wiring.generation != self._generation:
            scope = wiring.scope
            if scope is None or self.dist is None:  # pg is restarting: no remote member is known
                self._remote = ()
            else:
                here, conns = self.node.name, self.dist.conns
                self._remote = tuple({pid[0] for pid in scope.members_view(self.group)
                                      if pid[0] != here and pid[0] in conns})
            self._generation = wiring.generation
        return self._remote

    def broadcast(self, topic: Any, msg: Any, exclude: Pid | None) -> None:
        # The publish hot path, flat (``_frame`` inline, the mesh's sender bound
        # until pg's members or the mesh's links change; the links told by
        # ``_watch_links``, not tested here): each call saved is ~5% of a remote publish.
        if self._send_generation != self.pg.generation:
            self._bind_sender()
        send = self._send
        if send is not None:
            # Pickled once, before anyone gets it; flat: ~15% faster than a nested
            # tuple. ``transport.dumps`` inline: a pickle naming no global is its
            # answer as it is (a call less).
            try:
                payload = _pickle_dumps(("f", self.wire_name, topic, msg, exclude), PROTOCOL)
            except Exception:  # the error, or cloudpickle's success, is dumps's: below
                payload = _FAILED
            if NAMES_A_GLOBAL in payload:  # so is _FAILED: the rare case, one test
                payload = self._pickled(("f", self.wire_name, topic, msg, exclude), msg, payload)
            try:
                send(payload)
            except SerializationError:  # over max_frame: the sender checks before it writes anything
                raise self._too_big(payload, msg) from None

    def _pickled(self, frame: tuple[Any, ...], msg: Any, plain: bytes | None = None) -> bytes:
        """``transport.dumps(frame)``, or its rest given ``plain``, the frame's plain
        pickle (``_FAILED``: that raised); an error names the message's own type."""
        try:
            if plain is None:
                return dumps(frame)
            return dumps_rest(None if plain is _FAILED else plain, frame)
        except SerializationError:
            dumps(msg)  # raise naming the message's own type, not our tuple's
            raise

    def _bind_sender(self) -> None:
        """``_send``: the mesh's sender to the other nodes of our group, as they
        are now (the members derived afresh: a link may have come first). Its own
        generation, not ``remote_nodes``'s: ``direct_broadcast`` moves that one."""
        self._generation = -1
        self._send_generation = self.pg.generation
        self._send = self.mesh.sender(self.remote_nodes())

    def direct_broadcast(self, node: str, topic: Any, msg: Any, exclude: Pid | None) -> None:
        remote = self._remote if self._generation == self.pg.generation else self.remote_nodes()
        if node in remote:
            self.dist.multicast((node,), self._frame(topic, msg, exclude))  # type: ignore[union-attr]

    def _frame(self, topic: Any, msg: Any, exclude: Pid | None) -> bytes:
        """The one pickled frame of a publish, checked before any node gets it:
        an unpicklable or oversized message raises here (``publish`` checked the topic)."""
        payload = self._pickled(("f", self.wire_name, topic, msg, exclude), msg)
        if len(payload) > self.max_frame:
            raise self._too_big(payload, msg)
        return payload

    def _too_big(self, payload: bytes, msg: Any) -> SerializationError:
        return SerializationError(type(msg).__qualname__,
                                  f"{len(payload):,} bytes pickled is more than max_frame ({self.max_frame:,})")

    def handle_info(self, msg: Any) -> None:
        if type(msg) is tuple and len(msg) == 4 and msg[0] == FORWARD:
            _, topic, message, exclude = msg
            fan_out(self.registry, topic, message, exclude)
        else:
            super().handle_info(msg)


class _Offline:
    """The mesh of a node without distribution: no other node, ever."""

    max_frame = 0

    @staticmethod
    def sender(nodes: Any) -> None:
        return None


def _watch_links(dist: Any, servers: dict[str, Any]) -> Callable[..., None]:
    """Once per node (its pubsub layer state): when a connection comes or goes
    (the mesh's ``links`` moves, then it tells its node up/down listeners),
    every PGServer's sender is stale, even if pg's generation did not move (a
    link may come before pg knows of a member there). Told, not tested on every
    publish."""

    def stale(*_: Any) -> None:
        for server in servers.values():
            if isinstance(server, PGServer):
                server._send_generation = -1

    dist.on_node_up(stale)
    dist.on_node_down(stale)
    return stale


def _forward_handler(servers: dict[str, Any]) -> Callable[[Any, Any, tuple[Any, ...]], None]:
    """The node's handler of ``("f", name, topic, msg, exclude)`` frames: a
    publish from another node for our PGServer of PubSub ``name`` (``None``: the
    default one; none running here: dropped).

    With nothing queued before it, the forward is fanned out at once, as the
    PGServer's next message would be; otherwise it waits its turn in that
    mailbox as ``(FORWARD, topic, msg, exclude)``, so order is kept. (The rule
    of ``ActorProcess.deliver_now``, without its drain: a fan-out needs no
    handler dispatch, and this is the remote publish's hot path.)"""

    misconfigured: set[str] = set()

    def on_forward(dist: Any, conn: Any, frame: tuple[Any, ...]) -> None:
        _, name, topic, msg, exclude = frame
        server: Any = servers.get(name or DEFAULT)
        try:
            proc = server.mesh_proc  # only a PGServer has one: no isinstance on the hot path
        except AttributeError:  # none (dropped), or another adapter here (said once)
            name = name or DEFAULT
            if server is not None and name not in misconfigured:
                misconfigured.add(name)
                log.warning("mesh publishes for PubSub %s arrive from %s, but it goes through another adapter "
                            "here: dropped (give every node the same pubsub_url)", name, conn.peer.name)
            return
        if proc.scheduled or proc.mailbox:
            proc.deliver((FORWARD, topic, msg, exclude))
            return
        targets = server.delivery.get(topic)
        if targets is not None and exclude is None:  # fan_out's common case, inline: ~5% of the path
            for _, deliver in targets:
                deliver(msg)
        else:
            fan_out(server.registry, topic, msg, exclude)

    return on_forward

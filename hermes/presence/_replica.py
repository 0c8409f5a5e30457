"""The presence replica: this node's view of every presence in the cluster.

Each node owns its local entries and tells its peers about them over the mesh,
as Phoenix.Tracker's shards do, but without a CRDT: a mesh link delivers in
order, so a peer's view of our entries is exact if it starts from a full copy
when the link comes up and then applies our changes in order.

- Local ``track``/``untrack``/``update`` (and an actor's exit, through the exit
  hook) change the local table at once, publish their ``Diff`` to this node's
  subscribers at once, and queue one small op; the queue goes out as one
  ``("pr_delta", ops)`` frame per peer once per loop turn (``flush``).
- A link comes up: both sides flush, then send ``("pr_sync", local topics)``,
  the whole local table. The receiver replaces that node's table with it, so a
  node that comes back after a netsplit shows as joins, never as duplicates.
- A link goes (crash, netsplit, ``disconnect``, a peer's stop): that node's
  table is dropped at once, one leave per entry. A peer's table is tagged with
  the creation of the link it came on: a restarted node (new incarnation)
  replaces the old one's link, so the old entries go before the new ones come.
- The replica goes (its actor stops or crashes): it flushes and sends
  ``("pr_sync", {})`` (its peers drop our entries at once: a graceful stop
  replicates its leaves before the links close), and the local subscribers see
  every entry leave. A restarted replica starts empty, as a restarted pg scope
  does, and asks each peer for its entries again (``("pr_hello",)``).

Diffs are published only locally, by each node for the changes its own
replica applies: a subscriber on any node sees exactly the changes of the
replica that its ``list`` reads, once each, and no diff crosses the mesh.

It knows the mesh's seams (frames, node up/down) and pubsub's local
broadcast, nothing of pg: presence works with or without the pg service.
"""
from __future__ import annotations

import builtins
import logging
from typing import Any

from .. import pubsub, registry
from .._errors import HermesError, SerializationError
from ..mesh import of as dist_of
from ..runtime import Actor, register
from ..runtime import lowlevel
from ..runtime.lowlevel import Node, Process
from ._table import MISSING, Changes, Diff, Table

log = logging.getLogger("hermes.presence")
NAME = "hermes.presence"
CHUNK = 20_000  # ops per delta frame: a burst of tracks never makes one huge frame


class Wiring:
    """Presence's per-node state (``node.layers["presence"]``), kept across
    restarts of the actor: the live replica, ``None`` while it restarts."""

    def __init__(self) -> None:
        self.replica: Replica | None = None
        self.actor: Presence | None = None


class Replica:
    """The tables of this node and of each connected peer, and the outgoing queue."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.local = Table(node.creation)
        self.remote: dict[str, Table] = {}  # peer name -> its current incarnation's entries
        self.by_pid: dict[int, Any] = {}  # local pid id -> (topic, key), or a list of them
        self.peers: set[str] = set()  # nodes that have our table and get our deltas
        self.pending: list[tuple[Any, ...]] = []  # ops for the peers, sent once per loop turn
        self.flush_handle: Any = None
        # The topics with subscribers here: the keys of the default PubSub's registry,
        # read directly, as pubsub's fan-out does. That registry is started before
        # us: if it restarts, so do we (rest_for_one), and we read the new one.
        self.watched = registry.get_registry(registry.DEFAULT).table
        self.closed = False

    # -- reads ----------------------------------------------------------------

    def list(self, topic: Any) -> dict[Any, list[Any]]:
        out: dict[Any, list[Any]] = {}
        self.local.metas_into(topic, out)
        for table in self.remote.values():
            table.metas_into(topic, out)
        return out

    @staticmethod
    def broadcast(topic: Any, diff: Diff) -> None:
        try:
            pubsub.broadcast_local(topic, diff)
        except HermesError:  # the PubSub is restarting (node stop, crash): no one to tell
            log.debug("presence diff of %r not published: the PubSub is not running", topic)

    # -- local writes (O(1) here, one op for the peers) -----------------------

    def track(self, pid_id: int, topic: Any, key: Any, meta: Any) -> bool:
        """The hot path (flat: each call saved is ~5% of a track)."""
        if not self.local.add(topic, key, pid_id, meta):
            return False
        by_pid = self.by_pid
        found = by_pid.get(pid_id)
        if found is None:
            by_pid[pid_id] = (topic, key)
        elif type(found) is list:
            found.append((topic, key))
        else:
            by_pid[pid_id] = [found, (topic, key)]
        if self.peers:
            self.pending.append((topic, key, pid_id, meta))
            if self.flush_handle is None:
                self.flush_handle = self.node.loop.call_soon(self.flush)
        if topic in self.watched:
            self.broadcast(topic, Diff(topic, {key: [meta]}, {}))
        return True

    def untrack(self, pid_id: int, topic: Any, key: Any) -> None:
        meta = self.local.remove(topic, key, pid_id)
        if meta is MISSING:
            return
        found = self.by_pid[pid_id]
        if type(found) is list:
            found.remove((topic, key))
            if len(found) == 1:
                self.by_pid[pid_id] = found[0]
        else:
            del self.by_pid[pid_id]
        if self.peers:
            self._queue((topic, key, pid_id))
        if topic in self.watched:
            self.broadcast(topic, Diff(topic, {}, {key: [meta]}))

    def update(self, pid_id: int, topic: Any, key: Any, meta: Any) -> bool:
        old = self.local.replace(topic, key, pid_id, meta)
        if old is MISSING:
            return False
        if self.peers:  # a leave and a join, as Phoenix's
            self._queue((topic, key, pid_id))
            self._queue((topic, key, pid_id, meta))
        if topic in self.watched:
            self.broadcast(topic, Diff(topic, {key: [meta]}, {key: [old]}))
        return True

    def actor_exited(self, pid_id: int) -> None:
        """Exit hook: every entry of a dead local actor leaves, at once."""
        found = self.by_pid.pop(pid_id, None)
        if found is None:
            return
        changes = Changes(self.watched)
        for topic, key in (found if type(found) is list else (found,)):
            meta = self.local.remove(topic, key, pid_id)
            if self.peers:
                self._queue((topic, key, pid_id))
            changes.leave(topic, key, meta)
        changes.publish(self.broadcast)

    def _queue(self, op: tuple[Any, ...]) -> None:
        self.pending.append(op)
        if self.flush_handle is None:
            self.flush_handle = self.node.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send the queued ops to every peer: one frame per peer per ``CHUNK`` ops."""
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        ops, self.pending = self.pending, []
        dist = dist_of(self.node)
        if not ops or dist is None or not self.peers:
            return
        for start in range(0, len(ops), CHUNK):
            try:
                dist.multicast(self.peers, ("pr_delta", ops[start:start + CHUNK]))
            except SerializationError:  # checked at track: a meta mutated since, say
                log.exception("presence ops could not be sent; peers will miss them until they reconnect")

    # -- the mesh -------------------------------------------------------------

    def node_up(self, name: str) -> None:
        """A peer connected: it gets our whole table, then our deltas."""
        self.flush()  # what is queued goes to the others; this one gets it in the table
        dist = dist_of(self.node)
        try:
            sent = dist is not None and dist.send_frame(name, ("pr_sync", self.local.topics))
        except SerializationError:  # past max_frame (millions of entries): the other layers still run
            log.exception("presence entries could not be sent to %s; it will not list ours", name)
            return
        if sent:
            self.peers.add(name)

    def node_down(self, name: str, creation: int) -> None:
        """A link is gone: that node's entries leave, one leave per entry."""
        self.peers.discard(name)
        table = self.remote.get(name)
        if table is None or table.creation != creation:
            return
        del self.remote[name]
        changes = Changes(self.watched)
        changes.leave_all(table)
        changes.publish(self.broadcast)

    def apply_sync(self, name: str, creation: int, topics: dict[Any, dict[Any, Any]]) -> None:
        changes = Changes(self.watched)
        old = self.remote.pop(name, None)
        if old is not None:
            changes.leave_all(old)
        table = self.remote[name] = Table(creation, topics)
        changes.join_all(table)
        changes.publish(self.broadcast)

    def apply_delta(self, name: str, creation: int, ops: builtins.list[tuple[Any, ...]]) -> None:
        table = self.remote.get(name)
        if table is None or table.creation != creation:
            return  # before its sync (we restarted and asked again): the sync has it all
        changes = Changes(self.watched)
        for op in ops:
            if len(op) == 4:
                topic, key, pid_id, meta = op
                if table.add(topic, key, pid_id, meta):
                    changes.join(topic, key, meta)
            else:
                topic, key, pid_id = op
                meta = table.remove(topic, key, pid_id)
                if meta is not MISSING:
                    changes.leave(topic, key, meta)
        changes.publish(self.broadcast)

    def hello(self, name: str) -> None:
        """A peer's replica restarted and asks for our entries again."""
        self.node_up(name)

    # -- the end --------------------------------------------------------------

    def close(self) -> None:
        """The replica goes: peers drop our entries now, local subscribers see all leave."""
        if self.closed:
            return
        self.closed = True
        self.flush()
        dist = dist_of(self.node)
        if dist is not None and self.peers:
            dist.multicast(self.peers, ("pr_sync", {}))
        changes = Changes(self.watched)
        for table in (self.local, *self.remote.values()):
            changes.leave_all(table)
        self.local, self.remote, self.by_pid, self.peers = Table(self.node.creation), {}, {}, set()
        changes.publish(self.broadcast)

    def statistics(self) -> dict[str, Any]:
        return {"local": self.local.count(), "remote": {n: t.count() for n, t in self.remote.items()},
                "peers": sorted(self.peers), "pending": len(self.pending)}


class Presence(Actor):
    """Owns the node's replica; registered as ``hermes.presence``, started under
    the node's system supervisor."""

    def __init__(self) -> None:
        register(NAME)
        node = lowlevel.current_node()
        wiring = node.layers.get("presence")
        restarted = wiring is not None
        if wiring is None:
            wiring = node.layers["presence"] = Wiring()
            _wire(node)
        self.replica = wiring.replica = Replica(node)
        wiring.actor = self
        dist = dist_of(node)
        if dist is not None:
            for name in dist.nodes():  # hidden nodes track nothing
                if restarted:  # our old entries are gone; theirs we must fetch again
                    dist.send_frame(name, ("pr_sync", {}))
                    dist.send_frame(name, ("pr_hello",))
                self.replica.peers.add(name)

    def terminate(self, reason: Any) -> None:
        self.replica.close()  # before the links close: peers drop our entries now

    def handle_info(self, msg: Any) -> None:
        pass


def _wire(node: Node) -> None:
    """Once per node: the exit hook, the frames and the node up/down listeners.
    Each looks the live replica up when it runs (none while it restarts)."""
    node.exit_hooks.append(_exit_hook)
    dist = dist_of(node)
    if dist is None:
        return

    def live(conn: Any) -> Replica | None:
        peer = conn.peer
        if peer is None or peer.hidden or dist.conns.get(peer.name) is not conn:
            return None  # a hidden node, or a straggler of a closed link
        return replica_of(node)

    def on_sync(_dist: Any, conn: Any, frame: tuple[Any, ...]) -> None:
        if (replica := live(conn)) is not None:
            replica.apply_sync(conn.peer.name, conn.peer.creation, frame[1])

    def on_delta(_dist: Any, conn: Any, frame: tuple[Any, ...]) -> None:
        if (replica := live(conn)) is not None:
            replica.apply_delta(conn.peer.name, conn.peer.creation, frame[1])

    def on_hello(_dist: Any, conn: Any, frame: tuple[Any, ...]) -> None:
        if (replica := live(conn)) is not None:
            replica.hello(conn.peer.name)

    def on_up(name: str, peer: Any) -> None:
        replica = replica_of(node)
        if replica is not None and not peer.hidden:
            replica.node_up(name)

    def on_down(name: str, creation: int, lost: bool) -> None:
        replica = replica_of(node)
        if replica is not None:
            replica.node_down(name, creation)

    dist.register_frame("pr_sync", on_sync)
    dist.register_frame("pr_delta", on_delta)
    dist.register_frame("pr_hello", on_hello)
    dist.on_node_up(on_up)
    dist.on_node_down(on_down)


def replica_of(node: Node) -> Replica | None:
    wiring: Wiring | None = node.layers.get("presence")
    return wiring.replica if wiring is not None else None


def get_replica() -> Replica:
    node = lowlevel.node_or_none()
    wiring = node.layers.get("presence") if node is not None else None
    replica = wiring.replica if wiring is not None else None
    if replica is None:
        lowlevel.current_node()  # NoNode if there is no node at all
        raise HermesError("presence is not running on this node (its actor is down or restarting)")
    return replica


def _exit_hook(proc: Process) -> None:
    """A dead local actor's entries leave at once; the presence actor's own end
    (even a ``kill``, which skips ``terminate``) closes its replica."""
    wiring: Wiring = proc.node.layers["presence"]
    replica = wiring.replica
    if replica is None:
        return
    if proc.pid[2] in replica.by_pid:
        replica.actor_exited(proc.pid[2])
    elif wiring.actor is not None and lowlevel.process_of_actor(wiring.actor) is proc:
        replica.close()
        wiring.replica = wiring.actor = None


def system_children() -> list[tuple[Any, ...]]:
    """The node's presence actor, for its system supervisor."""
    return [(Presence,)]

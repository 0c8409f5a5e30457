"""The pg scope: this node's replica of every process group in the cluster.

Local ``join``/``leave`` are applied at once (the caller runs on the node's
loop, as the scope does), sent to every connected node on the mesh (as
Erlang's pg does: one hop) and pushed to the pg service, the directory. Remote
changes come both ways: from the mesh, and from the service's change feed
through ``ServiceClient``, whose threads hand them to the loop with
``call_soon_threadsafe``. Every read is local.

Sequence numbers: each node numbers its own changes, 1, 2, ... per
incarnation (``Wiring.seq``, kept across scope restarts). A change carries
its number on the mesh (``pg_delta``) and to the service, whose events and
snapshots carry it back; a whole-state message (``pg_sync`` on a new
connection, the service's ``sync`` event, a snapshot) carries the number it
reflects. The replica keeps, per remote incarnation, the number its copy
reflects (``applied``); the rules, each race named where it is handled:

- a mesh delta applies only if it is the next number (``applied + 1``);
- a feed event applies only if its number is above ``applied``;
- a whole state replaces the copy only if its number is at least ``applied``.

Visibility rule: the members of another node count only while this node holds
a mesh connection to that node's current incarnation. So:
- a node whose connection drops vanishes from every group here at once,
  without waiting for its lease (a netsplit hides it; a reconnect shows it);
- updates from a stale incarnation never show: its creation does not match
  the connection's.

Empty groups are never listed: a group key exists only while it has members.
``monitor`` subscribers get ``Event(ref, kind, group, pids)``, one per batch.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from .._errors import HermesError
from ..mesh import of as dist_of
from ..runtime import Actor, Pid, Ref, register, send
from ..runtime import lowlevel
from ..runtime.lowlevel import Node
from ..runtime.lowlevel import Process
from ._event import Event
from ._remote import RemoteChanges

log = logging.getLogger("hermes.pg")
NAME = "hermes.pg"


_ALL = object()  # every group


class Wiring:
    """pg's per-node state (``node.layers["pg"]``): the live scope and how it
    talks to the cluster, kept outside the scope so a restarted one finds it
    (set by ``pg._start``)."""

    def __init__(self) -> None:
        self.scope: Scope | None = None  # None while the scope is down or restarting
        self.client: Any = None  # the ServiceClient, with a service
        self.over_mesh = False  # memberships also travel on the mesh (pg_sync/pg_delta/pg_hello)
        self.seq = 0  # the number of this node's newest membership change (this incarnation)
        self.resync_grace = 3.0  # seconds the feed is held after the service comes back
        # Bumped whenever the visible members of any group may have changed,
        # and when the scope comes or goes: whoever caches something derived
        # from members (pubsub's remote connections) compares it, one int.
        self.generation = 0
        # Called, each from its own loop callback, after a restarted scope has
        # started over (empty): layers whose actors must be members join again.
        self.after_restart: dict[Any, Callable[[], None]] = {}


class Scope(RemoteChanges, Actor):
    """Owns the replica; registered as ``hermes.pg``. Found by ``get_scope()``.

    Started under the node's system supervisor. A restarted scope starts empty,
    as Erlang's does: the local memberships died with the old one (the cluster
    is told they left) and the remote ones are fetched again."""

    def __init__(self) -> None:
        register(NAME)
        self.node: Node = lowlevel.current_node()
        restarted = "pg" in self.node.layers
        if not restarted:
            self.node.layers["pg"] = Wiring()
            self.node.exit_hooks.append(_exit_hook)
        self.wiring: Wiring = self.node.layers["pg"]
        self.local: dict[Any, list[Pid]] = {}  # group -> local members (duplicates kept)
        self.local_groups_of: dict[Pid, list[Any]] = {}  # pid -> its groups (one per membership)
        self.remote: dict[str, tuple[int, dict[Any, list[Pid]]]] = {}  # node -> (creation, buckets)
        self.applied: dict[str, int | None] = {}  # node -> the number its copy reflects (None: unknown)
        self.outbox: list[tuple[str, Any, list[Pid], int]] = []  # numbered changes for the mesh, this step
        self.cache: dict[Any, list[Pid]] = {}  # group -> all visible members
        self.monitors: dict[Ref, tuple[Pid, Any]] = {}  # ref -> (watcher, group)
        self.monitors_of: dict[Pid, set[Ref]] = {}  # watcher -> its refs, dropped when it exits
        self.service_lost = False
        self.held: list[tuple[str, Any]] | None = None  # feed items held while nodes resync
        self.quiet = False  # applying held items: monitors get the net difference after
        self.wiring.scope = self
        self.wiring.generation += 1
        if restarted:
            self._start_over()

    def _start_over(self) -> None:
        """After a restart: tell the cluster our local members left, fetch the
        rest; then the ``after_restart`` hooks run."""
        for hook in list(self.wiring.after_restart.values()):
            self.node.loop.call_soon(hook)
        client, dist, wiring = self.wiring.client, dist_of(self.node), self.wiring
        if client is not None:
            # race: the old scope's members are in the service: they leave, numbered as usual
            wiring.seq += client.reset_local(wiring.seq + 1)
            client.resync()
        else:
            wiring.seq += 1  # the empty state below is a new state: a new number
        if wiring.over_mesh and dist is not None:
            peers = dist.nodes()  # hidden nodes are in no group
            dist.multicast(peers, ("pg_sync", {}, wiring.seq))  # nothing here as of the leaves above
            dist.multicast(peers, ("pg_hello",))  # each peer answers with its pg_sync

    # -- reads ----------------------------------------------------------------

    def members(self, group: Any) -> list[Pid]:
        cached = self.cache.get(group)
        if cached is None:
            cached = list(self.local.get(group, ()))
            for name, (creation, buckets) in self.remote.items():
                if group in buckets and self._visible(name, creation):
                    cached.extend(buckets[group])
            self.cache[group] = cached
        return list(cached)

    def members_view(self, group: Any) -> list[Pid]:
        """``members`` without the copy, for the publish path: do not mutate it."""
        cached = self.cache.get(group)
        return cached if cached is not None else self.members(group)

    def groups(self) -> list[Any]:
        found = dict.fromkeys(self.local)
        for name, (creation, buckets) in self.remote.items():
            if self._visible(name, creation):
                found.update(dict.fromkeys(buckets))
        return list(found)

    def _visible(self, name: str, creation: int) -> bool:
        dist = dist_of(self.node)
        return dist is not None and dist.connected(name) and dist.peer_creation(name) == creation

    # -- local writes ---------------------------------------------------------

    def join(self, group: Any, pids: list[Pid]) -> None:
        for pid in pids:
            if type(pid) is not Pid:
                raise TypeError(f"pg members are pids, not {type(pid).__name__}")
            if pid[0] != self.node.name:
                raise ValueError(f"cannot join {pid} to {group!r}: it is not a local pid")
        live = [pid for pid in pids if pid in self.node.procs]
        if not live:
            return
        self.local.setdefault(group, []).extend(live)
        for pid in live:
            self.local_groups_of.setdefault(pid, []).append(group)
        self._changed(group, "join", live)
        self._push([("join", group, live)])

    def leave(self, group: Any, pids: list[Pid]) -> bool:
        members = self.local.get(group)
        if not members:
            return False
        left = []
        for pid in pids:
            if pid in members:
                members.remove(pid)
                self.local_groups_of[pid].remove(group)
                if not self.local_groups_of[pid]:
                    del self.local_groups_of[pid]
                left.append(pid)
        if not members:
            del self.local[group]
        if not left:
            return False
        self._changed(group, "leave", left)
        self._push([("leave", group, left)])
        return True

    def _actor_exited(self, proc: Process) -> None:
        """Exit hook: a dead local actor leaves all its groups at once (and its monitors go)."""
        refs = self.monitors_of.pop(proc.pid, None)
        if refs:
            for ref in refs:
                self.monitors.pop(ref, None)
        groups = self.local_groups_of.pop(proc.pid, None)
        if not groups:
            return
        changes = []
        for group in dict.fromkeys(groups):
            members = self.local[group]
            count = members.count(proc.pid)
            self.local[group] = members = [p for p in members if p != proc.pid]
            if not members:
                del self.local[group]
            self._changed(group, "leave", [proc.pid] * count)
            changes.append(("leave", group, [proc.pid] * count))
        self._push(changes)

    def _push(self, changes: list[tuple[str, Any, list[Pid]]]) -> None:
        wiring = self.wiring
        first = wiring.seq + 1
        wiring.seq += len(changes)
        numbered = [(kind, group, pids, first + i) for i, (kind, group, pids) in enumerate(changes)]
        if wiring.over_mesh:
            if not self.outbox:
                self.node.loop.call_soon(self._flush_outbox)
            self.outbox.extend(numbered)
        if wiring.client is not None:
            wiring.client.push(numbered)

    def _flush_outbox(self) -> None:
        """The changes of one loop step as one ``pg_delta`` per peer, pickled once.
        race: a link that came up since: its ``pg_sync`` had them already; there they are skipped."""
        outbox, self.outbox = self.outbox, []
        dist = dist_of(self.node)
        if outbox and dist is not None:
            peers = dist.nodes()  # hidden nodes are in no group
            if peers:
                dist.multicast(peers, ("pg_delta", outbox))

    # -- membership over the mesh, as Erlang's pg (with or without a service) --

    def mesh_connected(self, name: str, peer: Any) -> None:
        """A new connection: send it our whole local membership and its number."""
        dist = dist_of(self.node)
        if not peer.hidden and dist is not None:
            dist.send_frame(name, ("pg_sync", self.local_snapshot(), self.wiring.seq))

    def mesh_sync(self, conn: Any, frame: tuple[Any, ...]) -> None:
        peer = conn.peer
        if peer.hidden:
            return  # hidden nodes are in no group
        # race: a link that comes up between a push and its feed event: the feed event is at or below this number
        self._rebase(peer.name, peer.creation, frame[1], frame[2] if len(frame) > 2 else None)

    def mesh_hello(self, conn: Any, frame: tuple[Any, ...]) -> None:
        """A peer's scope restarted and asks for our memberships again."""
        self.mesh_connected(conn.peer.name, conn.peer)

    def mesh_delta(self, conn: Any, frame: tuple[Any, ...]) -> None:
        peer = conn.peer
        if peer.hidden:
            return
        name, creation = peer.name, peer.creation
        known = self.remote.get(name)
        if known is None or known[0] != creation:
            return  # race: the feed dropped or replaced it (node_down, newer creation): its sync re-bases
        for kind, group, pids, seq in frame[1]:
            applied = self.applied.get(name)
            if applied is None or seq > applied + 1:
                # race: a delta written before the pg_sync of a new link, or our copy came from a
                # snapshot of unknown number: the sync (or the feed) that follows covers it
                continue
            if seq <= applied:
                continue  # race: the feed delivered it first (the link was slower than the service)
            self.applied[name] = seq
            self._apply_membership(kind, name, creation, group, pids)

    def local_snapshot(self) -> dict[Any, list[Pid]]:
        return {group: list(members) for group, members in self.local.items()}

    # -- monitors -------------------------------------------------------------

    def monitor(self, watcher: Pid, group: Any) -> tuple[Ref, list[Pid]]:
        ref = self.node.make_ref()
        self.monitors[ref] = (watcher, group)
        self.monitors_of.setdefault(watcher, set()).add(ref)
        return ref, self.members(group)

    def demonitor(self, ref: Ref) -> bool:
        entry = self.monitors.pop(ref, None)
        if entry is None:
            return False
        refs = self.monitors_of.get(entry[0])
        if refs is not None:
            refs.discard(ref)
            if not refs:
                del self.monitors_of[entry[0]]
        return True

    def _forget_members(self, group: Any = _ALL) -> None:
        """The visible members of ``group`` (default: of every group) changed."""
        if group is _ALL:
            self.cache.clear()
        else:
            self.cache.pop(group, None)
        self.wiring.generation += 1

    def _changed(self, group: Any, kind: str, pids: list[Pid]) -> None:
        self._forget_members(group)
        if self.quiet or not self.monitors:
            return
        for ref, (watcher, watched) in list(self.monitors.items()):
            if watched == group:
                if watcher not in self.node.procs:
                    del self.monitors[ref]
                    continue
                send(watcher, Event(ref, kind, group, list(pids)))

    def handle_info(self, msg: Any) -> None:
        pass


def get_scope() -> Scope:
    scope = current_scope(lowlevel.current_node())
    if scope is None:
        raise HermesError("pg is not running on this node (its scope is down or restarting)")
    return scope


def current_scope(node: Node) -> Scope | None:
    """The live scope of ``node``, or None while it is down (for callbacks)."""
    wiring: Wiring | None = node.layers.get("pg")
    return wiring.scope if wiring is not None else None


def _exit_hook(proc: Process) -> None:
    """The node's exit hook for pg: a dead local actor leaves its groups at once;
    the scope's own death leaves the node without a scope until it restarts."""
    wiring: Wiring = proc.node.layers["pg"]
    scope = wiring.scope
    if scope is None:
        return
    if lowlevel.process_of_actor(scope) is proc:
        wiring.scope = None
        wiring.generation += 1
        return
    scope._actor_exited(proc)



"""Remote changes to the pg replica: from the service's feed (events, snapshots,
held while nodes resync after a service restart) and from the mesh (a peer's
whole state), applied under the numbering and visibility rules of ``_scope``.

A mixin of ``Scope``: it uses the replica's tables (``remote``, ``applied``,
``cache``, ...) and its ``_changed``/``_forget_members`` to tell monitors.
"""
from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any, Iterable

from ..mesh import of as dist_of
from ..runtime import Pid


class RemoteChanges:
    # the host's (``Scope``'s) state and methods this mixin uses
    node: Any
    wiring: Any
    remote: dict[str, Any]
    applied: dict[str, int | None]
    service_lost: bool
    held: list[tuple[str, Any]] | None
    quiet: bool

    if TYPE_CHECKING:
        def _visible(self, name: str, creation: int) -> bool: ...
        def _forget_members(self, group: Any = ...) -> None: ...
        def _changed(self, group: Any, kind: str, pids: list[Pid]) -> None: ...

    def apply_feed(self, kind: str, payload: Any) -> None:
        """One item of the service's feed (see ``ServiceClient``), on the loop.

        After the service comes back (a new session after a lost one), every
        live node re-registers and re-sends its memberships within a lease
        period. The feed's first answers are then partial: applied one by one
        they would show members leaving and joining again. So they are held
        for ``resync_grace`` seconds and applied at once, and monitors see
        only what really changed (usually nothing): soft state, no flapping."""
        if kind == "service_down":
            self.service_lost = True
        elif kind == "service_up":
            if self.service_lost and self.held is None:
                self.held = []
                self.node.loop.call_later(self.wiring.resync_grace, self._release_held)
            self.service_lost = False
        elif self.held is not None:
            self.held.append((kind, payload))
        else:
            self._apply_feed(kind, payload)

    def _release_held(self) -> None:
        held, self.held = self.held or [], None
        before = self._all_visible_groups()
        self.quiet = True
        try:
            for kind, payload in held:
                self._apply_feed(kind, payload)
        finally:
            self.quiet = False
        self._events_since(before)

    def _apply_feed(self, kind: str, payload: Any) -> None:
        if kind == "snapshot":
            self._apply_snapshot(*payload)
        elif kind == "events":
            for event in payload:
                self._apply_event(event)

    def _apply_snapshot(self, nodes: dict[str, tuple[int, Any]], buckets: dict[tuple[str, int], Any],
                        seqs: dict[tuple[str, int], int] | None = None) -> None:
        before = self._all_visible_groups()
        listed = set()
        for (name, creation), groups in buckets.items():
            if name != self.node.name and nodes.get(name, (None,))[0] == creation:
                listed.add(name)
                seq = seqs.get((name, creation)) if seqs is not None else None
                self._rebase(name, creation, groups, seq, quiet=True)
        for name in list(self.remote):
            if name not in listed and not (self.wiring.over_mesh and self._visible(name, self.remote[name][0])):
                # race: a restarted service lists nodes only once they re-register; one we
                # hear on the mesh stays exact meanwhile (its deltas follow its pg_sync)
                self.remote.pop(name)
                self.applied.pop(name, None)
        self._events_since(before)
        self._discover(nodes)

    def _rebase(self, name: str, creation: int, groups: dict[Any, list[Pid]], seq: int | None,
                quiet: bool = False) -> None:
        """A whole state of ``name``'s incarnation ``creation`` as of change ``seq``."""
        known = self.remote.get(name)
        if known is not None:
            if known[0] > creation:
                return  # race: a stale incarnation's state arrives after the newer one's
            applied = self.applied.get(name)
            if known[0] == creation and applied is not None:
                if seq is None:
                    return  # race: a snapshot between its register and its sync (no number yet): ours is exact
                if seq < applied:
                    return  # race: an older state than ours (the snapshot was taken before a delta we applied)
        entry = (creation, {g: list(m) for g, m in groups.items() if m})
        self.applied[name] = seq
        if quiet:
            self.remote[name] = entry
        else:
            self._replace_node(name, entry)

    def _all_visible_groups(self) -> dict[str, dict[Any, list[Pid]]]:
        return {name: self._visible_groups(name) for name in self.remote}

    def _events_since(self, before: dict[str, dict[Any, list[Pid]]]) -> None:
        """After a bulk change of ``remote``: the net join/leave events per node."""
        self._forget_members()
        for name in set(before) | set(self.remote):
            self._diff_events(before.get(name, {}), self._visible_groups(name))

    def _apply_event(self, event: tuple[Any, ...]) -> None:
        kind, name, creation = event[0], event[1], event[2]
        if name == self.node.name:
            return
        if kind == "node_up":
            known = self.remote.get(name)
            if known is None or known[0] < creation:  # race: an old node_up read after the mesh met a newer one
                self.applied[name] = None  # its sync event follows
                self._replace_node(name, (creation, {}))
            self._discover({name: (creation, event[3])})
        elif kind == "node_down":
            known = self.remote.get(name)
            if known is not None and known[0] == creation:
                self._replace_node(name, None)
        elif kind == "sync":
            self._rebase(name, creation, event[3], event[4])
        elif kind == "changes":  # a packed run of numbered joins/leaves (``Directory.changes(seqs=True)``)
            known = self.remote.get(name)
            applied = self.applied.get(name) if known is not None and known[0] == creation else None
            if applied is not None and event[4] <= applied:
                return  # race: the mesh delivered them all first (the one hop this is for): not even decoded
            for change_kind, group, pids, seq in pickle.loads(event[5]):
                self._apply_event((change_kind, name, creation, group, pids, seq))
        elif kind in ("join", "leave"):
            if len(event) > 5:
                known = self.remote.get(name)
                applied = self.applied.get(name) if known is not None and known[0] == creation else None
                if applied is not None:
                    if event[5] <= applied:
                        return  # race: the mesh delivered it first (the one hop this is for)
                    self.applied[name] = event[5]
                # else: a copy of unknown number (or a newer incarnation met here first): applied as it
                # comes, and its number stays unknown until a whole state (sync, snapshot) re-bases it
            self._apply_membership(kind, name, creation, event[3], event[4])

    def _apply_membership(self, kind: str, name: str, creation: int, group: Any, pids: list[Pid]) -> None:
        known = self.remote.get(name)
        if known is None or known[0] < creation:
            self._replace_node(name, (creation, {}))
            known = self.remote[name]
            self.applied[name] = None  # a new incarnation's copy, of unknown number
        elif known[0] != creation:
            return  # a stale incarnation's update
        buckets = known[1]
        if kind == "join":
            buckets.setdefault(group, []).extend(pids)
        else:
            members = buckets.get(group, [])
            for pid in pids:
                if pid in members:
                    members.remove(pid)
            if not members:
                buckets.pop(group, None)
        if self._visible(name, creation):
            self._changed(group, kind, pids)

    def _replace_node(self, name: str, entry: tuple[int, dict[Any, list[Pid]]] | None) -> None:
        before = self._visible_groups(name)
        if entry is None:
            self.remote.pop(name, None)
            self.applied.pop(name, None)
        else:
            self.remote[name] = entry
        self._forget_members()
        self._diff_events(before, self._visible_groups(name))

    def _visible_groups(self, name: str) -> dict[Any, list[Pid]]:
        entry = self.remote.get(name)
        if entry is None or not self._visible(name, entry[0]):
            return {}
        return {group: list(pids) for group, pids in entry[1].items()}

    def visibility_changed(self, name: str, was: dict[Any, list[Pid]]) -> None:
        """A mesh connection to ``name`` came or went: re-derive its groups."""
        self._forget_members()
        self._diff_events(was, self._visible_groups(name))

    def _diff_events(self, before: dict[Any, list[Pid]], after: dict[Any, list[Pid]]) -> None:
        for group in set(before) | set(after):
            old, new = before.get(group, []), after.get(group, [])
            gone = _minus(old, new)
            came = _minus(new, old)
            if gone:
                self._changed(group, "leave", gone)
            if came:
                self._changed(group, "join", came)

    def _discover(self, nodes: dict[str, tuple[int, Any]]) -> None:
        dist = dist_of(self.node)
        if dist is None or getattr(dist, "hidden", False):
            return
        for name, (_creation, address) in nodes.items():
            if name != self.node.name and address is not None:
                dist.connect_soon(name, tuple(address), in_turn=True)


def _minus(a: Iterable[Pid], b: list[Pid]) -> list[Pid]:
    rest = list(b)
    out = []
    for pid in a:
        if pid in rest:
            rest.remove(pid)
        else:
            out.append(pid)
    return out

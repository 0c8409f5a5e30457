"""Presence: who is here, cluster-wide, as Phoenix.Presence / Phoenix.Tracker.

    presence.track("room:lobby", "alice", {"status": "online"})   # in an actor
    presence.list("room:lobby")   # {"alice": [{"status": "online"}], ...}, every node's
    hermes.subscribe("room:lobby")   # then presence.Diff(topic, joins, leaves) messages

An actor (or a local ``pid=``) is present under a key in a topic until it
untracks or exits; its node's replica tells the others (``_replica``). Reads
are local. Each change reaches the topic's subscribers on every node as a
``Diff``, published on the PubSub topic itself: an update is a leave and a
join; a node that goes (crash, netsplit, stop) leaves with all its entries,
one leave per entry, and comes back as joins.

Within a key, the order of the metas is unspecified; a diff's ``leaves`` are
metas of the state before it (compare metas by equality), so a subscriber
that applies each diff's leaves and joins to the ``list`` it read before
its first diff always holds the current ``list``.
"""
from __future__ import annotations

from typing import Any

from .._errors import NotInActor
from ..runtime import Pid
from ..runtime import lowlevel
from ..transport import dumps
from ._replica import NAME, Presence, Replica, get_replica, system_children
from ._table import Diff

__all__ = ["Diff", "NAME", "Presence", "Replica", "list", "system_children", "track", "untrack", "update"]

_PLAIN = frozenset({str, int, float, bool, bytes, type(None)})  # always picklable: no check needed


_current = lowlevel.current  # the calling actor's process (a ContextVar), read on every track


def _owner(pid: Pid | None, what: str) -> Pid:
    """The local live actor that owns the entry: the caller, or ``pid``."""
    if pid is None:
        proc = _current.get()
        if proc is None:
            raise NotInActor(f"presence.{what} without pid= must be called by an actor; pass pid= otherwise")
        return proc.pid
    if type(pid) is not Pid:
        raise TypeError(f"pid must be a Pid, not {type(pid).__name__}")
    node = lowlevel.current_node()
    if pid[0] != node.name:
        raise ValueError(f"cannot {what} {pid}: it is not a local pid (call presence.{what} on {pid[0]})")
    if pid not in node.procs:
        raise ValueError(f"cannot {what} {pid}: it is not alive")
    return pid


def _check_portable(topic: Any, key: Any, meta: Any) -> None:
    """Entries cross nodes: ``SerializationError`` now, before anything changes."""
    if type(topic) not in _PLAIN or type(key) not in _PLAIN or type(meta) not in _PLAIN:
        dumps((topic, key, meta))


def track(topic: Any, key: Any, meta: Any = None, *, pid: Pid | None = None) -> None:
    """The caller (or local ``pid``) is present under ``key`` in ``topic`` until
    ``untrack`` or its exit. ``ValueError`` if it tracks that key already (use
    ``update``), or if ``pid`` is not a live local actor."""
    owner = _owner(pid, "track")
    if type(topic) not in _PLAIN or type(key) not in _PLAIN or type(meta) not in _PLAIN:
        dumps((topic, key, meta))  # entries cross nodes: SerializationError now, before any change
    if not get_replica().track(owner[2], topic, key, meta):
        raise ValueError(f"{owner} already tracks {key!r} in {topic!r}: use presence.update to change its meta")


def untrack(topic: Any, key: Any, *, pid: Pid | None = None) -> None:
    """Remove the caller's (or ``pid``'s) entry under ``key`` in ``topic``; no-op if none."""
    if pid is None:
        owner = _owner(None, "untrack")
    elif type(pid) is not Pid:
        raise TypeError(f"pid must be a Pid, not {type(pid).__name__}")
    elif pid[0] != lowlevel.current_node().name:
        raise ValueError(f"cannot untrack {pid}: it is not a local pid (call presence.untrack on {pid[0]})")
    else:
        owner = pid  # a dead pid has no entries left: nothing to do
    get_replica().untrack(owner[2], topic, key)


def update(topic: Any, key: Any, meta: Any, *, pid: Pid | None = None) -> None:
    """Replace the meta of the caller's (or ``pid``'s) entry: a leave and a join
    in the diffs. ``ValueError`` if there is no such entry (``track`` it first)."""
    owner = _owner(pid, "update")
    _check_portable(topic, key, meta)
    if not get_replica().update(owner[2], topic, key, meta):
        raise ValueError(f"{owner} does not track {key!r} in {topic!r}: use presence.track first")


def list(topic: Any) -> dict[Any, Any]:  # noqa: A001  (the contract's name, as Phoenix's)
    """``{key: [meta, ...]}`` of ``topic`` on every connected node, from this node's replica."""
    return get_replica().list(topic)

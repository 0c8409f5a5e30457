"""One node's presences, as a table, and the diffs that changes to tables make.

A ``Table`` holds the entries tracked on one node (this one, or one peer's
current incarnation): ``topics[topic][key]`` is one entry ``(pid_id, meta)``,
or a list of them when several pids track the same key. Pids are kept as
their ids: the table's node and creation imply the rest. One tuple per
entry and no per-key dict keep a peer's entry at ~140 bytes with a short
str key and no meta (bench row ``presence_memory``); the dict is also what
a sync frame carries, as is.

``Changes`` gathers the ``Diff``s of one batch of changes for the topics that
have subscribers on this node, and publishes them locally. Within a diff,
``leaves`` are taken from the state before the batch (an entry that came and
went in one batch shows in neither), so applying the leaves and the joins, in
either order, to the state before gives the state after.

It knows no actors, no mesh and no pubsub: the replica gives it what to watch
and how to publish.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

MISSING: Any = object()  # no such entry


@dataclass(frozen=True, slots=True)
class Diff:
    """Published on the PubSub topic itself when presences of ``topic`` change:
    ``joins`` and ``leaves`` map a key to the metas that came or went. An update
    is a leave of the old meta and a join of the new one."""

    topic: Any
    joins: dict[Any, list[Any]]
    leaves: dict[Any, list[Any]]


class Table:
    """The entries of one node incarnation: ``topic -> key -> entry or [entries]``."""

    __slots__ = ("creation", "topics")

    def __init__(self, creation: int, topics: dict[Any, dict[Any, Any]] | None = None) -> None:
        self.creation = creation
        self.topics: dict[Any, dict[Any, Any]] = topics if topics is not None else {}

    def add(self, topic: Any, key: Any, pid_id: int, meta: Any) -> bool:
        """Add an entry; ``False`` (and nothing changed) if that pid tracks the key already."""
        keys = self.topics.get(topic)
        if keys is None:
            keys = self.topics[topic] = {}
        found = keys.get(key)
        if found is None:
            keys[key] = (pid_id, meta)
        elif type(found) is list:
            for entry in found:
                if entry[0] == pid_id:
                    return False
            found.append((pid_id, meta))
        elif found[0] == pid_id:
            return False
        else:
            keys[key] = [found, (pid_id, meta)]
        return True

    def _locate(self, topic: Any, key: Any, pid_id: int) -> tuple[dict[Any, Any], Any, int] | None:
        """Where that pid's entry of ``key`` is: ``(keys, found, i)``, ``i`` its index
        in the list of entries, or -1 when it is the key's only entry; ``None`` if absent."""
        keys = self.topics.get(topic)
        found = keys.get(key) if keys is not None else None
        if found is None:
            return None
        if type(found) is list:
            for i, entry in enumerate(found):
                if entry[0] == pid_id:
                    return keys, found, i  # type: ignore[return-value]
            return None
        return (keys, found, -1) if found[0] == pid_id else None  # type: ignore[return-value]

    def remove(self, topic: Any, key: Any, pid_id: int) -> Any:
        """Remove that pid's entry; its meta, or ``MISSING``."""
        where = self._locate(topic, key, pid_id)
        if where is None:
            return MISSING
        keys, found, i = where
        if i < 0:
            del keys[key]
            if not keys:
                del self.topics[topic]
            return found[1]
        meta = found.pop(i)[1]
        if len(found) == 1:
            keys[key] = found[0]  # a lone entry again
        return meta

    def replace(self, topic: Any, key: Any, pid_id: int, meta: Any) -> Any:
        """Give that pid's entry a new meta; the old one, or ``MISSING``."""
        where = self._locate(topic, key, pid_id)
        if where is None:
            return MISSING
        keys, found, i = where
        if i < 0:
            keys[key] = (pid_id, meta)
            return found[1]
        old = found[i][1]
        found[i] = (pid_id, meta)
        return old

    def metas_into(self, topic: Any, out: dict[Any, list[Any]]) -> None:
        """Add this table's metas of ``topic`` to ``out`` (key -> [meta])."""
        keys = self.topics.get(topic)
        if not keys:
            return
        for key, found in keys.items():
            metas = out.get(key)
            if metas is None:
                metas = out[key] = []
            if type(found) is list:
                metas.extend(entry[1] for entry in found)
            else:
                metas.append(found[1])

    def entries(self, topic: Any) -> Iterator[tuple[Any, Any]]:
        """``(key, meta)`` for every entry of ``topic``."""
        for key, found in self.topics.get(topic, {}).items():
            if type(found) is list:
                for entry in found:
                    yield key, entry[1]
            else:
                yield key, found[1]

    def count(self) -> int:
        return sum(len(found) if type(found) is list else 1
                   for keys in self.topics.values() for found in keys.values())


class Changes:
    """The diffs of one batch of changes, per topic with local subscribers."""

    __slots__ = ("watched", "diffs")

    def __init__(self, watched: Any) -> None:
        self.watched = watched  # topics with subscribers here (``in`` is all it needs)
        self.diffs: dict[Any, tuple[dict[Any, list[Any]], dict[Any, list[Any]]]] = {}

    def _of(self, topic: Any) -> tuple[dict[Any, list[Any]], dict[Any, list[Any]]]:
        found = self.diffs.get(topic)
        if found is None:
            found = self.diffs[topic] = ({}, {})
        return found

    def join(self, topic: Any, key: Any, meta: Any) -> None:
        if topic in self.watched:
            self._of(topic)[0].setdefault(key, []).append(meta)

    def leave(self, topic: Any, key: Any, meta: Any) -> None:
        if topic not in self.watched:
            return
        joins, leaves = self._of(topic)
        joined = joins.get(key)
        if joined and meta in joined:  # it came in this batch: it never shows
            joined.remove(meta)
            if not joined:
                del joins[key]
        else:
            leaves.setdefault(key, []).append(meta)

    def join_all(self, table: Table) -> None:
        for topic in table.topics:
            if topic in self.watched:
                for key, meta in table.entries(topic):
                    self.join(topic, key, meta)

    def leave_all(self, table: Table) -> None:
        for topic in table.topics:
            if topic in self.watched:
                for key, meta in table.entries(topic):
                    self.leave(topic, key, meta)

    def publish(self, broadcast: Callable[[Any, Diff], None]) -> None:
        for topic, (joins, leaves) in self.diffs.items():
            if joins or leaves:
                broadcast(topic, Diff(topic, joins, leaves))
        self.diffs = {}

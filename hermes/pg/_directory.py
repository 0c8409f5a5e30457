"""The pg directory: the one shared object a pg service serves to every node.

What it owns: each node's name, creation and address, one bucket of memberships
per node incarnation ``(name, creation) -> {group: [member, ...]}``, node
leases, and a versioned change log served as a long-polled feed.

Rules:

- *Soft state.* Each node owns its bucket and alone writes it; after every
  (re)registration it re-sends the whole bucket (``sync``), so a restarted
  service (new ``epoch``) loses nothing for long.
- Every exposed method takes the one condition lock, and returns *copies*:
  the manager pickles the result after the method returned, outside the lock.
- Versions are consecutive integers, one per event; a feed client whose
  ``since`` fell off the bounded log, or whose epoch is not ours, gets a
  snapshot instead of events.
- A bigger ``creation`` is a newer incarnation of a node name: it replaces
  the stored one; an older one is refused.
- *Sequence numbers* (optional, opaque here): a node may number its own
  changes (``update`` changes as ``(kind, group, members, seq)``, ``sync``
  with ``seq``). Its events then carry the number (``join``/``leave`` get it
  as a sixth element; a numbered ``sync`` is one ``("sync", name, creation,
  memberships, seq)`` event, the whole bucket), and ``changes(..., seqs=True)``
  snapshots carry ``{(name, creation): seq}`` as a sixth element: replicas
  that also hear the node on the mesh match the two by number.
- *Packed runs* (``changes(..., seqs=True)`` answers only): consecutive
  numbered joins/leaves of one node are served as one ``("changes", name,
  creation, first_seq, last_seq, body)``, ``body`` the pickle of their
  ``[(kind, group, members, seq), ...]``. A replica that already applied
  ``last_seq`` from the mesh (the usual case: the mesh is one hop) skips the
  run without decoding a member. Packed after the lock is released.

What it must not know: sockets, ``multiprocessing.managers`` (``_service``
serves it), pids, actors, asyncio, the mesh. Node names, groups and members
are opaque picklable values (groups and members must be hashable).
"""
from __future__ import annotations

import functools
import logging
import pickle
import secrets
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, TypeVar

__all__ = ["DEFAULT_LOG_SIZE", "Directory"]

log = logging.getLogger(__name__)

DEFAULT_LOG_SIZE = 100_000
MAX_POLL = 60.0              # longest long poll the service grants
MAX_BATCH = 20_000           # most events in one feed answer; the client simply polls again

Event = tuple[Any, ...]
Bucket = dict[Any, list[Any]]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(slots=True)
class _NodeEntry:
    creation: int
    address: Any
    deadline: float


def _locked(method: F) -> F:
    """Run ``method`` under the directory's lock, mark the service used, wake feeds on change."""

    @functools.wraps(method)
    def wrapper(self: Directory, *args: Any) -> Any:
        with self._cond:
            self._last_used = time.monotonic()
            before = self._version
            try:
                return method(self, *args)
            finally:
                if self._version != before:
                    self._cond.notify_all()

    return wrapper  # type: ignore[return-value]


class Directory:
    """Nodes, membership buckets, leases and the change log. Thread-safe (one lock)."""

    def __init__(self, *, lease_ttl: float = 3.0, log_size: int = DEFAULT_LOG_SIZE) -> None:
        if lease_ttl <= 0 or log_size <= 0:
            raise ValueError("lease_ttl and log_size must be positive")
        self.epoch = secrets.token_hex(8)
        self.lease_ttl = float(lease_ttl)
        self._cond = threading.Condition(threading.Lock())
        self._version = 0
        self._log: deque[tuple[int, Event]] = deque(maxlen=log_size)
        self._nodes: dict[Any, _NodeEntry] = {}
        self._buckets: dict[tuple[Any, int], Bucket] = {}
        self._seqs: dict[tuple[Any, int], int] = {}   # the number of each bucket's newest change
        self._last_used = time.monotonic()

    # -- nodes ---------------------------------------------------------------------------

    @_locked
    def register_node(self, name: Any, creation: int, address: Any) -> dict[str, Any]:
        entry = self._nodes.get(name)
        reply = {"epoch": self.epoch, "lease_ttl": self.lease_ttl, "refused": False}
        if entry is not None and entry.creation > creation:
            log.warning("refused %r creation %r: creation %r is registered", name, creation, entry.creation)
            return {**reply, "refused": True, "version": self._version}
        if entry is not None and entry.creation < creation:
            self._remove_node(name, "replaced by a newer creation")   # race: restarted before its lease ran out
        entry = self._nodes.get(name)
        deadline = time.monotonic() + self.lease_ttl
        if entry is None or entry.address != address:
            self._nodes[name] = _NodeEntry(creation, address, deadline)
            self._buckets.setdefault((name, creation), {})
            self._emit(("node_up", name, creation, address))
            log.debug("node up: %r creation %r at %r", name, creation, address)
        else:
            entry.deadline = deadline   # a reconnect of the registered incarnation
        return {**reply, "version": self._version}

    @_locked
    def heartbeat(self, name: Any, creation: int) -> bool:
        return self._extend_lease(name, creation) is not None

    @_locked
    def unregister_node(self, name: Any, creation: int) -> bool:
        return self._entry(name, creation) is not None and self._remove_node(name, "unregistered")

    @_locked
    def report_down(self, name: Any, creation: int) -> bool:
        # race: the node may be alive; its next heartbeat answers False and it re-registers
        return self._entry(name, creation) is not None and self._remove_node(name, "reported down")

    # -- memberships ---------------------------------------------------------------------

    @_locked
    def sync(self, name: Any, creation: int, memberships: dict[Any, list[Any]], seq: int | None = None) -> int | None:
        if self._extend_lease(name, creation) is None:
            return None
        bucket = self._buckets[(name, creation)]
        if seq is not None:   # one event for the whole bucket: a replica re-bases on it at once
            bucket.clear()
            bucket.update({group: list(members) for group, members in memberships.items() if members})
            self._seqs[(name, creation)] = seq
            self._emit(("sync", name, creation, {g: list(ms) for g, ms in bucket.items()}, seq))
            return self._version
        for group in list(bucket.keys() | memberships.keys()):
            old, new = Counter(bucket.get(group, ())), Counter(memberships.get(group, ()))
            if left := list((old - new).elements()):
                self._emit(("leave", name, creation, group, left))
            if joined := list((new - old).elements()):
                self._emit(("join", name, creation, group, joined))
            if memberships.get(group):
                bucket[group] = list(memberships[group])
            else:
                bucket.pop(group, None)
        return self._version

    @_locked
    def update(self, name: Any, creation: int, changes: list[tuple[str, Any, list[Any]]]) -> int | None:
        if self._extend_lease(name, creation) is None:   # a node that writes is alive
            return None
        bucket = self._buckets[(name, creation)]
        for change in changes:
            kind, group, members = change[:3]
            seq = change[3] if len(change) > 3 else None
            if kind == "join":
                self._join(name, creation, bucket, group, members, seq)
            elif kind == "leave":
                self._leave(name, creation, bucket, group, members, seq)
            else:
                raise ValueError(f"unknown change kind {kind!r}")
            if seq is not None:
                self._seqs[(name, creation)] = seq
        return self._version

    # -- reads and the feed ----------------------------------------------------------------

    def changes(self, epoch: str | None, since: int, timeout: float, seqs: bool = False) -> tuple[Any, ...]:
        answer = self._changes(epoch, since, timeout, seqs)
        if seqs and answer[0] == "events" and answer[3]:
            return (*answer[:3], _pack_runs(answer[3]))
        return answer

    @_locked
    def _changes(self, epoch: str | None, since: int, timeout: float, seqs: bool) -> tuple[Any, ...]:
        if epoch != self.epoch or not self._in_log(since):
            return self._snapshot(seqs)
        if since == self._version and timeout > 0:
            self._cond.wait_for(lambda: self._version != since, min(float(timeout), MAX_POLL))
            if not self._in_log(since):   # race: the log rolled past `since` while we waited
                return self._snapshot(seqs)
        count = min(self._version - since, MAX_BATCH)
        newest_first = islice(reversed(self._log), self._version - since - count, self._version - since)
        events = [event for _, event in newest_first]
        events.reverse()
        return ("events", self.epoch, since + count, events)

    @_locked
    def snapshot(self) -> tuple[Any, ...]:
        return self._snapshot()

    @_locked
    def nodes(self) -> dict[Any, tuple[int, Any]]:
        return {name: (e.creation, e.address) for name, e in self._nodes.items()}

    @_locked
    def ping(self) -> str:
        return self.epoch

    # -- housekeeping (not exposed) ----------------------------------------------------------

    def expire_leases(self) -> list[Any]:
        """Remove every node whose lease has passed; return their names."""
        with self._cond:
            now = time.monotonic()
            expired = [name for name, e in self._nodes.items() if e.deadline < now]
            for name in expired:
                self._remove_node(name, "lease expired")
            if expired:
                self._cond.notify_all()
            return expired

    def idle_for(self) -> float:
        """Seconds since the last call, or 0.0 while any node is registered."""
        with self._cond:
            return 0.0 if self._nodes else time.monotonic() - self._last_used

    # -- internals (lock held) -----------------------------------------------------------------

    def _entry(self, name: Any, creation: int) -> _NodeEntry | None:
        entry = self._nodes.get(name)
        return entry if entry is not None and entry.creation == creation else None

    def _extend_lease(self, name: Any, creation: int) -> _NodeEntry | None:
        entry = self._entry(name, creation)
        if entry is not None:
            entry.deadline = time.monotonic() + self.lease_ttl
        return entry

    def _emit(self, event: Event) -> None:
        self._version += 1
        self._log.append((self._version, event))

    def _remove_node(self, name: Any, why: str) -> bool:
        entry = self._nodes.pop(name)
        self._buckets.pop((name, entry.creation), None)
        self._seqs.pop((name, entry.creation), None)
        self._emit(("node_down", name, entry.creation))
        log.info("node down: %r creation %r (%s)", name, entry.creation, why)
        return True

    def _join(self, name: Any, creation: int, bucket: Bucket, group: Any, members: list[Any],
              seq: int | None = None) -> None:
        if members:
            bucket.setdefault(group, []).extend(members)
            event = ("join", name, creation, group, list(members))
            self._emit(event if seq is None else (*event, seq))

    def _leave(self, name: Any, creation: int, bucket: Bucket, group: Any, members: list[Any],
               seq: int | None = None) -> None:
        current = bucket.get(group, [])
        removed = []
        for member in members:
            if member in current:
                current.remove(member)
                removed.append(member)
        if not current:
            bucket.pop(group, None)
        if removed:
            event = ("leave", name, creation, group, removed)
            self._emit(event if seq is None else (*event, seq))

    def _in_log(self, since: int) -> bool:
        floor = self._log[0][0] - 1 if self._log else self._version
        return floor <= since <= self._version

    def _snapshot(self, seqs: bool = False) -> tuple[Any, ...]:
        nodes = {name: (e.creation, e.address) for name, e in self._nodes.items()}
        buckets = {key: {g: list(ms) for g, ms in bucket.items()} for key, bucket in self._buckets.items()}
        if seqs:
            return ("snapshot", self.epoch, self._version, nodes, buckets, dict(self._seqs))
        return ("snapshot", self.epoch, self._version, nodes, buckets)


def _pack_runs(events: list[Event]) -> list[Event]:
    """Each run of numbered joins/leaves of one node incarnation as one packed
    ``("changes", name, creation, first_seq, last_seq, body)`` (see the module rules)."""
    packed: list[Event] = []
    run: list[tuple[Any, ...]] = []
    owner: tuple[Any, int] | None = None

    def close_run() -> None:
        if run:
            body = pickle.dumps(run, pickle.HIGHEST_PROTOCOL)
            packed.append(("changes", owner[0], owner[1], run[0][3], run[-1][3], body))  # type: ignore[index]
            run.clear()

    for event in events:
        if len(event) == 6 and event[0] in ("join", "leave"):
            if owner != (event[1], event[2]):
                close_run()
                owner = (event[1], event[2])
            run.append((event[0], event[3], event[4], event[5]))
        else:
            close_run()
            owner = None
            packed.append(event)
    close_run()
    return packed

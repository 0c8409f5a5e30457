"""A node's session with the pg service (two threads), over ``_wire.ServiceConnection``.

What it owns: ``ServiceClient``: registration, lease heartbeats, the upload of
the node's memberships and the download of everybody's. The node hears of it
through ``on_event(kind, payload)``, called from the client's threads:

    ("service_up", None)            registered and synced on a (new) connection
    ("snapshot", (nodes, buckets))  full state; replaces what the node knew
                                    (``(nodes, buckets, seqs)`` with ``local_seq``)
    ("events", [event, ...])        incremental, in version order
    ("service_down", None)          lost the service; the node's view is stale

Per session: ``service_up``, one ``snapshot``, ``events``..., ``service_down``
(one lock serializes the two threads' deliveries; feed answers from an ended
session are dropped).

Rules:

- The *writer* thread owns the session: connect, ``register_node``, ``sync``,
  then batched ``update`` calls and heartbeats every lease_ttl/3. Any failure
  closes the connection (a dead server never comes back to an old connection),
  reports ``service_down`` once, and retries with backoff 0.1 s -> 1 s.
- The *feed* thread long-polls ``changes`` on its own connection, from a
  snapshot after every ``service_up``. On failure it asks the writer to probe
  at once, so a killed service is noticed within milliseconds.
- The client keeps a *mirror* of the node's memberships, updated by ``push``
  under the lock that guards the queue, so a resync sends the mirror and drops
  the queue atomically. (Re-reading ``local_memberships()`` at resync would race
  with concurrent pushes and apply a join twice; it only seeds the mirror.)

- *Numbered changes* (``local_seq`` given): the node numbers its own changes
  (``push`` gets ``(kind, group, members, seq)``) and ``local_seq()`` is the
  number its ``local_memberships()`` reflect. The mirror keeps the number of
  its newest change, ``sync`` sends it, and snapshots come with every
  bucket's number (see ``_directory``).

What it must not know: asyncio, actors, pids (members are opaque values).
"""
from __future__ import annotations

import logging
import threading
import time
from multiprocessing import AuthenticationError, managers
from typing import Any, Callable

from hermes._errors import HermesError
from hermes._config import TLSConfig
from hermes.pg._wire import ServiceConnection, ServiceUnavailable, ping_service

__all__ = ["ServiceClient", "ServiceConnection", "ServiceUnavailable", "ping_service"]

log = logging.getLogger(__name__)

Change = tuple[str, Any, list[Any]]
OnEvent = Callable[[str, Any], None]
BACKOFF_MIN, BACKOFF_MAX = 0.1, 1.0
# After a non-empty feed answer, let events gather this long before polling again: under
# churn it cuts the answers (and thread wake-ups) several-fold; a quiet feed still wakes at once.
FEED_COALESCE = 0.01


# -- the node's client ---------------------------------------------------------------------------


# What ends a session: the service went away, refused us, or answered nonsense.
_SESSION_ERRORS = (ServiceUnavailable, AuthenticationError, managers.RemoteError, HermesError)


class _Unregistered(Exception):
    """The service no longer knows this (name, creation): lease expired or reported down."""


class ServiceClient:
    """A node's thread-based client of the pg service (see the module docstring)."""

    def __init__(
        self, address: tuple[str, int], cookie: bytes, name: Any, creation: int, node_address: Any, *,
        on_event: OnEvent, local_memberships: Callable[[], dict[Any, list[Any]]],
        lease_ttl_hint: float = 3.0, poll_timeout: float = 1.0, call_timeout: float | None = None,
        tls: TLSConfig | None = None, local_seq: Callable[[], int] | None = None,
    ) -> None:
        self.address = (address[0], int(address[1]))
        self.name, self.creation, self.node_address = name, creation, node_address
        self._cookie = cookie
        self._tls = tls
        self._on_event = on_event
        self._local_memberships = local_memberships
        self._local_seq = local_seq
        self._mirror_seq: int | None = None   # the number of the mirror's newest change (numbered mode)
        self._lease_ttl = lease_ttl_hint
        self._poll_timeout = poll_timeout
        self._call_timeout = call_timeout if call_timeout is not None else max(1.0, lease_ttl_hint)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)   # writer waits here for work or the heartbeat
        self._mirror: dict[Any, list[Any]] = {}
        self._pending: list[Change] = []
        self._reports: list[tuple[Any, int]] = []
        self._accepting = False   # queue changes only while a session is synced
        self._probe = False
        self._deliver_lock = threading.Lock()
        self._session = 0
        self._up = threading.Event()
        self._resync = threading.Event()
        self._stop = threading.Event()
        self._nodes: dict[Any, tuple[int, Any]] = {}
        self._feed_conn: ServiceConnection | None = None
        self._threads: list[threading.Thread] = []
        self._stats = dict.fromkeys(
            ("sessions", "failures", "updates", "changes", "heartbeats", "snapshots", "events"), 0)
        self._feed_version = 0
        self._next_heartbeat = 0.0
        self._last_error = ""

    # -- public ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("ServiceClient already started")
        seed = self._local_memberships()
        seed_seq = self._local_seq() if self._local_seq is not None else None
        with self._lock:
            self._mirror = {group: list(members) for group, members in seed.items() if members}
            self._mirror_seq = seed_seq
        for target, role in ((self._writer_loop, "writer"), (self._feed_loop, "feed")):
            thread = threading.Thread(target=target, name=f"hermes-pg-{role}[{self.name}]", daemon=True)
            self._threads.append(thread)
            thread.start()

    def push(self, changes: list[Change]) -> None:
        """Queue ``[("join"|"leave", group, [members])]`` (numbered: ``(kind, group,
        [members], seq)``); sent in batches by the writer."""
        if any(change[0] not in ("join", "leave") for change in changes):
            raise ValueError(f"a change kind is neither 'join' nor 'leave': {changes!r}")
        with self._lock:
            for change in changes:
                self._apply_to_mirror(change[0], change[1], change[2])
                if len(change) > 3:
                    self._mirror_seq = change[3]
            if self._accepting:
                self._pending.extend(changes)
                self._wake.notify()

    def reset_local(self, first_seq: int | None = None) -> int:
        """This node's memberships are all gone (its pg scope restarted): leave them,
        numbered from ``first_seq`` in numbered mode. Returns how many changes that took."""
        with self._lock:
            changes: list[Any] = [("leave", group, list(members)) for group, members in self._mirror.items()]
        if first_seq is not None:
            changes = [(*change, first_seq + i) for i, change in enumerate(changes)]
        if changes:
            self.push(changes)
        return len(changes)

    def resync(self) -> None:
        """Deliver a fresh ``snapshot`` (within a poll period), e.g. to a new scope."""
        self._resync.set()

    def report_down(self, name: Any, creation: int) -> None:
        """Tell the service our mesh connection to that node dropped (best effort)."""
        with self._lock:
            if self._accepting:
                self._reports.append((name, creation))
                self._wake.notify()

    def nodes(self) -> dict[Any, tuple[int, Any]]:
        """``{name: (creation, address)}`` as last seen on the feed (no network)."""
        with self._deliver_lock:
            return dict(self._nodes)

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    def statistics(self) -> dict[str, Any]:
        with self._lock:
            queued = len(self._pending)
        return {**self._stats, "connected": self.connected, "queued": queued,
                "version": self._feed_version, "last_error": self._last_error}

    def close(self, timeout: float | None = None) -> None:
        """Unregister if possible and stop both threads, within about ``call_timeout``."""
        self._stop.set()
        with self._lock:
            self._wake.notify_all()
        feed = self._feed_conn
        if feed is not None:
            feed.abort()
        deadline = time.monotonic() + (timeout if timeout is not None else self._call_timeout + 1.0)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- the writer: session, updates, heartbeats --------------------------------------------------

    def _writer_loop(self) -> None:
        conn: ServiceConnection | None = None
        registered = False
        backoff = BACKOFF_MIN
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._connect(self._call_timeout)
                if not registered:
                    self._register(conn)
                    registered, backoff = True, BACKOFF_MIN
                self._serve_session(conn)
                continue
            except _Unregistered:
                log.info("pg service forgot node %r: registering again", self.name)
                registered = False
                continue
            except _SESSION_ERRORS as exc:
                self._note_failure(exc)
            except Exception as exc:   # e.g. the service raised on a bad value: still end the session
                log.error("node %r: unexpected pg service error", self.name, exc_info=True)
                self._note_failure(exc)
            if conn is not None:
                conn.close()
            conn, registered = None, False
            self._session_down()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
        if conn is not None:
            self._unregister(conn, registered)

    def _register(self, conn: ServiceConnection) -> None:
        reply = conn.call("register_node", self.name, self.creation, self.node_address)
        if reply.get("refused"):
            raise HermesError(f"pg service refused {self.name!r} creation {self.creation}: a newer one exists")
        self._lease_ttl = float(reply["lease_ttl"])
        with self._lock:   # the cut: the mirror carries every change queued so far
            memberships = {group: list(members) for group, members in self._mirror.items()}
            seq = self._mirror_seq
            self._pending.clear()
            self._reports.clear()
            self._accepting = True
        if seq is None:
            conn.call("sync", self.name, self.creation, memberships)
        else:   # the whole bucket as of change `seq`: replicas re-base on it
            conn.call("sync", self.name, self.creation, memberships, seq)
        self._next_heartbeat = time.monotonic() + self._lease_ttl / 3
        self._stats["sessions"] += 1
        if not self._up.is_set():
            with self._deliver_lock:
                self._session += 1
                self._up.set()
                self._deliver("service_up", None)
            log.debug("node %r connected to the pg service at %s", self.name, self.address)

    def _serve_session(self, conn: ServiceConnection) -> None:
        """Wait for work or the next heartbeat, then do it (one round)."""
        with self._wake:
            while not (self._pending or self._reports or self._probe or self._stop.is_set()):
                remaining = self._next_heartbeat - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.wait(remaining)
            batch, self._pending = self._pending, []
            reports, self._reports = self._reports, []
            probe, self._probe = self._probe, False
        if batch:
            if conn.call("update", self.name, self.creation, batch) is None:
                raise _Unregistered
            self._stats["updates"] += 1
            self._stats["changes"] += len(batch)
        for name, creation in reports:
            conn.call("report_down", name, creation)
        if probe or time.monotonic() >= self._next_heartbeat:
            if not conn.call("heartbeat", self.name, self.creation):
                raise _Unregistered
            self._next_heartbeat = time.monotonic() + self._lease_ttl / 3
            self._stats["heartbeats"] += 1

    def _unregister(self, conn: ServiceConnection, registered: bool) -> None:
        try:
            if registered:
                conn.call("unregister_node", self.name, self.creation)
        except _SESSION_ERRORS as exc:
            log.debug("could not unregister %r: %r", self.name, exc)
        finally:
            conn.close()
            self._session_down(report=False)

    def _session_down(self, report: bool = True) -> None:
        with self._lock:
            self._accepting = False
            self._pending.clear()
            self._reports.clear()
        with self._deliver_lock:
            if not self._up.is_set():
                return
            self._up.clear()
            if report:
                log.warning("node %r lost the pg service at %s: %s", self.name, self.address, self._last_error)
                self._deliver("service_down", None)
        feed = self._feed_conn
        if feed is not None:
            feed.abort()

    # -- the feed --------------------------------------------------------------------------

    def _feed_loop(self) -> None:
        epoch: str | None = None
        since, session = 0, -1
        backoff = BACKOFF_MIN
        while not self._stop.is_set():
            if not self._up.wait(0.1):
                continue
            try:
                if self._feed_conn is None:
                    self._feed_conn = self._connect(self._poll_timeout + self._call_timeout)
                if session != self._session or self._resync.is_set():
                    self._resync.clear()
                    epoch = None   # a new session (or a restarted scope) starts from a snapshot
                if self._local_seq is None:
                    answer = self._feed_conn.call("changes", epoch, since, self._poll_timeout)
                else:
                    answer = self._feed_conn.call("changes", epoch, since, self._poll_timeout, True)
                backoff = BACKOFF_MIN
            except Exception as exc:   # _SESSION_ERRORS, or the service raised: reconnect either way
                if not isinstance(exc, _SESSION_ERRORS):
                    log.error("node %r: unexpected pg feed error", self.name, exc_info=True)
                self._close_feed()
                if not self._stop.is_set():
                    self._note_failure(exc)
                    with self._lock:
                        self._probe = True   # let the writer find out whether the service is gone
                        self._wake.notify()
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                epoch = None
                continue
            epoch, since, session = self._deliver_feed(answer, epoch, since, session)
            if answer[0] == "events" and answer[3]:
                self._stop.wait(FEED_COALESCE)
        self._close_feed()

    def _deliver_feed(self, answer: tuple[Any, ...], epoch: str | None, since: int,
                      session: int) -> tuple[str | None, int, int]:
        with self._deliver_lock:
            if not self._up.is_set():   # race: the session ended while we polled
                return None, 0, -1
            if answer[0] == "snapshot":
                epoch, version, nodes, buckets = answer[1:5]
                self._nodes = dict(nodes)
                self._stats["snapshots"] += 1
                self._deliver("snapshot", (nodes, buckets) if self._local_seq is None else (nodes, buckets, answer[5]))
                session = self._session
            elif session != self._session:
                return None, 0, -1
            else:
                _, epoch, version, events = answer
                if events:
                    self._apply_to_nodes(events)
                    self._stats["events"] += len(events)
                    self._deliver("events", events)
            self._feed_version = version
            return epoch, version, session

    def _apply_to_nodes(self, events: list[tuple[Any, ...]]) -> None:
        for event in events:
            if event[0] == "node_up":
                self._nodes[event[1]] = (event[2], event[3])
            elif event[0] == "node_down" and self._nodes.get(event[1], (None,))[0] == event[2]:
                del self._nodes[event[1]]

    def _close_feed(self) -> None:
        feed, self._feed_conn = self._feed_conn, None
        if feed is not None:
            feed.close()

    # -- helpers ---------------------------------------------------------------------------

    def _connect(self, io_timeout: float) -> ServiceConnection:
        return ServiceConnection(self.address, self._cookie, timeout=io_timeout, name=f"hermes-pg[{self.name}]",
                                 tls=self._tls)

    def _deliver(self, kind: str, payload: Any) -> None:
        try:
            self._on_event(kind, payload)
        except Exception:
            log.error("pg on_event(%r) of node %r failed", kind, self.name, exc_info=True)

    def _note_failure(self, exc: BaseException) -> None:
        self._stats["failures"] += 1
        self._last_error = repr(exc)
        log.debug("node %r: pg service call failed: %r", self.name, exc)

    def _apply_to_mirror(self, kind: str, group: Any, members: list[Any]) -> None:
        if kind == "join":
            if members:
                self._mirror.setdefault(group, []).extend(members)
        elif kind == "leave":
            current = self._mirror.get(group, [])
            for member in members:
                if member in current:
                    current.remove(member)
            if not current:
                self._mirror.pop(group, None)

"""The Redis adapter: one PUBLISH per publish, one subscription per node.

As Phoenix.PubSub.Redis: every node subscribes once to the PubSub's channel
(``_redis_wire``) and fans what arrives out to its own subscribers; a publish
is one signed payload PUBLISHed once, whatever the number of nodes. The nodes
need no mesh for it.

Threads, not ``redis.asyncio``: redis-py's parser is pure Python either way,
and its blocking one read ~2x the messages per second of the asyncio one on
the dev machine (one subscriber reading a pipelined publisher: ~6.6 k/s
against ~3.3 k/s, both loaded). So each RedisServer has two
daemon threads with a connection each, and the loop never waits on Redis:

- the *reader* subscribes, reads messages into ``inbox`` and wakes the loop
  with one ``call_soon_threadsafe`` per batch (none while one is pending);
  with ``max_queue`` payloads waiting there it stops reading, and Redis
  buffers (and, past its ``client-output-buffer-limit``, drops us: we
  reconnect and tell the subscribers);
- the *writer* takes the payloads ``publish`` queued in ``outbox`` (in order,
  bounded by ``max_queue``, ``overflow`` when full) and sends them as one
  pipeline per batch.

Redis going away: both threads reconnect with backoff (50 ms doubling to
0.5 s); the outage is logged once, the return once; after a reconnect the
subscribers are sent ``Reconnected`` (messages published meanwhile are lost:
Redis keeps none). Publishes made meanwhile wait in ``outbox``.
"""
from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from typing import Any

from .._config import check_names
from .._errors import HermesError
from ..mesh import of as dist_of
from ..runtime import Pid
from ..runtime import lowlevel
from ..transport import resolve_cookie
from ._adapter import Adapter, Reconnected
from ._redis_wire import BadPayload, Wire

log = logging.getLogger("hermes.pubsub.redis")

MAX_QUEUE = 100_000
OVERFLOWS = ("drop_oldest", "drop_newest")
BATCH = 1000  # payloads per pipeline, and messages handled per loop turn (then others get theirs)
BACKOFF = (0.05, 0.5)  # first and largest wait between reconnects, seconds
REJECT_LOG_EVERY = 10.0  # seconds between two log lines about rejected payloads


def import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise HermesError("the Redis PubSub adapter needs redis-py: pip install 'hermes-actors[redis]'") from None
    return redis


def check_options(url: str, options: dict[str, Any]) -> None:
    """The options of a Redis PubSub, checked before anything starts."""
    check_names(options, valid=["max_queue", "overflow"])
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"url is a redis://HOST:PORT/DB (or rediss://, unix://) URL, not {url!r}")
    limit = options.get("max_queue", MAX_QUEUE)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ValueError(f"max_queue is a positive integer, not {limit!r}")
    if options.get("overflow", "drop_oldest") not in OVERFLOWS:
        raise ValueError(f"overflow is one of {', '.join(OVERFLOWS)}, not {options['overflow']!r}")
    import_redis()


def connect(url: str) -> Any:
    """A fresh connection to ``url``, connected; no retries of redis-py's own:
    ours decide when to try again."""
    redis = import_redis()
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # RESP2: subscription messages are plain replies (RESP3 sends them as pushes)
    pool = redis.ConnectionPool.from_url(url, socket_connect_timeout=2.0, socket_timeout=5.0,
                                         socket_keepalive=True, retry=Retry(NoBackoff(), 0), protocol=2)
    conn = pool.make_connection()
    conn.connect()
    return conn


def node_cookie(node: Any) -> bytes:
    dist = dist_of(node)
    if dist is not None:
        return dist.cookie
    return resolve_cookie(getattr(node.config, "cookie", None)).value


class RedisServer(Adapter):
    """The Redis adapter of one PubSub on this node."""

    def __init__(self, name: str, registry_name: str, url: str, options: dict[str, Any] | None = None) -> None:
        options = options or {}
        check_options(url, options)
        super().__init__(name, registry_name)
        self.url = url
        self.wire = Wire(node_cookie(self.node), name)
        self.origin = f"{self.node.name}/{self.node.creation}"  # our own copies come back: skipped
        self.max_queue: int = options.get("max_queue", MAX_QUEUE)
        self.overflow: str = options.get("overflow", "drop_oldest")
        self.outbox: collections.deque[bytes] = collections.deque()
        self.inbox: collections.deque[bytes] = collections.deque()
        self.counters = dict.fromkeys(("published", "sent", "lost", "dropped", "received", "rejected",
                                       "reconnects"), 0)
        self.subscribed = False
        self._overflowing = False
        self._drain_pending = False
        self._last_reject_log = float("-inf")
        self._waiters: list[Any] = []
        self.link = _Link(self)
        self._proc = lowlevel.process_of_actor(self)
        lowlevel.add_exit_hook(self._on_exit)  # a kill skips terminate: the threads must stop anyway
        self.link.start()

    # -- the adapter ----------------------------------------------------------

    def broadcast(self, topic: Any, msg: Any, exclude: Pid | None) -> None:
        _check_topic(topic)
        self._enqueue(self.wire.payload(self.origin, None, topic, msg, exclude))

    def direct_broadcast(self, node: str, topic: Any, msg: Any, exclude: Pid | None) -> None:
        _check_topic(topic)
        self._enqueue(self.wire.payload(self.origin, node, topic, msg, exclude))

    def _enqueue(self, payload: bytes) -> None:
        outbox = self.outbox
        self.counters["published"] += 1
        if len(outbox) >= self.max_queue:
            self._overflow()
            if self.overflow == "drop_newest":
                return
            try:
                outbox.popleft()
            except IndexError:  # the writer took them all meanwhile
                pass
        elif self._overflowing and len(outbox) < self.max_queue // 2:
            self._overflowing = False
        outbox.append(payload)
        if self.link.writer_idle:
            self.link.wake_writer()

    def _overflow(self) -> None:
        self.counters["dropped"] += 1
        if not self._overflowing:
            self._overflowing = True
            log.warning("PubSub %s on %s: %d publishes wait for Redis (max_queue): dropping the %s ones",
                        self.name, self.node.name, self.max_queue, self.overflow.split("_")[1])

    # -- what the reader hands the loop ---------------------------------------

    def drain_inbox(self) -> None:
        """Deliver what the reader received (on the loop)."""
        self._drain_pending = False
        inbox, wire, here, origin = self.inbox, self.wire, self.node.name, self.origin
        registry = self.registry
        for _ in range(BATCH):
            try:
                data = inbox.popleft()
            except IndexError:
                break
            try:
                sender, node, topic, msg, exclude = wire.open_payload(data)
            except BadPayload as exc:
                self._reject(exc)
                continue
            self.counters["received"] += 1
            if sender == origin or (node is not None and node != here):
                continue  # our own (delivered locally already), or for another node
            targets = registry.delivery.get(topic) or registry.targets(topic)
            for pid, deliver in targets:
                if pid != exclude:
                    deliver(msg)
        else:
            self.node.loop.call_soon(self.drain_inbox)  # more: after the others had a turn
            self._drain_pending = True
        self.link.room.set()

    def _reject(self, exc: BadPayload) -> None:
        self.counters["rejected"] += 1
        now = time.monotonic()
        if now - self._last_reject_log >= REJECT_LOG_EVERY:
            self._last_reject_log = now
            log.warning("PubSub %s on %s dropped a payload from Redis channel %s: %s (%d so far)",
                        self.name, self.node.name, self.wire.channel, exc, self.counters["rejected"])

    def on_subscribed(self, again: bool) -> None:
        """The reader's subscription is (again) in place (on the loop)."""
        if self.link.stopping.is_set():
            return
        self.subscribed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(True)
        self._waiters.clear()
        if again:
            self.counters["reconnects"] += 1
            _notify_reconnected(self)

    def on_lost(self) -> None:
        self.subscribed = False

    async def wait_subscribed(self, timeout: float) -> bool:
        """Until the subscription is in place; ``False`` after ``timeout``."""
        import asyncio

        if self.subscribed:
            return True
        waiter = self.node.loop.create_future()
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            return False

    def statistics(self) -> dict[str, Any]:
        return {"adapter": "redis", "channel": self.link.channel, "subscribed": self.subscribed,
                "queued": len(self.outbox), **self.counters}

    # -- lifecycle ------------------------------------------------------------

    def _on_exit(self, proc: Any) -> None:
        if proc is self._proc:
            self.link.close()
            self.node.loop.call_soon(lowlevel.remove_exit_hook, self._on_exit)  # not while the node iterates them

    def terminate(self, reason: Any) -> None:
        self.link.close()
        super().terminate(reason)


def _notify_reconnected(server: RedisServer) -> None:
    """After a reconnect: every actor subscribed to this PubSub on this node
    gets one ``Reconnected`` (messages may have been missed meanwhile)."""
    message = Reconnected(server.name)
    for pid in list(server.registry.by_pid):
        proc = lowlevel.process_of(pid)
        if proc is None:
            continue
        note = getattr(proc, "note_reconnect", None)  # a subscription counts it (``sub.reconnects``)
        if note is not None:
            note()
        else:
            proc.deliver(message)


class _Link:
    """The reader and writer threads of one RedisServer (see the module's docstring)."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.url = server.url
        self.channel = server.wire.channel
        self.loop = server.node.loop
        self.stopping = threading.Event()
        self.room = threading.Event()  # the loop drained the inbox
        self.writer_event = threading.Event()
        self.writer_idle = False
        self.threads = [threading.Thread(target=self._read_loop, name=f"hermes-redis-read-{server.name}",
                                         daemon=True),
                        threading.Thread(target=self._write_loop, name=f"hermes-redis-write-{server.name}",
                                         daemon=True)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self.stopping.set()
        self.writer_event.set()
        self.room.set()

    def wake_writer(self) -> None:
        self.writer_idle = False
        self.writer_event.set()

    def _to_loop(self, fn: Any, *args: Any) -> bool:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
            return True
        except RuntimeError:  # the loop is closed: the node is gone
            self.stopping.set()
            return False

    # -- reader ---------------------------------------------------------------

    def _read_loop(self) -> None:
        redis = import_redis()
        server, inbox, first, failures = self.server, self.server.inbox, True, 0
        while not self.stopping.is_set():
            conn = None
            try:
                conn = connect(self.url)
                conn.send_command("SUBSCRIBE", self.channel)
                conn.read_response()
                if failures:
                    log.warning("PubSub %s on %s: Redis at %s is back, subscribed again", server.name,
                                server.node.name, _where(self.url))
                self._to_loop(server.on_subscribed, not first)
                first, failures = False, 0
                while not self.stopping.is_set():
                    if len(inbox) >= server.max_queue:  # the loop is behind: let Redis buffer
                        self.room.clear()
                        self.room.wait(0.1)
                        continue
                    if not conn.can_read(timeout=0.5):
                        continue
                    reply = conn.read_response()
                    if reply[0] == b"message":
                        inbox.append(reply[2])
                        if not server._drain_pending:
                            server._drain_pending = True
                            self._to_loop(server.drain_inbox)
            except (redis.RedisError, OSError) as exc:
                if self.stopping.is_set():
                    break
                failures += 1
                if failures == 1:
                    log.warning("PubSub %s on %s lost Redis at %s (%s); reconnecting", server.name,
                                server.node.name, _where(self.url), exc)
                    self._to_loop(server.on_lost)
                self.stopping.wait(_backoff(failures))
            finally:
                if conn is not None:
                    conn.disconnect()

    # -- writer ---------------------------------------------------------------

    def _write_loop(self) -> None:
        redis = import_redis()
        outbox, counters, conn, failures = self.server.outbox, self.server.counters, None, 0
        while not self.stopping.is_set():
            if not outbox:
                self.writer_event.clear()
                self.writer_idle = True
                if not outbox:
                    self.writer_event.wait(0.5)
                self.writer_idle = False
                continue
            batch: list[bytes] = []
            try:
                if conn is None:
                    conn = connect(self.url)
                    failures = 0
                for _ in itertools.repeat(None, BATCH):
                    try:
                        batch.append(outbox.popleft())
                    except IndexError:
                        break
                conn.send_packed_command(conn.pack_commands([("PUBLISH", self.channel, p) for p in batch]),
                                         check_health=False)
                for _ in batch:
                    conn.read_response()
                counters["sent"] += len(batch)
            except (redis.RedisError, OSError) as exc:
                counters["lost"] += len(batch)  # at most once: they may or may not have gone out
                if conn is not None:
                    conn.disconnect()
                    conn = None
                failures += 1
                log.debug("PubSub %s: publishing to Redis failed (%s)", self.server.name, exc)
                self.stopping.wait(_backoff(failures))
        if conn is not None:
            conn.disconnect()


def _backoff(failures: int) -> float:
    first, largest = BACKOFF
    return min(largest, first * 2 ** (failures - 1))


def _where(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


def _check_topic(topic: Any) -> None:
    """An unhashable topic fails here, as on the mesh, not on every other node."""
    try:
        hash(topic)
    except TypeError:
        raise TypeError(f"a topic must be hashable, not {type(topic).__name__}") from None

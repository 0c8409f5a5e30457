"""``RedisPublisher``: publish to a Redis PubSub from plain synchronous code
that is no node (a script, a Celery worker, a management command).

Its payloads are those of a node (``_redis_wire``): signed with the cookie,
resolved as a node resolves it, so the nodes deliver them as their own; it
has no node of its own, so every node delivers (``node=`` picks one).
"""
from __future__ import annotations

from typing import Any

from ..transport import resolve_cookie
from ._api import DEFAULT
from ._redis import connect, import_redis
from ._redis_wire import Wire


class RedisPublisher:
    """``RedisPublisher(url, cookie=None, pubsub=None).publish(topic, msg)``.

    One PUBLISH (one round trip) per ``publish``, on one connection opened on
    first use and again after an error; ``close()`` (or ``with``) closes it.
    Not thread-safe: one per thread."""

    def __init__(self, url: str, *, cookie: str | bytes | None = None, pubsub: str | None = None) -> None:
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"url is a redis://HOST:PORT/DB (or rediss://, unix://) URL, not {url!r}")
        import_redis()
        self.url = url
        self.pubsub = pubsub or DEFAULT
        self.wire = Wire(resolve_cookie(cookie).value, self.pubsub)
        self._conn: Any = None

    def publish(self, topic: Any, msg: Any, *, exclude: Any = None, node: str | None = None) -> int:
        """Deliver ``msg`` to the subscribers of ``topic`` on every node of the
        PubSub (``node=``: on that node only; ``exclude``: a pid to skip).
        Returns how many nodes' subscriptions Redis handed it to.
        ``SerializationError`` if ``msg`` cannot be pickled; redis-py's
        ``ConnectionError`` if Redis cannot be reached."""
        payload = self.wire.payload(None, node, topic, msg, exclude)
        redis = import_redis()
        if self._conn is None:
            self._conn = connect(self.url)
        try:
            self._conn.send_command("PUBLISH", self.wire.channel, payload)
            return int(self._conn.read_response())
        except (redis.RedisError, OSError):
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None

    def __enter__(self) -> RedisPublisher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

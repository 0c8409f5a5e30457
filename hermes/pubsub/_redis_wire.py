"""What a Redis PubSub puts on Redis: channel names and signed payloads.

Shared by the nodes' adapter (``_redis``) and ``RedisPublisher``; it knows
no sockets and no actors.

- One channel per PubSub and cluster: ``hermes:<namespace>:<pubsub name>``,
  where the namespace is derived from the cookie (one-way), so clusters with
  different cookies sharing a Redis never see each other's traffic.
- A payload is ``HMAC-SHA256(key, body) || body``, ``body`` the pickle of
  ``(origin, node, topic, msg, exclude)``: ``origin`` is the publishing node
  (its own copy is skipped: it delivered locally already) or ``None`` for a
  ``RedisPublisher``; ``node`` is the one node that should deliver it, or
  ``None`` for all. ``key`` is derived from the cookie *and the channel*, so
  a payload copied to another PubSub's channel fails too.
- ``open_payload`` checks the MAC (``hmac.compare_digest``) before it
  unpickles anything: a Redis client without the cookie cannot make a node
  unpickle a byte it wrote.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Any

from .._errors import SerializationError
from ..transport import dumps, loads

MAC_SIZE = 32


class BadPayload(Exception):
    """A payload that is not signed with our cookie, or cannot be read."""


class Wire:
    """The channel and signing key of one PubSub under one cookie."""

    __slots__ = ("channel", "key")

    def __init__(self, cookie: bytes, pubsub: str) -> None:
        namespace = hmac.new(cookie, b"hermes.pubsub.redis.namespace", hashlib.sha256).hexdigest()[:16]
        self.channel = f"hermes:{namespace}:{pubsub}"
        self.key = hmac.new(cookie, b"hermes.pubsub.redis.key:" + self.channel.encode(), hashlib.sha256).digest()

    def payload(self, origin: str | None, node: str | None, topic: Any, msg: Any, exclude: Any) -> bytes:
        """Sign one publish. ``SerializationError`` names ``msg``'s own type."""
        try:
            body = dumps((origin, node, topic, msg, exclude))
        except SerializationError:
            dumps(msg)  # raise naming the message's own type, not our tuple's
            raise
        return hmac.digest(self.key, body, "sha256") + body

    def open_payload(self, data: bytes) -> tuple[Any, ...]:
        """``(origin, node, topic, msg, exclude)``; ``BadPayload`` if the MAC is
        wrong (nothing unpickled) or the body cannot be read."""
        body = data[MAC_SIZE:]
        if not hmac.compare_digest(hmac.digest(self.key, body, "sha256"), data[:MAC_SIZE]):
            raise BadPayload("not signed with this cluster's cookie")
        try:
            frame = loads(body)
        except Exception as exc:  # a class this node cannot import, say
            raise BadPayload(f"cannot be unpickled here: {type(exc).__name__}: {exc}") from exc
        if type(frame) is not tuple or len(frame) != 5:
            raise BadPayload("not a publish")
        return frame

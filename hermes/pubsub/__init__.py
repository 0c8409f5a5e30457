"""Distributed PubSub, built the way Phoenix.PubSub is built.

``subscribe`` registers the caller in the node's duplicate Registry under the
topic; ``publish`` delivers to this node's subscribers and hands the message
to the PubSub's adapter (``_adapter``) for the other nodes: the mesh's PG2
adapter (``_pg2``), which writes one frame per node that has a member in the
PubSub's process group, or Redis (``_redis``: one PUBLISH, one subscription
per node; ``RedisPublisher`` publishes there from code that is no node).
"""
from __future__ import annotations

from ._adapter import Adapter, Reconnected, group_of, instances
from ._api import (DEFAULT, broadcast_local, child_spec, publish, start, statistics, subscribe, subscribers,
                   system_children, unsubscribe, wait_subscribed)
from ._pg2 import PGServer
from ._publisher import RedisPublisher
from ._subscription import Subscription, subscription

__all__ = ["DEFAULT", "Adapter", "PGServer", "Reconnected", "RedisPublisher", "Subscription", "broadcast_local",
           "child_spec", "group_of", "instances", "publish", "start", "statistics", "subscribe", "subscribers",
           "subscription", "system_children", "unsubscribe", "wait_subscribed"]

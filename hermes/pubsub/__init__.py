"""Distributed PubSub, built the way Phoenix.PubSub is built.

``subscribe`` registers the caller in the node's duplicate Registry under the
topic; ``publish`` delivers to this node's subscribers and hands one copy per
remote node to the adapter: the mesh's PG2 adapter (``_pg2``), which writes
one frame per node that has a member in the PubSub's process group.
"""
from __future__ import annotations

from ._pg2 import (DEFAULT, PGServer, broadcast_local, child_spec, group_of, instances, publish, start, subscribe,
                   subscribers, system_children, unsubscribe)
from ._subscription import Subscription, subscription

__all__ = ["DEFAULT", "PGServer", "broadcast_local", "child_spec", "group_of", "instances", "publish", "start",
           "subscribe", "subscribers", "Subscription", "subscription", "system_children", "unsubscribe"]

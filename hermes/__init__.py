"""Hermes: Erlang/OTP-style actors and a Phoenix.PubSub-style distributed pubsub.

Everything a program needs is importable from here; process groups live in
``hermes.pg`` and the registry in ``hermes.registry``.
"""
from __future__ import annotations

from . import pg, registry
from . import presence
from ._app import run
from .cluster import LocalCluster
from .pubsub import broadcast_local, publish, subscribe, subscribers, unsubscribe
from ._errors import ActorExited, HermesError, NoNode, NotInActor, RemoteError, SerializationError
from .runtime import (NOREPLY, Actor, Down, Exit, NodeDown, NodeUp, Pid, Ref, Supervisor, call, cast,
                      connect, demonitor, disconnect, exit, link, monitor, monitor_node, monitor_nodes, node, nodes,
                      receive, register, reply, rpc, self, send, spawn, trap_exits, unlink, unregister,
                      whereis)
from ._embed import Node, start
from ._errors import NameInUse, SlowConsumer
from ._join import wait_for_nodes
from .pubsub import Subscription, subscription
from .runtime import process_info
from .mesh import drain, statistics
from ._config import TLSConfig

__all__ = [
    "NOREPLY", "Actor", "ActorExited", "Down", "Exit", "HermesError", "NoNode", "NodeDown", "NodeUp", "NotInActor",
    "Pid", "Ref", "RemoteError", "SerializationError", "Supervisor", "call", "cast", "connect",
    "demonitor", "disconnect", "exit", "link", "monitor", "monitor_node", "monitor_nodes", "node", "nodes", "receive",
    "register", "reply", "rpc", "run", "self", "send", "spawn", "trap_exits", "unlink", "unregister",
    "whereis", "pg", "registry", "LocalCluster", "subscribe", "unsubscribe", "publish", "broadcast_local",
    "subscribers",
    "presence",
    "start", "Node", "subscription", "Subscription", "wait_for_nodes", "NameInUse", "SlowConsumer",
    "process_info", "drain", "statistics",
]
from .pubsub import RedisPublisher  # noqa: E402
__all__ += ["RedisPublisher"]
__all__ += ["TLSConfig"]
__version__ = "0.1.0"

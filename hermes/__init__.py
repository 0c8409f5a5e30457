"""Hermes: Erlang/OTP-style actors and a Phoenix.PubSub-style distributed pubsub.

Everything a program needs is importable from here; process groups live in
``hermes.pg``, the registry in ``hermes.registry``, presence in
``hermes.presence``.
"""
from __future__ import annotations

from . import pg, presence, registry
from ._app import run
from ._config import TLSConfig
from ._embed import Node, start
from ._errors import (ActorExited, HermesError, NameInUse, NoNode, NotInActor, RemoteError, SerializationError,
                      SlowConsumer)
from ._join import wait_for_nodes
from .cluster import LocalCluster
from .mesh import drain, statistics
from .pubsub import (RedisPublisher, Subscription, broadcast_local, publish, subscribe, subscribers, subscription,
                     unsubscribe)
from .runtime import (NOREPLY, Actor, Down, Exit, NodeDown, NodeUp, Pid, Ref, Supervisor, call, cast, connect,
                      demonitor, disconnect, exit, link, monitor, monitor_node, monitor_nodes, node, nodes,
                      process_info, receive, register, reply, rpc, self, send, spawn, trap_exits, unlink, unregister,
                      whereis)

__all__ = [
    # identity and nodes
    "Pid", "Ref", "self", "node", "nodes", "connect", "disconnect", "monitor_node", "monitor_nodes", "NodeDown",
    "NodeUp",
    # actors
    "spawn", "send", "receive", "Actor", "NOREPLY", "call", "cast", "reply", "link", "unlink", "trap_exits", "Exit",
    "monitor", "demonitor", "Down", "exit", "register", "whereis", "unregister", "Supervisor", "rpc",
    # registry, process groups, pubsub, presence
    "registry", "pg", "subscribe", "unsubscribe", "publish", "broadcast_local", "subscribers", "presence",
    # errors
    "HermesError", "SerializationError", "ActorExited", "NotInActor", "NoNode", "RemoteError", "NameInUse",
    "SlowConsumer",
    # running nodes and clusters; embedding
    "run", "LocalCluster", "start", "Node", "wait_for_nodes", "subscription", "Subscription",
    # flow control
    "process_info", "drain", "statistics",
    # security, Redis
    "TLSConfig", "RedisPublisher",
]
__version__ = "0.2.0"

"""The single-node actor runtime: pids, processes, Actor, links, monitors, Supervisor."""
from __future__ import annotations

from ._actor import NOREPLY, Actor
from ._api import (call, cast, connect, demonitor, disconnect, exit, link, monitor, monitor_node, monitor_nodes, node,
                   nodes, receive, register, reply, rpc, self, send, spawn, trap_exits, unlink,
                   unregister, whereis)
from ._api import process_info
from ._messages import Down, Exit, NodeDown, NodeUp
from ._pid import Pid, Ref
from ._supervisor import Supervisor

__all__ = [
    "NOREPLY", "Actor", "Down", "Exit", "NodeDown", "NodeUp", "Pid", "Ref", "Supervisor", "call", "cast",
    "connect", "demonitor", "disconnect", "exit", "link", "monitor", "monitor_node", "monitor_nodes", "node", "nodes",
    "receive", "register", "reply", "rpc", "self", "send", "spawn", "trap_exits", "unlink", "unregister",
    "whereis",
    "process_info",
]

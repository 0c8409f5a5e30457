"""The runtime's supported surface for the layers above it, as ``trio.lowlevel``.

Registry, pg, pubsub, presence, the mesh, the cluster tools and ``_app`` are
built on one node's runtime; this module is everything they may use of it.
Nothing outside ``hermes/runtime/`` imports a private runtime module or reads
a private attribute of a runtime object (a test walks the imports).

What is here, by use:

- the node of this process: ``current_node()`` (raises ``NoNode``),
  ``node_or_none()``, ``set_current_node()``; ``running.node`` for hot paths
  (an attribute, not a call: ~40 ns less per publish); the ``Node`` and ``Process``
  types, whose public attributes (``procs``, ``names``, ``loop``, ``layers``,
  ``route_*``) are the runtime's routing table;
- the calling actor: ``current_process()`` (``None`` outside an actor);
- a pid's process: ``process_of(pid)``; an ``Actor`` instance's:
  ``process_of_actor(actor)``; delivery: ``deliver`` and ``deliver_now``;
- lifecycle hooks: ``add_exit_hook`` (an actor ended: registries and groups
  drop it at once), ``layer_state`` (per-layer state kept on the node);
- the envelopes and bodies the mesh needs to run a remote call or rpc:
  ``Call``, ``rpc_body``.

It must not know the network, registries or pubsub: they come to it.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from . import _current
from ._actor import Actor, Call, Cast
from ._api import rpc_body
from ._current import default_host, running
from ._node import Distribution, Node
from ._process import ActorProcess, Process, TaskProcess, current
from ._tasks import install as install_task_factory, uninstall as uninstall_task_factory

T = TypeVar("T")

__all__ = [
    "Actor", "ActorProcess", "Call", "Cast", "Distribution", "Node", "Process", "TaskProcess",
    "add_exit_hook", "current", "current_node", "current_process", "default_host", "deliver", "deliver_now",
    "install_task_factory", "layer_state", "node_or_none", "process_of", "process_of_actor", "remove_exit_hook",
    "rpc_body", "running", "set_current_node", "uninstall_task_factory",
]


def current_node() -> Node:
    """The node of this process; ``NoNode`` if none runs."""
    return _current.get()  # NoNode, or HermesError off the node's loop thread


def node_or_none() -> Node | None:
    """The node of this process, or ``None``: for hot paths that check once."""
    return _current._node


def set_current_node(node: Node | None) -> None:
    """Install (or clear) the node of this process. Only ``run``/``start`` call it."""
    _current.set_node(node)


def current_process() -> Process | None:
    """The process of the actor whose code is running, or ``None``."""
    return current.get()


def process_of(pid: Any) -> Process | None:
    """The live local process of ``pid``, or ``None``."""
    node = _current._node
    return node.procs.get(pid) if node is not None else None


def process_of_actor(actor: Actor) -> ActorProcess:
    """The process running an ``Actor`` instance (set before its ``__init__``)."""
    return actor._hermes_proc


def deliver(pid: Any, msg: Any) -> bool:
    """Put ``msg`` in a local actor's mailbox; ``False`` if it is not alive."""
    proc = process_of(pid)
    if proc is None:
        return False
    proc.deliver(msg)
    return True


def deliver_now(proc: Process, msg: Any) -> None:
    """Deliver and, if the actor is idle, handle it in this loop turn (frames
    whose sender is waiting). Order is unchanged: nothing is queued before it."""
    proc.deliver_now(msg)


def add_exit_hook(hook: Callable[[Process], None]) -> None:
    """Call ``hook(process)`` at the moment any actor of this node ends."""
    current_node().exit_hooks.append(hook)


def remove_exit_hook(hook: Callable[[Process], None]) -> None:
    hooks = current_node().exit_hooks
    if hook in hooks:
        hooks.remove(hook)


def layer_state(name: str, factory: Callable[[], T]) -> T:
    """The per-node state of layer ``name`` (created by ``factory`` on first use)."""
    layers = current_node().layers
    state = layers.get(name)
    if state is None:
        state = layers[name] = factory()
    return state

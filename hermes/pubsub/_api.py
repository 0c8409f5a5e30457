"""The PubSub API, as Phoenix.PubSub's: subscriptions in a duplicate Registry,
local delivery here, and an adapter (``_adapter``) for the other nodes.

- ``subscribe`` registers the caller in the PubSub's Registry under the
  topic; ``unsubscribe`` removes all of its entries.
- ``publish`` hands the message to the adapter for the other nodes (the mesh,
  or Redis), then delivers to this node's subscribers before it returns.
- Every node runs the default instance under its system supervisor (through
  Redis if the node option ``pubsub_url`` is set); others (``start``,
  ``child_spec``) have a supervisor of their own, ``rest_for_one`` over their
  registry and adapter server, as Phoenix.PubSub's.

If the message must cross nodes and cannot be pickled, ``publish`` raises
``SerializationError`` before anyone, local or remote, receives it.
"""
from __future__ import annotations

from threading import get_ident
from typing import Any

from .. import registry
from .._errors import HermesError
from ..runtime import Pid, Supervisor, spawn
from ..runtime import lowlevel
from ..runtime.lowlevel import running
from ._adapter import DEFAULT, Adapter, fan_out, instances
from ._pg2 import PGServer


def _server(pubsub: str | None) -> Adapter:
    name = pubsub or DEFAULT
    lowlevel.current_node()  # NoNode, or the thread rule
    try:
        return lowlevel.node_or_none().layers["pubsub"][name]  # type: ignore[union-attr]
    except (AttributeError, KeyError):
        if lowlevel.node_or_none() is None:
            lowlevel.current_node()  # raises NoNode
        raise HermesError(f"no PubSub named {name!r} runs on this node") from None


def start(name: str, *, url: str | None = None, **redis_options: Any) -> Pid:
    """Start another PubSub instance named ``name`` on this node and return the
    pid of its supervisor (``exit(pid, "shutdown")`` stops it).

    ``url="redis://HOST:PORT/DB"``: it publishes through Redis instead of the
    mesh (``redis_options``: ``max_queue``, ``overflow``; see ``RedisServer``).
    As Phoenix.PubSub's: a ``rest_for_one`` supervisor of the instance's own
    duplicate Registry (``"<name>.registry"``) and its server, so a crashed
    server comes back and a crashed registry takes the server with it. To
    put it under a supervisor of your own, use ``child_spec(name)`` instead."""
    if name in instances():
        raise ValueError(f"a PubSub named {name!r} is already running on this node")
    children = _children(name, url, redis_options)
    pid = spawn(Supervisor, children, "rest_for_one")
    if name not in instances():
        raise HermesError(f"PubSub {name!r} failed to start")
    return pid


def child_spec(name: str, *, url: str | None = None, **redis_options: Any) -> dict[str, Any]:
    """PubSub instance ``name`` as a child of a ``Supervisor``, like Elixir's
    ``{Phoenix.PubSub, name: ...}``: ``Supervisor([pubsub.child_spec("chat"), ...])``."""
    return {"id": ("hermes.pubsub", name), "start": (Supervisor, _children(name, url, redis_options), "rest_for_one")}


def _children(name: str, url: str | None, redis_options: dict[str, Any]) -> list[tuple[Any, ...]]:
    """An instance's own registry, then its server (restarted after it)."""
    registry_name = f"{name}.registry"
    return [(registry.Registry, registry_name, "duplicate"), _server_spec(name, registry_name, url, redis_options)]


def _server_spec(name: str, registry_name: str, url: str | None, redis_options: dict[str, Any]) -> tuple[Any, ...]:
    if url is None:
        if redis_options:
            raise TypeError(f"options {sorted(redis_options)} are for a Redis PubSub: pass url= too")
        return (PGServer, name, registry_name)
    from ._redis import RedisServer, check_options  # imports redis-py: only when it is used

    check_options(url, redis_options)
    return (RedisServer, name, registry_name, url, redis_options)


def subscribe(topic: Any, metadata: Any = None, *, pubsub: str | None = None) -> None:
    """Subscribe the caller to ``topic``; subscribing twice means two deliveries."""
    registry.register(topic, metadata, registry=_server(pubsub).registry_name)


def unsubscribe(topic: Any, *, pubsub: str | None = None) -> None:
    """Remove all of the caller's subscriptions to ``topic`` (no-op if none)."""
    registry.unregister(topic, registry=_server(pubsub).registry_name)


def subscribers(topic: Any, *, pubsub: str | None = None) -> list[tuple[Pid, Any]]:
    """This node's ``[(pid, metadata)]`` for ``topic``."""
    return registry.lookup(topic, registry=_server(pubsub).registry_name)


def broadcast_local(topic: Any, msg: Any, *, exclude: Pid | None = None, pubsub: str | None = None) -> None:
    """Deliver ``msg`` to this node's subscribers of ``topic`` only."""
    fan_out(_server(pubsub).registry, topic, msg, exclude)


def publish(topic: Any, msg: Any, *, exclude: Pid | None = None, node: str | None = None,
            pubsub: str | None = None) -> None:
    """Deliver ``msg`` to every subscriber of ``topic`` on every connected node.

    ``exclude``: a pid to skip. ``node``: deliver only on that node (an unknown
    node: nothing). Local subscribers have the message when this returns."""
    try:  # the hot path, flat: each call saved is ~5% of a remote publish
        server: Adapter = running.node.layers["pubsub"][pubsub or DEFAULT]  # type: ignore[union-attr]
    except (AttributeError, KeyError):
        server = _server(pubsub)  # raises the right error
    if server.thread != get_ident():  # the thread rule
        lowlevel.current_node()  # raises, naming Node.submit
    try:  # the one hash of the topic, and its check: the adapters need not make it again
        here = topic in server.registry.table
    except TypeError:
        raise TypeError(f"a topic must be hashable, not {type(topic).__name__}") from None
    if node is None:
        server.broadcast(topic, msg, exclude)  # raises before anyone, local or remote, got it
    elif node != server.node.name:
        server.direct_broadcast(node, topic, msg, exclude)
        return
    if here:  # no call if no one (broadcast runs no actor code: the table is as it was)
        fan_out(server.registry, topic, msg, exclude)


def statistics(pubsub: str | None = None) -> dict[str, Any]:
    """The adapter's counters for PubSub ``pubsub`` on this node (Redis: queued,
    sent, dropped, received, rejected, reconnects, subscribed)."""
    server = _server(pubsub)
    stats = getattr(server, "statistics", None)
    return {"adapter": "mesh"} if stats is None else stats()


async def wait_subscribed(pubsub: str | None = None, timeout: float = 5.0) -> bool:
    """Until this node receives PubSub ``pubsub``'s publishes from other nodes
    (a Redis PubSub: its subscription is in place); ``False`` after ``timeout``."""
    waiter = getattr(_server(pubsub), "wait_subscribed", None)
    return True if waiter is None else await waiter(timeout)


def system_children() -> list[tuple[Any, ...]]:
    """Every node's default PubSub, for the node's system supervisor: through
    Redis if the node has option ``pubsub_url``."""
    config = lowlevel.current_node().config
    url = getattr(config, "pubsub_url", None)
    return [_server_spec(DEFAULT, registry.DEFAULT, url, {})]

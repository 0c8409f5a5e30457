"""Distributed PubSub, built the way Phoenix.PubSub's PG2 adapter is built.

- ``subscribe`` registers the caller in the node's duplicate Registry under
  the topic; ``unsubscribe`` removes all of its entries.
- ``publish`` pickles the message once, sends one ``Forward`` frame to the
  ``PGServer`` of every other node in the group ``("hermes", name)``, and
  delivers to this node's subscribers before it returns.
- A ``PGServer`` receiving a ``Forward`` unpickles it once and fans it out to
  its own node's subscribers: a publish of a 20 kB message to 200 subscribers
  on another node writes about 20 kB, not 200 copies.

If the message must cross nodes and cannot be pickled, ``publish`` raises
``SerializationError`` before anyone, local or remote, receives it.
"""
from __future__ import annotations

import logging
from typing import Any

from . import pg, registry
from ._errors import HermesError
from .dist._codec import dumps, loads
from .runtime import Actor, Pid
from .runtime import _node as _nodemod

log = logging.getLogger("hermes.pubsub")

DEFAULT = "hermes.pubsub"


class Forward:
    """The one frame per remote node: a topic and the already pickled message."""

    __slots__ = ("topic", "payload", "exclude")

    def __init__(self, topic: Any, payload: bytes, exclude: Pid | None) -> None:
        self.topic = topic
        self.payload = payload
        self.exclude = exclude

    def __reduce__(self) -> tuple[Any, ...]:
        return (Forward, (self.topic, self.payload, self.exclude))


class PGServer(Actor):
    """One per PubSub per node: receives remote publishes and fans them out locally."""

    def __init__(self, name: str, registry_name: str) -> None:
        self.name = name
        self.registry_name = registry_name
        _instances()[name] = self
        pg.join(group_of(name))

    def handle_info(self, msg: Any) -> None:
        if type(msg) is not Forward:
            log.warning("PGServer %s ignored a message that is not a Forward: %r", self.name, type(msg))
            return
        try:
            message = loads(msg.payload)
        except Exception:
            log.error("PGServer %s could not unpickle a message on topic %r", self.name, msg.topic, exc_info=True)
            return
        _deliver_local(self.registry_name, msg.topic, message, msg.exclude)

    def terminate(self, reason: Any) -> None:
        _instances().pop(self.name, None)


def group_of(name: str) -> tuple[str, str]:
    return ("hermes", name)


def _instances() -> dict[str, PGServer]:
    node = _nodemod.get()
    found = getattr(node, "pubsubs", None)
    if found is None:
        found = node.pubsubs = {}  # type: ignore[attr-defined]
    return found  # type: ignore[no-any-return]


def _server(pubsub: str | None) -> PGServer:
    name = pubsub or DEFAULT
    try:
        return _instances()[name]
    except KeyError:
        raise HermesError(f"no PubSub named {name!r} runs on this node") from None


def _deliver_local(registry_name: str, topic: Any, msg: Any, exclude: Pid | None) -> None:
    node = _nodemod._node
    entries = node.registries[registry_name].table.get(topic)  # type: ignore[union-attr]
    if not entries:
        return
    procs = node.procs  # type: ignore[union-attr]
    for pid, values in list(entries.items()):
        if pid == exclude:
            continue
        proc = procs.get(pid)
        if proc is not None:
            for _ in values:
                proc.deliver(msg)


# -- the public API -----------------------------------------------------------

def start(name: str) -> Pid:
    """Start another PubSub instance named ``name`` (with its own registry)."""
    registry_name = f"{name}.registry"
    registry.start(registry_name, keys="duplicate")
    return _spawn_server(name, registry_name)


def _spawn_server(name: str, registry_name: str) -> Pid:
    from .runtime import spawn

    return spawn(PGServer, name, registry_name)


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
    _deliver_local(_server(pubsub).registry_name, topic, msg, exclude)


def publish(topic: Any, msg: Any, *, exclude: Pid | None = None, node: str | None = None,
            pubsub: str | None = None) -> None:
    """Deliver ``msg`` to every subscriber of ``topic`` on every connected node.

    ``exclude``: a pid to skip. ``node``: deliver only on that node (an unknown
    node: nothing). Local subscribers have the message when this returns."""
    server = _server(pubsub)
    here = _nodemod._node
    remote = [pid for pid in pg.get_members(group_of(server.name))
              if pid[0] != here.name and (node is None or pid[0] == node)]  # type: ignore[union-attr]
    if remote:
        frame = Forward(topic, dumps(msg), exclude)  # pickled once, before anyone gets it
        dist = here.dist  # type: ignore[union-attr]
        for pid in remote:
            dist.send(pid, frame)
    if node is None or node == here.name:  # type: ignore[union-attr]
        _deliver_local(server.registry_name, topic, msg, exclude)


async def start_default(node: Any, **_: Any) -> None:
    """Layer start hook for ``run``: every node runs the default PubSub."""
    _spawn_server(DEFAULT, registry.DEFAULT)
    return None

"""Distributed PubSub, built the way Phoenix.PubSub's PG2 adapter is built.

- ``subscribe`` registers the caller in the node's duplicate Registry under
  the topic; ``unsubscribe`` removes all of its entries.
- ``publish`` pickles one frame, ``(FORWARD, topic, msg, exclude)`` addressed
  to the PGServer's registered name, and writes those same bytes once to every
  other node that has a member in the group ``("hermes", name)``; then it
  delivers to this node's subscribers, before it returns.
- A ``PGServer`` receiving a forward fans it out to its own node's
  subscribers: a publish of a 20 kB message to 200 subscribers on another
  node writes about 20 kB, not 200 copies, and is pickled once however many
  nodes there are.

If the message must cross nodes and cannot be pickled, ``publish`` raises
``SerializationError`` before anyone, local or remote, receives it.
"""
from __future__ import annotations

import logging
from typing import Any

from . import pg, registry
from ._errors import HermesError, SerializationError
from .dist._codec import dumps
from .pg._scope import get_scope
from .runtime import Actor, Pid, register
from .runtime import _node as _nodemod

log = logging.getLogger("hermes.pubsub")

DEFAULT = "hermes.pubsub"


FORWARD = "hermes.pubsub.forward"  # tags the tuple a PGServer receives from another node


class PGServer(Actor):
    """One per PubSub per node: receives remote publishes and fans them out locally."""

    def __init__(self, name: str, registry_name: str) -> None:
        self.name = name
        self.registry_name = registry_name
        register(name)  # remote publishes are addressed (name, node): one frame fits every node
        _instances()[name] = self
        pg.join(group_of(name))

    def handle_info(self, msg: Any) -> None:
        if type(msg) is not tuple or len(msg) != 4 or msg[0] != FORWARD:
            log.warning("PGServer %s ignored a message that is not a forward: %r", self.name, type(msg))
            return
        _, topic, message, exclude = msg
        _deliver_local(self.registry_name, topic, message, exclude)

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
    name = here.name  # type: ignore[union-attr]
    remote = {pid[0] for pid in get_scope().members_view(group_of(server.name))
              if pid[0] != name and (node is None or pid[0] == node)}
    if remote:
        payload = _pickle_forward(server.name, topic, msg, exclude)  # before anyone gets it
        dist = here.dist  # type: ignore[union-attr]
        for other in remote:
            dist.send_payload(other, payload)
    if node is None or node == name:
        _deliver_local(server.registry_name, topic, msg, exclude)


def _pickle_forward(server: str, topic: Any, msg: Any, exclude: Pid | None) -> bytes:
    try:
        return dumps(("send_name", server, (FORWARD, topic, msg, exclude)))
    except SerializationError:
        dumps(msg)  # raise naming the message's own type, not our tuple's
        raise


async def start_default(node: Any, **_: Any) -> None:
    """Layer start hook for ``run``: every node runs the default PubSub."""
    _spawn_server(DEFAULT, registry.DEFAULT)
    return None

"""The PubSub adapter behaviour, as Phoenix.PubSub.Adapter: what carries a
publish to the *other* nodes.

``publish`` (``_api``) delivers to this node's subscribers itself; the adapter
only gets the message to the subscribers of other nodes, where it is fanned
out through that node's registry (``fan_out``), exactly as a local publish.
Two adapters implement it: ``PGServer`` (``_pg2``, the mesh: one frame per node
with a member in the group) and ``RedisServer`` (``_redis``: one PUBLISH,
one subscription per node).

An adapter is the PubSub instance's server actor on this node: it is
registered under the PubSub's name, listed in ``instances()``, and a member of
the process group ``("hermes", name)`` (the nodes where the PubSub runs,
whatever carries it). It must not know the API above it.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

from .. import pg, registry
from ..runtime import Actor, Pid, register
from ..runtime import lowlevel

log = logging.getLogger("hermes.pubsub")

DEFAULT = "hermes.pubsub"  # the PubSub every node runs
REJOIN = "hermes.pubsub.rejoin"  # the pg scope restarted empty: join our group again


@dataclass(frozen=True, slots=True)
class Reconnected:
    """Sent to the subscribers of PubSub ``pubsub`` after its adapter lost and
    regained its link (Redis): messages published meanwhile may be missing."""

    pubsub: str


class Adapter(Actor):
    """One per PubSub per node. Subclasses implement the two broadcasts."""

    def __init__(self, name: str, registry_name: str) -> None:
        self.name = name
        self.registry_name = registry_name
        # read directly on every delivery; if that Registry restarts, so does
        # this server (rest_for_one), and finds the new one
        self.registry = registry.get_registry(registry_name)
        self.group = group_of(name)
        self.node = lowlevel.current_node()
        self.thread = self.node.thread  # the thread rule's ident, read by every publish (fixed for the node's life)
        self.pg = pg.get_scope().wiring  # not the scope itself: a restarted scope replaces it there
        register(name)  # remote publishes are addressed (name, node): one frame fits every node
        instances()[name] = self
        pg.join(self.group)
        # A restarted pg scope starts empty, as Erlang's does; a server that
        # outlives it joins again (the default one is restarted after it).
        self._rejoin = functools.partial(self.node.send, lowlevel.process_of_actor(self).pid, REJOIN)
        self.pg.after_restart[self.group] = self._rejoin

    def broadcast(self, topic: Any, msg: Any, exclude: Pid | None) -> None:
        """Deliver to the subscribers of ``topic`` on every *other* node.
        ``SerializationError`` before anything leaves if ``msg`` cannot be pickled.
        ``publish`` has checked that ``topic`` is hashable (so does ``direct_broadcast``'s caller)."""
        raise NotImplementedError

    def direct_broadcast(self, node: str, topic: Any, msg: Any, exclude: Pid | None) -> None:
        """Deliver to the subscribers of ``topic`` on ``node`` (another node) only."""
        raise NotImplementedError

    def handle_info(self, msg: Any) -> None:
        if msg == REJOIN:
            if lowlevel.process_of_actor(self).pid not in pg.get_local_members(self.group):
                pg.join(self.group)
        else:
            log.warning("PubSub server %s ignored a message: %r", self.name, type(msg))

    def terminate(self, reason: Any) -> None:
        if instances().get(self.name) is self:
            del instances()[self.name]
        if self.pg.after_restart.get(self.group) is self._rejoin:
            del self.pg.after_restart[self.group]


def group_of(name: str) -> tuple[str, str]:
    return ("hermes", name)


def instances() -> dict[str, Adapter]:
    """This node's PubSub servers by name (``node.layers["pubsub"]``)."""
    return lowlevel.current_node().layers.setdefault("pubsub", {})


def fan_out(reg: registry.Registry, topic: Any, msg: Any, exclude: Pid | None) -> None:
    """Deliver ``msg`` to this node's subscribers of ``topic``, once per
    subscription. ``deliver`` runs no actor code, so the targets cannot change
    under us."""
    targets = reg.delivery.get(topic) or reg.targets(topic)
    if exclude is None:
        for _, deliver in targets:
            deliver(msg)
    else:
        for pid, deliver in targets:
            if pid != exclude:
                deliver(msg)

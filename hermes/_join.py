"""The first discovery round, and ``wait_for_nodes``.

A node that starts and publishes at once must reach the cluster it joins:
``run`` begins ``main`` and ``start`` returns only once every node that the pg
service (or the static ``peers``) listed at start is *ready* or has *failed*,
within the option ``join_timeout``. Ready means connected **and** its groups
visible here: its PubSub server's membership is in our pg replica, so a
``publish`` goes to it. Failed means the connection was refused or timed out
(a dead node the service still lists until its lease ends).

It only reads the layers below (mesh connections, the pg replica, the
service client's node list) and polls them: it changes nothing.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import pg
from ._errors import NameInUse
from .mesh import of as dist_of
from .pubsub import DEFAULT, group_of
from .runtime import lowlevel
from .runtime.lowlevel import Node

log = logging.getLogger("hermes")
POLL = 0.01  # seconds between looks at the replica while waiting


def ready_nodes(node: Node) -> set[str]:
    """Connected nodes whose default PubSub server is visible in our replica."""
    dist = dist_of(node)
    if dist is None:
        return set()
    connected = set(dist.nodes())
    visible = {pid[0] for pid in pg.get_members(group_of(DEFAULT))}
    return connected & visible


def _service_client(node: Node) -> Any:
    for service in node.layers.get("hermes.services", ()):
        client = getattr(service, "client", None)
        if client is not None:
            return client
    return None


async def _listed(node: Node, deadline: float) -> tuple[list[str], list[tuple[str, int]]]:
    """Names the service lists (after its first snapshot), and the static peers."""
    config = node.config
    peers = list(config.peers or ()) if config is not None else []
    client = _service_client(node)
    if client is None:
        return [], peers
    loop = node.loop
    while client.statistics()["snapshots"] == 0 and loop.time() < deadline:
        await asyncio.sleep(POLL)
    await asyncio.sleep(0)  # the snapshot is applied by a callback the client's thread queued
    listed = client.nodes()
    mine = listed.get(node.name)
    if mine is not None and mine[0] != node.creation:  # race: another node took our name after us
        raise NameInUse(node.name, tuple(mine[1]) if mine[1] is not None else None)
    return [name for name in listed if name != node.name], peers


async def first_round(node: Node, timeout: float) -> None:
    """Wait until every listed node is ready or failed, for at most ``timeout``."""
    dist = dist_of(node)
    if dist is None or dist.hidden:
        return
    loop = node.loop
    deadline = loop.time() + timeout
    names, peers = await _listed(node, deadline)
    if not names and not peers:
        return
    attempts = [loop.create_task(dist.connect_in_turn(name)) for name in names]  # they know us too
    attempts += [loop.create_task(dist.connect_address((str(address[0]), int(address[1])))) for address in peers]
    done, pending = await asyncio.wait(attempts, timeout=max(0.0, deadline - loop.time()))
    for task in pending:
        task.cancel()
    expected = {name for name, task in zip(names, attempts) if task in done and not task.cancelled()
                and task.exception() is None and task.result()}
    if peers:  # static peers are known by address: the names are those we are now connected to
        expected |= set(dist.nodes())
    while not expected <= ready_nodes(node) and loop.time() < deadline:
        expected &= set(dist.nodes())  # a node that went meanwhile has failed
        await asyncio.sleep(POLL)
    missing = expected - ready_nodes(node)
    if missing or pending:
        log.warning("node %s: first discovery round incomplete after %.1fs (not ready: %s)",
                    node.name, timeout, ", ".join(sorted(missing)) or f"{len(pending)} connecting")


async def wait_for_nodes(n: int | None = None, *, names: list[str] | None = None,
                         timeout: float = 10.0) -> list[str]:
    """Wait until at least ``n`` other nodes, or all of ``names``, are connected
    and their groups visible; return the ready nodes' names (sorted).
    ``TimeoutError`` if that does not happen within ``timeout`` seconds."""
    from ._app import full_name

    if n is None and names is None:
        raise TypeError("wait_for_nodes() needs n= (a number of nodes) or names= (their names)")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"n is a number of nodes >= 0, not {n!r}")
    wanted = {full_name(name) for name in names} if names is not None else set()
    node = lowlevel.current_node()
    loop = node.loop
    deadline = loop.time() + timeout

    def satisfied(ready: set[str]) -> bool:
        return wanted <= ready and (n is None or len(ready) >= n)

    ready = ready_nodes(node)
    while not satisfied(ready):
        if loop.time() >= deadline:
            missing = sorted(wanted - ready)
            raise TimeoutError(f"wait_for_nodes: {len(ready)} node(s) ready after {timeout}s"
                               + (f"; not ready: {', '.join(missing)}" if missing else f", wanted {n}"))
        await asyncio.sleep(POLL)
        ready = ready_nodes(node)
    return sorted(ready)

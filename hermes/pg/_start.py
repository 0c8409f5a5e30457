"""Starting pg on a node: the scope actor, its mesh listeners, the service client.

``cluster=None``: a standalone node (no service started or contacted).
``cluster="local"``: the default local cluster at 127.0.0.1:4370, starting the
service there if none answers, as epmd is started by the first node.
``cluster="HOST:PORT"``: the service at that address.
"""
from __future__ import annotations

import asyncio
import logging
from multiprocessing import AuthenticationError
from typing import Any

from .._config import NodeConfig, TLSConfig, parse_address
from .._errors import HermesError, NameInUse
from ..mesh import aligned_delay, of as dist_of
from ..runtime.lowlevel import Node
from ._client import ServiceClient
from ._scope import Scope, Wiring, current_scope, get_scope
from ._service import DEFAULT_PORT, ServiceConnection, start_service_process
from ._wire import CookieRejected, check_service

log = logging.getLogger("hermes.pg")
SERVICE_IDLE_EXIT = 60.0  # a service a node started by itself outlives its last node by this
RECONCILE_INTERVAL = 1.0  # seconds between checks of the mesh against the directory
# Seconds a quiet feed long poll waits at the service: an idle node's feed thread and
# the service wake this often. A lost service is noticed by the socket (EOF) or the
# writer's heartbeats, not by this timeout.
FEED_POLL = 5.0


def parse_cluster(cluster: str) -> tuple[str, int]:
    if cluster == "local":
        return ("127.0.0.1", DEFAULT_PORT)
    return parse_address(cluster)


class PgService:
    """What ``run`` keeps to stop pg: the service client, if any."""

    def __init__(self, node: Node, client: ServiceClient | None) -> None:
        self.node = node
        self.client = client
        self.reconciler: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        if self.reconciler is not None:
            self.reconciler.cancel()
        if self.client is not None:
            await self.node.loop.run_in_executor(None, self.client.close)


def system_children() -> list[tuple[Any, ...]]:
    """The pg scope, for the node's system supervisor."""
    return [(Scope,)]


async def start(node: Node, config: NodeConfig) -> PgService:
    """Wire the scope (already started by the system supervisor) to the cluster.

    Every callback looks the scope up when it runs: a restarted scope is
    wired the same way without anything being re-registered."""
    cluster, lease_ttl = config.cluster, config.lease_ttl
    scope = get_scope()
    wiring = scope.wiring
    dist = dist_of(node)
    if dist is not None:  # pg's one clause for a node's arrival and one for its loss, as pg.erl's
        dist.on_node_up(lambda name, peer: _on_scope(node, "visibility_changed", name, {}))
        dist.on_node_down(lambda name, creation, lost: _node_down(node, wiring, name, creation, lost))
    if dist is not None and not dist.hidden:
        _membership_over_mesh(node, wiring, dist)  # deltas in one hop; with a service too
    if cluster is None or dist is None:
        return PgService(node, None)
    address = parse_cluster(cluster)
    if dist.hidden:  # a hidden node only looks names up; it never registers
        # a service that rejects the cookie is a configuration error, said at start
        await node.loop.run_in_executor(None, lambda: check_service(address, dist.cookie, tls=config.tls))
        dist.resolvers.append(lambda name: _lookup(address, dist.cookie, name, config.tls))
        return PgService(node, None)
    await node.loop.run_in_executor(None, _ensure_service, address, dist.cookie, cluster == "local", lease_ttl,
                                    config.tls)
    await _claim_name(node, address, dist.cookie, config.connect_timeout, config.tls)
    loop = node.loop

    def on_event(kind: str, payload: Any) -> None:  # called on the client's threads
        loop.call_soon_threadsafe(_on_scope, node, "apply_feed", kind, payload)

    client = ServiceClient(address, dist.cookie, node.name, node.creation, tuple(dist.local.address),
                           on_event=on_event, local_memberships=scope.local_snapshot, lease_ttl_hint=lease_ttl,
                           tls=config.tls, poll_timeout=FEED_POLL, local_seq=lambda: wiring.seq)
    wiring.client = client
    wiring.resync_grace = lease_ttl  # every live node re-registers within a lease period
    dist.resolvers.append(lambda name: _address_of(client, name))
    client.start()
    service = PgService(node, client)
    service.reconciler = loop.create_task(_reconcile(dist, client, RECONCILE_INTERVAL))
    return service


async def _reconcile(dist: Any, client: ServiceClient, interval: float) -> None:
    """Discovery that keeps going (libcluster's polling, not LocalEpmd's one shot):
    connect to every node the directory lists that we are not connected to, so a
    peer dropped by ticks while it was frozen or busy is found again. On the
    boundaries of ``interval`` (as the ticks): no wake-up of its own."""
    while True:
        await asyncio.sleep(aligned_delay(interval))
        for name, (_creation, address) in client.nodes().items():
            if address is not None and name not in dist.conns:
                dist.connect_soon(name, tuple(address), in_turn=True)


def _membership_over_mesh(node: Node, wiring: Wiring, dist: Any) -> None:
    """Nodes tell each other their memberships directly, as Erlang's pg: the whole
    local membership (and its number) on each new connection, then every change.
    With a service, the service stays the directory and the truth after
    reconnects; the numbers let a replica take each change once (see ``_scope``)."""
    wiring.over_mesh = True
    dist.on_node_up(lambda name, peer: _on_scope(node, "mesh_connected", name, peer))
    for tag, method in (("pg_sync", "mesh_sync"), ("pg_delta", "mesh_delta"), ("pg_hello", "mesh_hello")):
        dist.register_frame(tag, lambda _dist, conn, frame, method=method: _on_scope(node, method, conn, frame))
    for name in dist.nodes():  # race: links that came up before pg was wired
        _on_scope(node, "mesh_connected", name, dist.peer(name))
        dist.send_frame(name, ("pg_hello",))  # its pg_sync may have come before our handlers: ask again


def _on_scope(node: Node, method: str, *args: Any) -> None:
    """Call ``method`` of the live scope; nothing while it restarts (the new
    scope fetches the whole state again)."""
    scope = current_scope(node)
    if scope is not None:
        getattr(scope, method)(*args)


def _node_down(node: Node, wiring: Wiring, name: str, creation: int, lost: bool) -> None:
    """A connection is gone: its members leave this replica; if the peer vanished
    (not a deliberate close by either side), the service hears of it at once
    instead of waiting for its lease."""
    if lost and wiring.client is not None:
        wiring.client.report_down(name, creation)
    scope = current_scope(node)
    if scope is None:
        return
    entry = scope.remote.get(name)
    was = {g: list(p) for g, p in entry[1].items()} if entry is not None and entry[0] == creation else {}
    scope.visibility_changed(name, was)


async def _claim_name(node: Node, service: tuple[str, int], cookie: bytes, timeout: float,
                      tls: TLSConfig | None = None) -> None:
    """``NameInUse`` if the directory lists our name at an address where a node
    still listens. A holder that is dead (killed, its lease not yet run out)
    refuses the connection: we start at once and our newer creation replaces it.
    (Two nodes that start with one name at the same instant are settled after
    registering: see ``_join``.)"""
    holder = await node.loop.run_in_executor(None, _lookup, service, cookie, node.name, tls)
    if holder is None:
        return
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(*holder), min(timeout, 1.0))
    except (OSError, TimeoutError):
        return  # nobody listens there any more: the holder is dead
    writer.close()
    raise NameInUse(node.name, holder)


def _address_of(client: ServiceClient, name: str) -> tuple[str, int] | None:
    entry = client.nodes().get(name)
    return tuple(entry[1]) if entry is not None and entry[1] is not None else None


def _lookup(address: tuple[str, int], cookie: bytes, name: str,
            tls: TLSConfig | None = None) -> tuple[str, int] | None:
    """Ask the service where ``name`` listens (blocking, brief: hidden nodes, the name check)."""
    try:
        conn = ServiceConnection(address, cookie, timeout=2.0, name="hermes-lookup", tls=tls)
    except CookieRejected as exc:
        log.warning("cannot look up %s: %s", name, exc)
        return None
    except (HermesError, OSError, AuthenticationError):
        return None
    try:
        entry = conn.call("nodes").get(name)
    except (HermesError, OSError):
        return None
    finally:
        conn.close()
    return tuple(entry[1]) if entry is not None and entry[1] is not None else None


def _ensure_service(address: tuple[str, int], cookie: bytes, may_start: bool, lease_ttl: float,
                    tls: TLSConfig | None = None) -> None:
    """Blocking (run in a thread): make sure a service answers at ``address``.
    A service that answers but rejects the cookie is ``CookieRejected`` at once:
    waiting or starting another would not help."""
    if check_service(address, cookie, tls=tls):
        return
    if not may_start:
        log.warning("no pg service answers at %s:%d yet; the node will keep trying", *address)
        return
    try:
        start_service_process(address[0], address[1], cookie, lease_ttl=lease_ttl,
                              idle_exit=SERVICE_IDLE_EXIT, detached=True, tls=tls)
        log.info("started the local pg service at %s:%d", *address)
    except (HermesError, OSError, RuntimeError) as exc:  # another node started it first
        if not check_service(address, cookie, timeout=2.0, tls=tls):
            raise HermesError(f"no pg service at {address[0]}:{address[1]} and could not start one") from exc

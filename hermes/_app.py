"""``run``: start a node in this process, with every layer it carries.

This is the one module that knows all the layers, top to bottom: it creates
the runtime ``Node``, starts distribution, the default Registry, the pg scope
and the default PubSub, spawns ``main``, and tears everything down in reverse.
``open_node`` / ``close_node`` are those steps without the loop, the signals
or ``main``: ``run`` and ``start`` (``_embed``) share them.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import threading
import time
from typing import Any, Callable

from ._config import NodeConfig
from ._errors import ActorExited, HermesError
from ._join import first_round
from .runtime import lowlevel
from .runtime.lowlevel import Node, default_host

log = logging.getLogger("hermes")


def full_name(name: str) -> str:
    """``"alice"`` -> ``"alice@HOST"`` (short host name), as ``--sname`` does."""
    if not name or name.startswith("@"):
        raise ValueError(f"invalid node name {name!r}")
    return name if "@" in name else f"{name}@{default_host()}"


def new_creation() -> int:
    """An incarnation number that grows across restarts (microseconds since the
    epoch), so the service and the replicas always prefer the newest start."""
    return time.time_ns() // 1000


def run(main: Callable[..., Any] | None = None, *args: Any, name: str, cookie: str | bytes | None = None,
        cluster: str | None = None, host: str = "127.0.0.1", port: int = 0, **options: Any) -> Any:
    """Run a node in this process until ``main`` ends (or forever without one).

    Returns what ``main`` returned, or raises what it raised. Options are
    checked (``NodeConfig``) before anything starts."""
    config = NodeConfig.build(name=name, cookie=cookie, cluster=cluster, host=host, port=port, **options)
    return run_on_loop(run_async(main, *args, config=config), config.loop)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for option ``loop``: ``None`` is asyncio's own.

    ``"auto"`` takes uvloop when it is importable (about half the cost per
    loop turn); ``"uvloop"`` without it installed is a ``HermesError`` saying
    how to install it, raised before anything starts."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:
        if choice == "auto":
            return None
        raise HermesError("option loop='uvloop' needs uvloop: pip install 'hermes-actors[uvloop]' "
                          "(or use loop='auto')") from exc
    return uvloop.new_event_loop


def run_on_loop(coro: Any, choice: str) -> Any:
    """``asyncio.run(coro)`` on the loop that option ``loop`` names."""
    try:
        factory = loop_factory(choice)
    except BaseException:
        coro.close()  # never awaited: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


async def run_async(main: Callable[..., Any] | None = None, *args: Any, config: NodeConfig | None = None,
                    ready: Callable[[Node], Any] | None = None, **options: Any) -> Any:
    """``run`` on the running loop, with SIGINT/SIGTERM handlers (the node process's
    and ``run``'s body). Takes the options of ``run`` or a built ``config``."""
    config = _config_of(config, options)
    if config.name is None:
        raise TypeError("run() needs name=: the node's name, NAME or NAME@HOST")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    node, services = await open_node(config)
    node.request_stop = stop.set
    _install_signal_handlers(loop, stop)
    try:
        if ready is not None:
            ready(node)
        return await _run_main(node, main, args, stop)
    finally:
        _remove_signal_handlers(loop)
        await close_node(node, services)


def _config_of(config: NodeConfig | None, options: dict[str, Any]) -> NodeConfig:
    if config is None:
        return NodeConfig.build(**options)
    return config.replace(**options) if options else config


async def open_node(config: NodeConfig) -> tuple[Node, list[Any]]:
    """Start a node on the running loop, as an outline: claim the process's one
    node, create the runtime, start the layers, then the first discovery round.
    Returns the runtime node and the services to stop (``close_node``). On any
    failure, what was started is stopped again and the process has no node."""
    if lowlevel.node_or_none() is not None:
        raise HermesError("a Hermes node is already running in this process (one node per process)")
    name = full_name(config.name) if config.name is not None else unique_name()
    node = Node(name, asyncio.get_running_loop(), creation=new_creation())
    node.config = config
    lowlevel.set_current_node(node)
    lowlevel.install_task_factory(node)
    services: list[Any] = []
    try:
        await _start_layers(node, services, config)
        node.layers[SERVICES] = services
        await first_round(node, config.join_timeout)
    except BaseException:
        await close_node(node, services)
        raise
    return node, services


async def close_node(node: Node, services: list[Any]) -> None:
    """Stop the node's actors (``terminate("shutdown")``), then its services in
    reverse (links close with ``bye``, the pg service is told), and free the process."""
    try:
        await node.shutdown()
        for service in reversed(services):
            try:
                await service.stop()
            except Exception:
                log.exception("error while stopping %r", service)
    finally:
        lowlevel.uninstall_task_factory(node)
        if lowlevel.node_or_none() is node:
            lowlevel.set_current_node(None)


def unique_name() -> str:
    """A node name no other process of this host uses now (``uvicorn --workers N``)."""
    return full_name(f"hermes-{os.getpid()}-{secrets.token_hex(3)}")


async def _run_main(node: Node, main: Callable[..., Any] | None, args: tuple[Any, ...],
                    stop: asyncio.Event) -> Any:
    stopped = asyncio.ensure_future(stop.wait())
    if main is None:
        await stopped
        return None
    pid = node.spawn(main, args, {}, parent=None, link=False)
    proc = node.procs.get(pid)
    if proc is None:  # died in __init__ already
        raise RuntimeError(f"main actor {pid} failed to start")
    done = node.done_future(proc)
    await asyncio.wait([done, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not done.done():
        return None  # interrupted: SIGINT/SIGTERM
    reason = done.result()
    if isinstance(reason, BaseException):
        raise reason
    if reason not in ("normal", "shutdown"):  # ended by an exit signal: exit(main, "boom"), "kill"
        raise ActorExited(pid, reason)
    return getattr(proc, "result", None)


SYSTEM = "hermes.system"
SERVICES = "hermes.services"  # node.layers key: what open_node started (read by _join)


async def _start_layers(node: Node, services: list[Any], config: NodeConfig) -> None:
    """Bottom up: distribution; then the node's own actors (default Registry,
    pg scope, default PubSub) under one ``rest_for_one`` supervisor, as an OTP
    application would, so a crashed scope restarts and the PGServer after it
    joins again; then pg's link to the cluster (the service client)."""
    from . import presence, pubsub, registry
    from . import mesh as dist_layer
    from . import pg as pg_layer
    from .runtime import Supervisor

    services.append(await dist_layer.start(node, config))
    children = (registry.system_children() + presence.system_children() + pg_layer.system_children()
                + pubsub.system_children())  # presence does not restart with pg or pubsub
    supervisor = node.spawn(Supervisor, (children,), {"strategy": "rest_for_one", "max_restarts": 5,
                                                      "max_seconds": 5.0}, parent=None, link=False)
    node.names[SYSTEM] = supervisor
    node.procs[supervisor].name = SYSTEM
    if config.pubsub_url and not await pubsub.wait_subscribed(timeout=config.join_timeout):
        log.warning("node %s: not subscribed to Redis at start (pubsub_url); it keeps trying", node.name)
    services.append(await pg_layer.start(node, config))


def _install_signal_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass


def _remove_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.remove_signal_handler(sig)
        except (NotImplementedError, RuntimeError):
            pass

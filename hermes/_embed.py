"""``start``: a node on a loop that someone else runs (an ASGI lifespan, a test).

``run`` owns its loop, its signals and its lifetime; ``start`` owns none of
them. It starts the same layers as ``run`` on the *running* loop, installs no
signal handlers, never calls ``asyncio.run``, and returns a ``Node`` handle
once the first discovery round is done. The host stops it (``await
node.stop()``, or by leaving ``async with start(...)``).

The handle is the one way in from another thread: ``node.submit(fn, *args)``
runs ``fn`` on the node's loop and returns a ``concurrent.futures.Future``.
Any other public call made off that thread raises ``HermesError``.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from typing import Any, Callable, Coroutine, Generator

from ._app import close_node, open_node
from ._config import NodeConfig
from ._errors import HermesError
from .runtime import lowlevel


class Node:
    """A handle on the node that ``start`` started in this process."""

    def __init__(self, runtime: lowlevel.Node, services: list[Any]) -> None:
        self._runtime = runtime
        self._services = services
        self._stopping: asyncio.Future[None] | None = None
        runtime.request_stop = self._request_stop

    @property
    def name(self) -> str:
        """The node's full name, ``"NAME@HOST"``."""
        return self._runtime.name

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the node runs on."""
        return self._runtime.loop

    @property
    def stopped(self) -> bool:
        return self._stopping is not None and self._stopping.done()

    async def stop(self) -> None:
        """Stop the node: every actor gets ``terminate("shutdown")``, the links
        close with ``bye``, the pg service is told. Idempotent: a second call
        (or a concurrent one) waits for the first."""
        if self._stopping is None:
            self._stopping = self._runtime.loop.create_future()
            try:
                await close_node(self._runtime, self._services)
            finally:
                self._stopping.set_result(None)
        else:
            await asyncio.shield(self._stopping)

    def _request_stop(self) -> None:
        if self._stopping is None:
            self._runtime.loop.create_task(self.stop())

    def statistics(self) -> dict[str, Any]:
        """A snapshot of the node's runtime (processes, queued messages, nodes)."""
        return self._runtime.statistics()

    def submit(self, fn_or_coro: Callable[..., Any] | Any, *args: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args)`` (awaited if it returns an awaitable), or a coroutine,
        on the node's loop from any thread; its result or exception comes back
        through the returned ``concurrent.futures.Future``."""
        if inspect.iscoroutine(fn_or_coro):
            if args:
                raise TypeError("submit(coroutine) takes no arguments; pass the function and its arguments")
            coro: Coroutine[Any, Any, Any] = fn_or_coro
        elif callable(fn_or_coro):
            coro = _call(fn_or_coro, args)
        else:
            raise TypeError(f"submit() takes a function or a coroutine, not {type(fn_or_coro).__name__}")
        if self._stopping is not None:
            coro.close()
            raise HermesError(f"node {self.name} is stopped")
        return asyncio.run_coroutine_threadsafe(coro, self._runtime.loop)

    def __repr__(self) -> str:
        return f"<hermes.Node {self.name}{' stopped' if self._stopping is not None else ''}>"


async def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    result = fn(*args)
    return await result if inspect.isawaitable(result) else result


class _Starting:
    """What ``start`` returns: awaitable (``node = await start()``) and an async
    context manager (``async with start() as node:``, stopped on exit)."""

    def __init__(self, config: NodeConfig) -> None:
        self._config = config
        self._node: Node | None = None

    def __await__(self) -> Generator[Any, None, Node]:
        return self._start().__await__()

    async def _start(self) -> Node:
        if self._node is not None:
            raise HermesError("this start() was already awaited")
        runtime, services = await open_node(self._config)
        self._node = Node(runtime, services)
        return self._node

    async def __aenter__(self) -> Node:
        return await self._start()

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._node is not None:
            await self._node.stop()


def start(name: str | None = None, *, cookie: str | bytes | None = None, cluster: str | None = None,
          host: str = "127.0.0.1", port: int = 0, **options: Any) -> _Starting:
    """Start a node on the running loop: ``node = await start(...)`` or
    ``async with start(...) as node:``. ``name=None`` makes a unique name.
    Options are checked (``NodeConfig``) here, before anything starts."""
    config = NodeConfig.build(name=name, cookie=cookie, cluster=cluster, host=host, port=port, **options)
    return _Starting(config)

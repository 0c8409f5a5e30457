"""The node process entry point: ``python -m hermes node ...``.

Runs one node in the foreground until SIGTERM/SIGINT (or, when started by a
``LocalCluster``, until its control channel closes). ``--app MODULE:FUNCTION``
is spawned as the node's first actor.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from typing import Any, Callable

from .._app import run
from ..runtime import _node as _nodemod
from ..runtime._api import rpc
from ..runtime._node import Node
from . import _control

log = logging.getLogger("hermes.cluster")


def load_app(spec: str) -> Callable[..., Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--app is MODULE:FUNCTION, not {spec!r}")
    sys.path.insert(0, os.getcwd())
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    return target


def run_node(name: str, *, host: str = "127.0.0.1", port: int = 0, cookie: str | None = None,
             cluster: str | None = None, app: str | None = None, control_fd: int | None = None,
             tick_interval: float = 1.0, lease_ttl: float = 3.0, peers: list[str] | None = None) -> None:
    main = load_app(app) if app else None
    ready = _attach_control(control_fd) if control_fd is not None else None

    async def first_actor() -> None:
        if main is not None:
            from ..runtime import spawn

            spawn(main)
        await asyncio.Event().wait()  # run until stopped

    run(first_actor, name=name, cookie=cookie, cluster=cluster, host=host, port=port, ready=ready,
        tick_interval=tick_interval, lease_ttl=lease_ttl, peers=peers)


def _attach_control(control_fd: int) -> Callable[[Any], None]:
    """Serve the driver's requests once the node is up; stop on EOF."""

    def ready(node: Any) -> None:
        loop = node.loop

        def run_request(request_id: int, body: bytes) -> None:
            loop.call_soon_threadsafe(_start_request, node, control_fd, request_id, body)

        def on_eof() -> None:
            loop.call_soon_threadsafe(node.request_stop)

        _control.serve_requests(run_request, on_eof)
        _control.write_frame(control_fd, _control.encode_answer(0, "ok", ("ready", node.name)))

    return ready


def _start_request(node: Node, fd: int, request_id: int, body: bytes) -> None:
    async def answer() -> None:
        try:
            fn, args, kwargs = _control.loads(body)  # e.g. ModuleNotFoundError: answered, not fatal
            timeout = kwargs.pop("_hermes_timeout", None)
            value = await rpc(node.name, fn, *args, timeout=timeout, **kwargs)
            frame = _control.encode_answer(request_id, "ok", value)
        except Exception as exc:
            frame = _control.encode_answer(request_id, "error", exc)
        _control.write_frame(fd, frame)

    if _nodemod._node is node:
        node.loop.create_task(answer())

"""The node process entry point: ``python -m hermes node ...``.

Runs one node in the foreground until SIGTERM/SIGINT (or, when started by a
``LocalCluster``, until its control channel closes). ``--app MODULE:FUNCTION``
is spawned as the node's first actor.
"""
from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import sys
from typing import Any, Callable

from .._app import run_async, run_on_loop
from .._config import NodeConfig
from ..runtime import lowlevel
from ..runtime import rpc, spawn
from ..runtime.lowlevel import Node
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


def run_node(options: dict[str, Any], *, app: str | None = None, control_fd: int | None = None) -> None:
    """Run one node with ``options`` (``NodeConfig``'s names) until stopped."""
    _adopt_driver_sys_path()
    config = NodeConfig.build(**options)
    main = load_app(app) if app else None
    ready = _attach_control(control_fd) if control_fd is not None else None

    async def first_actor() -> None:
        if main is not None:
            spawn(main)
        await asyncio.Event().wait()  # run until stopped

    run_on_loop(run_async(first_actor, config=config, ready=ready), config.loop)


def _adopt_driver_sys_path() -> None:
    """A ``LocalCluster`` node imports what its driver imports (``HERMES_SYS_PATH``)."""
    driver_path = os.environ.pop("HERMES_SYS_PATH", None)
    if driver_path:
        sys.path[:] = [p for p in json.loads(driver_path) if isinstance(p, str)]


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

    if lowlevel.node_or_none() is node:
        node.loop.create_task(answer())

"""Stopping a node's actors: newest spawned first, each one's (``async``)
``terminate`` awaited before the next, and the children of a live
``Supervisor`` left to it, so a supervisor stops its own children in its own
order. What is left at the deadline is killed.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ._process import DEAD, RUNNING, ActorProcess, Process

if TYPE_CHECKING:
    from ._node import Node

log = logging.getLogger("hermes.runtime")


async def stop_all(node: Node, timeout: float) -> None:
    deadline = node.loop.time() + timeout
    while node.procs and node.loop.time() < deadline:
        for proc in reversed(list(node.procs.values())):  # the table keeps spawn order
            if proc.state != RUNNING or _supervised(node, proc):
                continue
            proc.exit("shutdown")
            if proc.state != DEAD:  # an async terminate is running: let it finish first
                await _finish(node, proc, deadline)
        if any(p.state == RUNNING and not _supervised(node, p) for p in node.procs.values()):
            continue  # a terminate spawned something: go round again
        break
    for proc in list(node.procs.values()):
        proc.exit("killed")


async def _finish(node: Node, proc: Process, deadline: float) -> None:
    remaining = deadline - node.loop.time()
    if remaining <= 0:
        return
    try:
        await asyncio.wait_for(asyncio.shield(node.done_future(proc)), remaining)
    except TimeoutError:
        log.warning("actor %s did not finish terminate in time", proc.pid)


def _supervised(node: Node, proc: Process) -> bool:
    from ._supervisor import Supervisor

    parent = node.procs.get(proc.parent) if proc.parent is not None else None
    return isinstance(parent, ActorProcess) and isinstance(parent.actor, Supervisor)

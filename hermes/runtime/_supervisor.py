"""``Supervisor``: restarts children by strategy, within a restart intensity.

A child is a ``(target, *args)`` tuple (permanent), or a dict
``{"start": (target, *args), "kwargs": {...}, "id": ..., "restart":
"permanent" | "transient" | "temporary", "shutdown": seconds}``.

As in OTP: children start in order and stop in reverse order; a stop is
``exit(child, "shutdown")``, then ``"kill"`` after the child's shutdown time;
more than ``max_restarts`` restarts within ``max_seconds`` and the supervisor
gives up, stops its children and exits with ``"shutdown"``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ._actor import Actor
from ._api import spawn, trap_exits
from ._messages import Exit
from ._pid import Pid

log = logging.getLogger("hermes.supervisor")

STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
RESTARTS = ("permanent", "transient", "temporary")
NORMAL_REASONS = ("normal", "shutdown")


@dataclass(slots=True)
class ChildSpec:
    id: Any
    target: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    restart: str = "permanent"
    shutdown: float = 5.0

    @classmethod
    def parse(cls, index: int, spec: Any) -> ChildSpec:
        if isinstance(spec, tuple) and spec:
            return cls(index, spec[0], tuple(spec[1:]))
        if isinstance(spec, dict) and "start" in spec:
            start = spec["start"]
            start = start if isinstance(start, tuple) else (start,)
            child = cls(spec.get("id", index), start[0], tuple(start[1:]), dict(spec.get("kwargs", {})),
                        spec.get("restart", "permanent"), float(spec.get("shutdown", 5.0)))
            if child.restart not in RESTARTS:
                raise ValueError(f"restart must be one of {RESTARTS}, not {child.restart!r}")
            return child
        if isinstance(spec, type) or callable(spec):
            return cls(index, spec, ())
        raise ValueError(f"a child is (target, *args) or a dict with 'start', not {spec!r}")


class Supervisor(Actor):
    """Start ``children``, restart them by ``strategy``; exit past the intensity."""

    def __init__(self, children: list[Any], strategy: str = "one_for_one",
                 max_restarts: int = 3, max_seconds: float = 5.0) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
        trap_exits(True)
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.specs = [ChildSpec.parse(i, c) for i, c in enumerate(children)]
        self.pids: list[Pid | None] = [None] * len(self.specs)
        self.restarts: deque[float] = deque()
        for index in range(len(self.specs)):
            self._start(index)

    # -- the protocol ---------------------------------------------------------

    def handle_call(self, request: Any, sender: Pid | None) -> Any:
        if request == "which_children":
            return [(spec.id, pid) for spec, pid in zip(self.specs, self.pids)]
        if request == "count_children":
            return sum(pid is not None for pid in self.pids)
        raise ValueError(f"unknown supervisor request {request!r}")

    async def handle_info(self, msg: Any) -> None:
        if type(msg) is not Exit:
            return
        if msg.pid in self.pids:
            await self._child_exited(self.pids.index(msg.pid), msg.reason)
        elif msg.pid is not None and msg.pid == self._hermes_proc.parent:
            self.stop(msg.reason)  # our parent died: so do we, as in OTP

    async def terminate(self, reason: Any) -> None:
        await self._stop_children(range(len(self.specs)))

    # -- restarts -------------------------------------------------------------

    async def _child_exited(self, index: int, reason: Any) -> None:
        spec = self.specs[index]
        self.pids[index] = None
        if self._hermes_proc.node.stopping or not self._wants_restart(spec, reason):
            return
        if self._intensity_exceeded():
            log.error("supervisor %s: restart intensity reached (%d in %.1fs), shutting down",
                      self.pid, self.max_restarts, self.max_seconds)
            self.stop("shutdown")
            return
        if self.strategy == "one_for_one":
            affected = [index]
        elif self.strategy == "one_for_all":
            affected = list(range(len(self.specs)))
        else:
            affected = list(range(index, len(self.specs)))
        await self._stop_children(affected)
        for i in affected:
            if self.specs[i].restart != "temporary" or i == index:
                self._start(i)

    def _wants_restart(self, spec: ChildSpec, reason: Any) -> bool:
        if spec.restart == "permanent":
            return True
        if spec.restart == "transient":
            return reason not in NORMAL_REASONS
        return False

    def _intensity_exceeded(self) -> bool:
        now = time.monotonic()
        self.restarts.append(now)
        while self.restarts and now - self.restarts[0] > self.max_seconds:
            self.restarts.popleft()
        return len(self.restarts) > self.max_restarts

    def _start(self, index: int) -> None:
        spec = self.specs[index]
        self.pids[index] = spawn(spec.target, *spec.args, link=True, **spec.kwargs)

    async def _stop_children(self, indexes: Any) -> None:
        node = self._hermes_proc.node
        for index in sorted(indexes, reverse=True):
            pid = self.pids[index]
            self.pids[index] = None
            proc = node.procs.get(pid) if pid is not None else None
            if proc is None:
                continue
            done = node.done_future(proc)
            node.route_exit(pid, self.pid, "shutdown")
            try:
                await asyncio.wait_for(asyncio.shield(done), self.specs[index].shutdown)
            except TimeoutError:
                log.warning("supervisor %s: child %s ignored shutdown, killing it", self.pid, pid)
                node.route_exit(pid, self.pid, "kill")
                await done

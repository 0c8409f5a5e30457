"""Flow control in the runtime: bounded mailboxes, process_info, the mailbox warning.

Rules:
- An actor is unbounded unless ``mailbox_limit`` is set (as Erlang). An
  unbounded actor keeps the plain ``deliver`` of ``_process``: flow control
  costs it nothing per message. A bounded one is built from a subclass whose
  ``deliver`` checks the limit first (``BoundedActorProcess``,
  ``BoundedTaskProcess``).
- Only plain messages and casts are ever dropped. Calls (whose caller is
  waiting) and system messages (``Exit``, ``Down``, ``NodeUp``/``NodeDown``)
  always go in, even past the limit.
- ``"drop_oldest"`` drops the oldest droppable message queued, ``"drop_newest"``
  the arriving one, ``"exit"`` ends the actor with ``"mailbox_overflow"`` from its
  own loop callback (never inside the sender's code).
- The mailbox warning is found by a scan of the process table once per
  ``SCAN_INTERVAL`` (not by ``deliver``, which stays as fast as without it):
  an actor is logged once when its mailbox passes ``mailbox_warning``, and again
  only after it fell below half of it.

It knows nothing of the network.
"""
from __future__ import annotations

import heapq
import logging
import time
from typing import TYPE_CHECKING, Any

from ._actor import Call
from ._messages import Down, Exit, NodeDown, NodeUp
from ._process import RUNNING, ActorProcess, Process, TaskProcess

if TYPE_CHECKING:
    from ._node import Node

log = logging.getLogger("hermes.runtime")

OVERFLOWS = ("drop_oldest", "drop_newest", "exit")
SCAN_INTERVAL = 0.5  # seconds between two scans of the process table for the mailbox warning


def next_scan_delay() -> float:
    """Seconds to the next multiple of ``SCAN_INTERVAL`` of ``time.monotonic()`` (at
    least a quarter interval): the scan then shares its loop wake-up with the
    other periodic work of the node (link ticks, the mesh's stall check), aligned
    the same way, instead of waking an idle node twice more per second."""
    delay = SCAN_INTERVAL - time.monotonic() % SCAN_INTERVAL
    return delay + SCAN_INTERVAL if delay < SCAN_INTERVAL / 4 else delay
TOP = 10  # actors listed by statistics(), deepest mailboxes first
_NEVER_DROPPED = frozenset({Call, Exit, Down, NodeDown, NodeUp})


def check_options(mailbox_limit: Any, overflow: Any) -> None:
    """``ValueError``/``TypeError`` naming the bad option, before anything is spawned."""
    if mailbox_limit is not None:
        if type(mailbox_limit) is not int:
            raise TypeError(f"mailbox_limit must be an int or None, not {type(mailbox_limit).__name__}")
        if mailbox_limit < 1:
            raise ValueError(f"mailbox_limit must be at least 1 (or None: unbounded), not {mailbox_limit}")
    if not isinstance(overflow, str):
        raise TypeError(f"overflow must be one of {', '.join(map(repr, OVERFLOWS))}, not {overflow!r}")
    if overflow not in OVERFLOWS:
        raise ValueError(f"overflow must be one of {', '.join(map(repr, OVERFLOWS))}, not {overflow!r}")


_UNBOUNDED = (None, "drop_oldest")


def options_of(target: Any, kwargs: dict[str, Any]) -> tuple[int | None, str]:
    """Take spawn's own ``mailbox_limit``/``overflow`` out of ``kwargs`` (they are
    reserved by spawn, never passed to the target), else the class's attributes.
    The common case (neither given, the class's defaults) is two lookups: spawning
    100k actors must not pay for a feature they do not use."""
    is_class = isinstance(target, type)
    if not kwargs or ("mailbox_limit" not in kwargs and "overflow" not in kwargs):
        if not is_class:
            return _UNBOUNDED
        limit, overflow = getattr(target, "mailbox_limit", None), getattr(target, "overflow", "drop_oldest")
        if limit is None and overflow == "drop_oldest":
            return _UNBOUNDED
    else:
        limit = kwargs.pop("mailbox_limit", getattr(target, "mailbox_limit", None) if is_class else None)
        overflow = kwargs.pop("overflow", getattr(target, "overflow", "drop_oldest") if is_class else "drop_oldest")
    check_options(limit, overflow)
    return limit, overflow


class Bounded(Process):
    """``deliver`` with a limit; mixed in before ``ActorProcess``/``TaskProcess``."""

    __slots__ = ()

    def deliver(self, msg: Any) -> None:
        mailbox = self.mailbox
        if len(mailbox) >= self.limit and type(msg) not in _NEVER_DROPPED:  # type: ignore[operator]
            if not self.overflowed(msg):
                return
        super().deliver(msg)

    def overflowed(self, msg: Any) -> bool:
        """The mailbox is full and ``msg`` may be dropped: apply the policy.
        True: deliver ``msg`` (room was made)."""
        policy = self.overflow
        if policy == "drop_oldest":
            mailbox = self.mailbox
            if type(mailbox[0]) not in _NEVER_DROPPED:
                mailbox.popleft()
                self.dropped += 1
                return True
            for index, old in enumerate(mailbox):
                if type(old) not in _NEVER_DROPPED:
                    del mailbox[index]
                    self.dropped += 1
                    return True
            return True  # only calls and system messages queued: none of them is dropped
        self.dropped += 1
        if policy == "exit" and self.state == RUNNING:
            log.warning("actor %s (%s) on %s exits: its mailbox passed mailbox_limit %d", self.pid,
                        self.describe_kind(), self.node.name, self.limit)
            self.node.loop.call_soon(self.exit, "mailbox_overflow")
        return False


class BoundedActorProcess(Bounded, ActorProcess):
    __slots__ = ("limit", "overflow", "dropped")


class BoundedTaskProcess(Bounded, TaskProcess):
    __slots__ = ("limit", "overflow", "dropped")


def bound(proc: Process, limit: int | None, overflow: str) -> Process:
    """Set the limit on a new process (already of the right class)."""
    proc.limit = limit
    proc.overflow = overflow
    proc.dropped = 0
    return proc


def process_info(proc: Process | None) -> dict[str, Any] | None:
    if proc is None or proc.state != RUNNING:
        return None
    status = "waiting"
    if isinstance(proc, ActorProcess):
        status = "running" if proc.scheduled or proc.task is not None else "waiting"
    elif isinstance(proc, TaskProcess):
        status = "waiting" if proc.waiter is not None and not proc.waiter.done() else "running"
    return {"mailbox": len(proc.mailbox), "dropped": proc.dropped, "name": proc.name, "status": status,
            "mailbox_limit": proc.limit, "overflow": proc.overflow}


def top_mailboxes(node: Node, n: int = TOP) -> list[dict[str, Any]]:
    """The ``n`` actors with the deepest mailboxes (or that dropped messages)."""
    procs = [p for p in node.procs.values() if p.mailbox or p.dropped]
    deepest = heapq.nlargest(n, procs, key=lambda p: (len(p.mailbox), p.dropped))
    return [{"pid": str(p.pid), "name": p.name, "class": p.describe_kind(), "mailbox": len(p.mailbox),
             "dropped": p.dropped} for p in deepest]


def scan_mailboxes(node: Node, threshold: int) -> int:
    """Log actors that crossed ``threshold``; return the node's queued messages.
    Who was logged is a set on the node, not a slot of every process: an idle
    actor pays neither the memory nor the store at spawn."""
    total = 0
    low = threshold // 2
    warned = node.mailbox_warned  # pids logged as past the threshold, until below half
    for proc in node.procs.values():
        size = len(proc.mailbox)
        total += size
        if size > threshold:
            if proc.pid not in warned:
                warned.add(proc.pid)
                log.warning("actor %s (name %s, class %s) on %s has %d messages queued (mailbox_warning %d)",
                            proc.pid, proc.name, proc.describe_kind(), node.name, size, threshold)
        elif warned and size < low:
            warned.discard(proc.pid)
    if warned:
        warned.intersection_update(node.procs)  # the dead are forgotten
    return total

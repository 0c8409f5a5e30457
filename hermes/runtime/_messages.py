"""Small value types that actors receive as messages from the runtime."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._pid import Pid, Ref


@dataclass(frozen=True, slots=True)
class Down:
    """A monitored actor exited (``reason`` is ``"noproc"`` if it was already dead,
    ``"noconnection"`` if its node went away)."""

    ref: Ref
    pid: Pid
    reason: Any


@dataclass(frozen=True, slots=True)
class Exit:
    """A linked actor exited; received instead of dying after ``trap_exits(True)``."""

    pid: Pid | None
    reason: Any


@dataclass(frozen=True, slots=True)
class NodeDown:
    """The connection to ``node`` went away (see ``monitor_node``)."""

    node: str


@dataclass(frozen=True, slots=True)
class NodeUp:
    """A connection to ``node`` was established (see ``monitor_nodes``)."""

    node: str

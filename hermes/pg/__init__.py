"""Process groups, as Erlang's ``pg``: named groups of actors across the cluster.

Each node keeps a replica of every group (see ``_scope``); reads never leave
the node. ``join``/``leave`` act on local pids only; a pid joined twice is a
member twice. Empty groups are never listed.
"""
from __future__ import annotations

from typing import Any

from .._errors import NotInActor
from ..runtime import Pid, Ref
from ..runtime.lowlevel import current
from ._event import Event
from ._scope import Wiring, current_scope, get_scope
from ._start import start, system_children

__all__ = ["Event", "demonitor", "get_local_members", "get_members", "join", "leave", "monitor",
           "which_groups", "which_local_groups", "start",
           # for the layers above (pubsub, presence): the live replica and its wiring
           "Wiring", "current_scope", "get_scope", "system_children"]


def _pids(pids: Pid | list[Pid] | None, what: str) -> list[Pid]:
    if pids is None:
        proc = current.get()
        if proc is None:
            raise NotInActor(f"pg.{what}() without pids must be called from inside an actor")
        return [proc.pid]
    if isinstance(pids, Pid):
        return [pids]
    return list(pids)


def join(group: Any, pids: Pid | list[Pid] | None = None) -> None:
    """Join ``pids`` (default: the caller) to ``group``; remote pids raise ``ValueError``."""
    get_scope().join(group, _pids(pids, "join"))


def leave(group: Any, pids: Pid | list[Pid] | None = None) -> bool:
    """Remove one membership per pid; ``False`` if none of them was joined."""
    return get_scope().leave(group, _pids(pids, "leave"))


def get_members(group: Any) -> list[Pid]:
    """Every member on every connected node, duplicates included (a local read)."""
    return get_scope().members(group)


def get_local_members(group: Any) -> list[Pid]:
    return list(get_scope().local.get(group, ()))


def which_groups() -> list[Any]:
    return get_scope().groups()


def which_local_groups() -> list[Any]:
    return list(get_scope().local)


def monitor(group: Any) -> tuple[Ref, list[Pid]]:
    """Receive ``Event(ref, "join"|"leave", group, pids)``; returns ``(ref, members)``."""
    proc = current.get()
    if proc is None:
        raise NotInActor("pg.monitor() must be called from inside an actor")
    return get_scope().monitor(proc.pid, group)


def demonitor(ref: Ref) -> bool:
    return get_scope().demonitor(ref)

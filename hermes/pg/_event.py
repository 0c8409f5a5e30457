"""``pg.Event``: what a ``pg.monitor`` subscriber receives."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..runtime import Pid, Ref


@dataclass(frozen=True, slots=True)
class Event:
    """``kind`` is ``"join"`` or ``"leave"``; one event per batch of ``pids``."""

    ref: Ref
    kind: str
    group: Any
    pids: list[Pid]

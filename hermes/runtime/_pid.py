"""Identities: ``Pid`` (an actor's address) and ``Ref`` (a unique reference).

Both are tuple subclasses: their hash and equality run in C, which keeps
``send`` and every process-table lookup cheap (a frozen dataclass would hash
in Python code on every dict access). A pid names its node and the node's
*creation* (incarnation), so a pid of a previous run of a node never matches
an actor of the restarted node.
"""
from __future__ import annotations

from typing import Any


class Pid(tuple):
    """Opaque, hashable, picklable actor address: ``(node, creation, id)``."""

    __slots__ = ()

    def __new__(cls, node: str, creation: int, id: int) -> Pid:
        return tuple.__new__(cls, (node, creation, id))

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)

    @property
    def node(self) -> str:
        """The name of the node this actor lives on, ``"NAME@HOST"``."""
        return self[0]

    @property
    def creation(self) -> int:
        return self[1]

    @property
    def id(self) -> int:
        return self[2]

    def __repr__(self) -> str:
        return f"<Pid {self[2]}@{self[0]}>"

    __str__ = __repr__


class Ref(tuple):
    """A unique reference, e.g. for monitors and calls: ``(node, creation, n)``."""

    __slots__ = ()

    def __new__(cls, node: str, creation: int, n: int) -> Ref:
        return tuple.__new__(cls, (node, creation, n))

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)

    @property
    def node(self) -> str:
        return self[0]

    def __repr__(self) -> str:
        return f"<Ref {self[2]}@{self[0]}>"

    __str__ = __repr__

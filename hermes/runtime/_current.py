"""The node of this process: one per OS process, as in Erlang (``run``/``start`` set it).

A leaf, as Trio's ``_run_context``: the runtime's modules read ``_node`` here;
the layers above use ``lowlevel.current_node()`` or, on hot paths,
``lowlevel.running.node``. The thread rule lives here too: the node's state
belongs to its loop's thread.
"""
from __future__ import annotations

import socket
from threading import get_ident  # the thread rule's check: no syscall (3.11's running-loop lookup makes one)
from typing import TYPE_CHECKING

from .._errors import HermesError, NoNode

if TYPE_CHECKING:
    from ._node import Node

_node: Node | None = None


class _Running:
    """The node of this process as an attribute of one object: what hot paths of
    the layers above read (``lowlevel.running.node``, two attribute loads, no call)."""

    __slots__ = ("node",)

    def __init__(self) -> None:
        self.node: Node | None = None


running = _Running()


def get() -> Node:
    node = _node
    if node is None:
        raise NoNode("no Hermes node is running in this process (use hermes.run or hermes.start)")
    if node.thread != get_ident():
        raise off_loop(node)
    return node


def off_loop(node: Node) -> HermesError:
    """The thread rule: the node's state belongs to its loop's thread."""
    return HermesError(f"a Hermes call was made off node {node.name}'s event loop thread; from another "
                       "thread, go through the node's handle: node.submit(fn, *args)")


def set_node(node: Node | None) -> None:
    global _node
    _node = running.node = node


def default_host() -> str:
    return socket.gethostname().split(".")[0] or "localhost"

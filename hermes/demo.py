"""The seed article's ``Client``: an actor that subscribes in ``__init__`` and
prints every message it receives. Used by ``scripts/demo`` and handy in the shell::

    >>> from hermes.demo import Client
    >>> spawn(Client, "user.created")
"""
from __future__ import annotations

from typing import Any

from . import pubsub
from .runtime import Actor, spawn


class Client(Actor):
    """Subscribes to ``topic`` and prints ``<pid> received: <message>``."""

    def __init__(self, topic: Any) -> None:
        self.topic = topic
        pubsub.subscribe(topic)

    def handle_info(self, msg: Any) -> None:
        print(f"{self.pid} received: {msg!r}", flush=True)


def start_clients(topic: Any, count: int) -> list[Any]:
    """Spawn ``count`` clients subscribed to ``topic`` on this node (used through rpc)."""
    return [spawn(Client, topic) for _ in range(count)]

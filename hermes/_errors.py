"""The Hermes exception taxonomy, by who caused the failure.

- ``HermesError``: base of everything Hermes raises on purpose.
- ``SerializationError``: *you* gave a value that cannot cross nodes (also a
  ``TypeError``, since it is a bad argument).
- ``ActorExited``: the actor you talked to is dead or died while serving you.
- ``ProtocolError`` / ``HandshakeError``: a *peer* broke the wire protocol or
  failed authentication. Never raised into user code; used to close connections.
- ``NotInActor``: a call that needs a current actor was made outside one.
- ``RemoteError``: an exception raised on another node that could not be
  pickled back; carries its repr and formatted traceback.
Timeouts raise the built-in ``TimeoutError``.
"""
from __future__ import annotations

import traceback
from typing import Any


class HermesError(Exception):
    """Base class of every error Hermes raises on purpose."""


class SerializationError(HermesError, TypeError):
    """A value could not be pickled (nor cloudpickled) to cross nodes."""

    def __init__(self, type_name: str, detail: str = "") -> None:
        self.type_name = type_name
        self.detail = detail
        message = f"cannot serialize a value of type {type_name!r}"
        super().__init__(f"{message}: {detail}" if detail else message)


class ActorExited(HermesError):
    """The actor is dead, or died before it replied."""

    def __init__(self, pid: Any, reason: Any) -> None:
        self.pid = pid
        self.reason = reason
        super().__init__(f"actor {pid} exited: {reason!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorExited, (self.pid, self.reason))


class NotInActor(HermesError):
    """An operation that needs a current actor was called outside any actor."""


class NoNode(HermesError):
    """No Hermes node runs in this process (call inside ``hermes.run``)."""


class RemoteError(HermesError):
    """An exception raised on another node that could not be sent back as is."""

    def __init__(self, text: str, traceback_text: str = "") -> None:
        self.text = text
        self.traceback_text = traceback_text
        super().__init__(text + (f"\n--- remote traceback ---\n{traceback_text}" if traceback_text else ""))

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteError, (self.text, self.traceback_text))

    @classmethod
    def from_exception(cls, exc: BaseException) -> RemoteError:
        """What crosses nodes in place of an exception that cannot be pickled."""
        return cls(f"{type(exc).__qualname__}: {exc}", "".join(traceback.format_exception(exc)))


class ProtocolError(HermesError):
    """A peer sent something that breaks the wire protocol."""


class HandshakeError(ProtocolError):
    """A peer failed the cookie handshake (or the handshake timed out)."""


class SlowConsumer(HermesError):
    """A ``subscription`` with ``overflow="error"`` fell ``maxsize`` messages
    behind its publishers and ended; ``.dropped`` counts what it lost."""

    def __init__(self, topic: Any, dropped: int) -> None:
        self.topic = topic
        self.dropped = dropped
        super().__init__(f"subscription to {topic!r} fell behind and ended: {dropped} message(s) dropped "
                         "(read faster, raise maxsize, or choose overflow='drop_oldest')")

    def __reduce__(self) -> tuple[Any, ...]:
        return (SlowConsumer, (self.topic, self.dropped))


class NameInUse(HermesError):
    """A live node of the cluster already holds this node name."""

    def __init__(self, name: str, address: Any = None) -> None:
        self.name = name
        self.address = address
        where = f" at {address[0]}:{address[1]}" if address else ""
        super().__init__(f"node name {name!r} is held by a live node{where}; choose another name "
                         "(or name=None for a unique one), or stop that node")

    def __reduce__(self) -> tuple[Any, ...]:
        return (NameInUse, (self.name, self.address))

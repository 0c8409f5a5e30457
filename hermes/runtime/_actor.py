"""``Actor``: the GenServer-style base class.

A subclass is constructed *inside* its new actor (so ``self()`` and
``subscribe`` work in ``__init__``). The runtime then calls one handler per
message, never two at once:

- ``handle_call(request, sender) -> reply`` for ``call``;
- ``handle_cast(msg)`` for ``cast``;
- ``handle_info(msg)`` for everything else (``send``, ``Down``, ``Exit``...);
- ``terminate(reason)`` when it stops (not after ``"kill"``).

Any handler may be ``async def``. Whether each one is async is worked out
once per class, so the per-message path never asks ``inspect``.
"""
from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any, Callable

from ._pid import Pid, Ref

if TYPE_CHECKING:
    from ._process import ActorProcess

log = logging.getLogger("hermes.runtime")


class Call:
    """Envelope of a ``call``: routed to ``handle_call``; the reply goes to ``ref``."""

    __slots__ = ("request", "sender", "ref")  # slots: one is built per call

    def __init__(self, request: Any, sender: Pid | None, ref: Ref) -> None:
        self.request = request
        self.sender = sender
        self.ref = ref

    def __reduce__(self) -> tuple[Any, ...]:
        return (Call, (self.request, self.sender, self.ref))


class Cast:
    """Envelope of a ``cast``: routed to ``handle_cast``."""

    __slots__ = ("msg",)

    def __init__(self, msg: Any) -> None:
        self.msg = msg

    def __reduce__(self) -> tuple[Any, ...]:
        return (Cast, (self.msg,))


class NoReply:
    """Returned by ``handle_call`` when it will not reply (see ``Actor.defer_reply``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "hermes.NOREPLY"


NOREPLY = NoReply()


class Actor:
    """Base class of GenServer-style actors. Override the handlers you need."""

    _hermes_proc: ActorProcess
    _hermes_dispatch: Callable[[Actor, Any], Any]
    _hermes_has_terminate: bool = False
    _hermes_direct_info: bool = True  # handle_info is synchronous: the drain calls it itself
    mailbox_limit: int | None = None  # flow control: None is unbounded, as Erlang (see _flow)
    overflow: str = "drop_oldest"  # past mailbox_limit: "drop_oldest", "drop_newest" or "exit"


    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._hermes_dispatch = staticmethod(_make_dispatch(cls))
        cls._hermes_has_terminate = cls.terminate is not Actor.terminate
        cls._hermes_direct_info = not inspect.iscoroutinefunction(cls.handle_info)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    @property
    def pid(self) -> Pid:
        """This actor's pid (the same as ``self()`` inside its handlers)."""
        return self._hermes_proc.pid

    def handle_call(self, request: Any, sender: Pid | None) -> Any:
        raise NotImplementedError(f"{type(self).__qualname__} does not handle calls (got {request!r})")

    def handle_cast(self, msg: Any) -> Any:
        raise NotImplementedError(f"{type(self).__qualname__} does not handle casts (got {msg!r})")

    def handle_info(self, msg: Any) -> Any:
        log.warning("%s %s received an unexpected message: %r", type(self).__qualname__, self.pid, msg)

    def terminate(self, reason: Any) -> Any:
        pass

    def defer_reply(self) -> Ref:
        """Inside ``handle_call``: answer later, with ``hermes.reply(ref, value)``,
        instead of with the return value (GenServer's ``{:noreply, state}``)."""
        proc = self._hermes_proc
        ref = proc.calling
        if ref is None:
            raise RuntimeError("defer_reply() is only valid inside handle_call")
        proc.calling = None
        return ref

    def stop(self, reason: Any = "normal") -> None:
        """End this actor with ``reason`` once the current handler returns."""
        proc = self._hermes_proc
        proc.node.loop.call_soon(proc.exit, reason)


def _make_dispatch(cls: type[Actor]) -> Callable[[Actor, Any], Any]:
    """Build the per-message function for ``cls``: returns a coroutine to await,
    or None when the handler already ran."""
    call_async = inspect.iscoroutinefunction(cls.handle_call)
    cast_async = inspect.iscoroutinefunction(cls.handle_cast)
    info_async = inspect.iscoroutinefunction(cls.handle_info)

    def dispatch(actor: Actor, msg: Any) -> Any:
        kind = type(msg)
        if kind is Call:
            if call_async:
                return _async_call(actor, msg)
            proc = actor._hermes_proc
            proc.calling = msg.ref
            reply = actor.handle_call(msg.request, msg.sender)
            if proc.calling is not None and reply is not NOREPLY:
                proc.node.reply(msg.ref, reply)
            proc.calling = None
            return None
        if kind is Cast:
            if cast_async:
                return actor.handle_cast(msg.msg)
            actor.handle_cast(msg.msg)
            return None
        if info_async:
            return actor.handle_info(msg)
        actor.handle_info(msg)
        return None

    return dispatch


async def _async_call(actor: Actor, msg: Call) -> None:
    proc = actor._hermes_proc
    proc.calling = msg.ref
    reply = await actor.handle_call(msg.request, msg.sender)
    if proc.calling is not None and reply is not NOREPLY:
        proc.node.reply(msg.ref, reply)
    proc.calling = None


Actor._hermes_dispatch = staticmethod(_make_dispatch(Actor))

"""Identity of tasks: a plain asyncio task started inside an actor is not that actor.

A Task copies the context it is created in, and the runtime keeps the current
actor in a context variable; so without this, a websocket handler or a
``create_task`` made from an actor's code would *be* that actor: its
``receive`` would take the actor's messages, its ``subscribe`` would register
the actor. The node installs a task factory on its loop that starts every task
the runtime did not start itself (those pass an explicit ``context=``) with no
current actor, so ``self()``, ``receive`` and ``subscribe`` raise
``NotInActor`` there. The cost is paid once per task created, never on send
or publish. A factory the host had already installed is kept and called.
"""
from __future__ import annotations

import asyncio
import contextvars
import sys
import types
from typing import TYPE_CHECKING, Any

from ._process import current

if TYPE_CHECKING:
    from ._node import Node

_PREVIOUS = "hermes.previous_task_factory"


def _outside_actor(ctx: contextvars.Context) -> contextvars.Context:
    if ctx.get(current) is not None:
        ctx.run(current.set, None)
    return ctx


def _awaited_in_place() -> bool:
    """Python 3.11's ``wait_for`` runs its awaitable as a task of its own, which
    its caller awaits at once: that task is still the caller (3.12 makes none)."""
    if _WAIT_FOR is None:
        return False
    frame: types.FrameType | None = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            return False
        if frame.f_code is _WAIT_FOR:
            return True
        frame = frame.f_back
    return False


_WAIT_FOR = asyncio.tasks.wait_for.__code__ if sys.version_info < (3, 12) else None


def install(node: Node) -> None:
    """Make tasks created on ``node.loop`` without ``context=`` actor-less."""
    loop = node.loop
    previous = loop.get_task_factory()
    node.layers[_PREVIOUS] = previous

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, context: contextvars.Context | None = None,
                **kwargs: Any) -> asyncio.Future[Any]:
        if context is None and current.get() is not None and not _awaited_in_place():
            context = _outside_actor(contextvars.copy_context())
        if previous is not None:
            return previous(loop, coro, context=context, **kwargs)  # type: ignore[call-arg]
        return asyncio.Task(coro, loop=loop, context=context, **kwargs)

    loop.set_task_factory(factory)


def uninstall(node: Node) -> None:
    """Put back the factory the loop had before ``install``."""
    if _PREVIOUS in node.layers and not node.loop.is_closed():
        node.loop.set_task_factory(node.layers.pop(_PREVIOUS))

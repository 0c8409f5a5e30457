"""Processes: the runtime's record of one live actor.

Two kinds share the same bookkeeping (mailbox, links, monitors, trap flag):

- ``ActorProcess`` runs an ``Actor`` subclass with no asyncio Task of its own:
  ``deliver`` appends to a deque and, the first time in a turn, schedules
  ``drain`` with ``loop.call_soon``; ``drain`` handles a batch of messages.
  A Task exists only while an ``async def`` handler is running, and the actor
  takes its next message only when that handler has finished.
- ``TaskProcess`` runs an ``async def`` function as a Task; it reads its
  mailbox with ``receive``.

Rules kept here, as in Erlang:
- a trapped exit signal is queued as an ``Exit`` message at once (so it stays
  in order with the sender's messages); a fatal one ends the actor from its
  own ``call_soon`` callback, never inside the sender's code, so a chain of
  links cannot recurse and an actor never dies in another actor's handler;
- ``"kill"`` cannot be trapped and ends the actor with ``"killed"``;
  ``"normal"`` from another actor is ignored unless trapped;
- an actor's links and monitors fire only after its ``terminate`` finished,
  so a supervisor waiting for a child's ``Down`` knows its cleanup ran.

This module knows nothing of the network: anything addressed to a pid of
another node goes through ``Node.route_*``.
"""
from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from ._actor import Call, Cast
from ._messages import Exit
from ._pid import Pid, Ref

if TYPE_CHECKING:
    from ._actor import Actor
    from ._node import Node

log = logging.getLogger("hermes.runtime")

# The actor whose code is running. Drains set it once per batch in the node's
# shared context; each Task (function actor, async handler) has its own context.
current: contextvars.ContextVar[Process | None] = contextvars.ContextVar("hermes_current", default=None)

RUNNING, EXITING, DEAD = 0, 1, 2
BATCH = 128  # messages per drain turn: throughput vs. fairness between actors
_ENVELOPES = frozenset({Call, Cast})  # routed by the actor's dispatch, not straight to handle_info
_clock = time.perf_counter  # read twice per drain batch, for the stall warning


class Process:
    __slots__ = (
        "node", "pid", "mailbox", "links", "monitors", "watching", "trap_exit",
        "name", "state", "reason", "parent", "ctx", "waiter", "done", "__weakref__",
    )
    # An unbounded mailbox (the default) has these as class attributes: spawning and
    # delivering pay nothing for flow control. Bounded processes (``_flow``) have slots.
    limit: int | None = None  # mailbox_limit
    overflow = "drop_oldest"
    dropped = 0

    def __init__(self, node: Node, pid: Pid, parent: Pid | None) -> None:
        self.node = node
        self.pid = pid
        self.mailbox: deque[Any] = deque()
        self.links: set[Pid] | None = None
        self.monitors: dict[Ref, Pid | None] | None = None  # ref -> watcher, on the target
        self.watching: dict[Ref, Pid] | None = None  # ref -> target, on the watcher
        self.trap_exit = False
        self.name: str | None = None
        self.state = RUNNING
        self.reason: Any = None
        self.parent = parent
        self.ctx: contextvars.Context | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.done: asyncio.Future[Any] | None = None  # created on demand by waiters

    # -- messages -------------------------------------------------------------

    def deliver(self, msg: Any) -> None:
        self.mailbox.append(msg)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def deliver_now(self, msg: Any) -> None:
        """Deliver a request whose sender is waiting (see ActorProcess)."""
        self.deliver(msg)

    def task_context(self) -> contextvars.Context:
        ctx = self.ctx
        if ctx is None:
            ctx = self.ctx = contextvars.copy_context()
            ctx.run(current.set, self)
        return ctx

    # -- signals (a fatal one takes effect from its own loop callback) --------

    def signal_exit(self, sender: Pid | None, reason: Any) -> None:
        """An exit signal arrives. A trapped one becomes a message at once, so it
        keeps its place among the sender's messages; a fatal one ends the actor
        from its own loop callback, never inside the sender's code."""
        if self.state != RUNNING:
            return
        if reason == "kill":
            self.node.loop.call_soon(self.exit, "killed")
        elif self.trap_exit:
            self.deliver(Exit(sender, reason))
        elif reason == "normal" and sender != self.pid:
            return
        else:
            self.node.loop.call_soon(self.exit, reason)

    def signal_link(self, sender: Pid) -> None:
        if self.state != RUNNING:
            self.node.route_exit(sender, self.pid, "noproc")
            return
        if self.links is None:
            self.links = set()
        self.links.add(sender)

    def signal_unlink(self, sender: Pid) -> None:
        if self.links:
            self.links.discard(sender)

    def signal_monitor(self, watcher: Pid | None, ref: Ref) -> None:
        if self.state != RUNNING:
            self.node.route_down(watcher, ref, self.pid, "noproc")
            return
        if self.monitors is None:
            self.monitors = {}
        self.monitors[ref] = watcher

    def signal_demonitor(self, ref: Ref) -> None:
        if self.monitors:
            self.monitors.pop(ref, None)

    # -- ending ---------------------------------------------------------------

    def exit(self, reason: Any) -> None:
        """Stop this actor now with ``reason``: cleanup, then signals."""
        if self.state != RUNNING:
            return
        self.state = EXITING
        self.reason = reason
        self.node.unregister_process(self)
        self.stop_running(reason)

    def stop_running(self, reason: Any) -> None:
        self.finalize()

    def finalize(self) -> None:
        """Fire links and monitors; called once the actor's own cleanup ran."""
        if self.state == DEAD:
            return
        self.state = DEAD
        node, pid, reason = self.node, self.pid, self.reason
        if self.watching:
            for ref, target in self.watching.items():
                node.route_demonitor(target, ref)
        if self.links:
            for other in self.links:
                node.route_unlink_and_exit(other, pid, reason)
        if self.monitors:
            for ref, watcher in self.monitors.items():
                node.route_down(watcher, ref, pid, reason)
        self.links = self.monitors = self.watching = None
        self.mailbox.clear()
        if self.done is not None and not self.done.done():
            self.done.set_result(reason)

    def crashed(self, exc: BaseException, where: str) -> None:
        log.error("actor %s (%s) on %s crashed in %s", self.pid, self.describe_kind(), self.node.name,
                  where, exc_info=exc)
        self.exit(exc)

    def describe_kind(self) -> str:
        return type(self).__name__


class TaskProcess(Process):
    """An ``async def`` function running as a Task."""

    __slots__ = ("task", "fn", "result")

    def __init__(self, node: Node, pid: Pid, parent: Pid | None, fn: Callable[..., Any]) -> None:
        Process.__init__(self, node, pid, parent)  # not super(): no super object per spawn
        self.fn = fn
        self.task: asyncio.Task[Any] | None = None
        self.result: Any = None

    def describe_kind(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))

    def start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        coro = self._main(args, kwargs)
        self.task = self.node.loop.create_task(coro, context=self.task_context())

    async def _main(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            result = self.fn(*args, **kwargs)
            self.result = await result if inspect.isawaitable(result) else result
        except asyncio.CancelledError:
            if self.state == RUNNING:  # cancelled by something other than an exit signal
                self.exit("killed")
            return
        except BaseException as exc:  # the actor's own failure (even SystemExit): only it dies
            if self.state == RUNNING:
                self.crashed(exc, "its function")
            return
        self.exit("normal")

    def stop_running(self, reason: Any) -> None:
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        self.finalize()


class ActorProcess(Process):
    """An ``Actor`` instance driven by ``drain``; no Task unless a handler awaits."""

    __slots__ = ("actor", "scheduled", "task", "kind", "calling")

    def __init__(self, node: Node, pid: Pid, parent: Pid | None, kind: str = "Actor") -> None:
        Process.__init__(self, node, pid, parent)  # not super(): no super object per spawn
        self.actor: Actor | None = None  # set once __init__ has returned
        self.kind = kind
        self.calling: Ref | None = None  # the call being handled (for defer_reply)
        self.scheduled = True  # no drain until __init__ has finished
        self.task: asyncio.Task[Any] | None = None

    def describe_kind(self) -> str:
        return self.kind

    def deliver(self, msg: Any) -> None:
        self.mailbox.append(msg)
        if not self.scheduled:
            self.scheduled = True
            self.node.loop.call_soon(self.drain, context=self.node.drain_ctx)
        elif self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)  # an async handler is in receive()

    def deliver_now(self, msg: Any) -> None:
        """Deliver, and if the actor is idle (nothing queued, no handler running)
        handle it in this loop turn instead of the next: for a call, whose caller
        is waiting, that turn is ~10% of a round trip from another node and half
        the loop turns of a local one. Nothing is queued before it, so the order
        of messages is unchanged."""
        if self.scheduled or self.mailbox:
            self.deliver(msg)
            return
        self.mailbox.append(msg)
        self.scheduled = True
        self.node.drain_ctx.run(self.drain)  # never nested: frames and calls come from the loop or a task, not a drain

    def started(self) -> None:
        """``__init__`` finished: begin taking messages."""
        self.scheduled = False
        if self.mailbox:
            self.scheduled = True
            self.node.loop.call_soon(self.drain, context=self.node.drain_ctx)

    def drain(self) -> None:
        if self.state != RUNNING:
            return
        if current.get() is not self:  # the drains' shared context: a set (a new mapping) only on a change
            current.set(self)
        actor = self.actor
        assert actor is not None  # set before the first drain, cleared after the last
        mailbox = self.mailbox
        dispatch = actor._hermes_dispatch
        direct = actor._hermes_direct_info
        started = _clock()  # once per batch, not per message: the stall warning costs ~nothing
        n = 0
        msg = None
        while mailbox and n < BATCH:  # rechecked only when a batch ran out: a handler sent to itself
            for n in range(n + 1, min(n + len(mailbox), BATCH) + 1):  # a range: no test per message
                try:  # free unless it raises: still no test per message
                    msg = mailbox.popleft()
                except IndexError:  # a handler took a queued message back (demonitor's flush): none left
                    n -= 1
                    self.scheduled = False
                    break
                try:
                    if direct and type(msg) not in _ENVELOPES:  # most messages: one call, not two
                        actor.handle_info(msg)
                        if self.state:  # not RUNNING (0): the handler stopped its own actor
                            break
                        continue  # no coroutine to look for: the next message at once
                    coro = dispatch(actor, msg)
                except BaseException as exc:  # even SystemExit: a handler must not stop the node
                    self.crashed(exc, _where(msg))
                    return
                if coro is not None:  # an async handler: run it, resume draining after
                    self.task = self.node.loop.create_task(self._await(coro, msg), context=self.task_context())
                    break
                if self.state != RUNNING:  # the handler stopped its own actor
                    break
            else:
                continue  # the range ran out: what arrived meanwhile joins the batch, up to BATCH
            break  # the inner loop stopped the batch
        else:
            if mailbox:
                self.node.loop.call_soon(self.drain, context=self.node.drain_ctx)
            else:
                self.scheduled = False
        if _clock() - started > self.node.stall_warning:
            self.stalled(_clock() - started, n, msg)

    async def _await(self, coro: Any, msg: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            if self.state == RUNNING:
                self.exit("killed")
            return
        except BaseException as exc:
            if self.state == RUNNING:
                self.crashed(exc, _where(msg))
            return
        self.task = None
        if self.state == RUNNING:
            self.scheduled = False
            if self.mailbox:
                self.scheduled = True
                self.node.loop.call_soon(self.drain, context=self.node.drain_ctx)

    def stalled(self, seconds: float, handled: int, msg: Any) -> None:
        """A batch of handlers held the loop longer than the node's ``stall_warning``.
        Timed per batch (two clock reads), so with several messages the handler
        named is that of the last one, the usual culprit of a long batch."""
        where = _where(msg) if handled == 1 else f"{handled} handlers, the last {_where(msg)}"
        log.warning("actor %s (%s) on %s held the loop for %.3f s in %s", self.pid, self.kind, self.node.name,
                    seconds, where)

    def finalize(self) -> None:
        super().finalize()
        self.actor = None  # break the actor <-> process cycle: freed without a GC pass

    def stop_running(self, reason: Any) -> None:
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        self.task = None
        actor = self.actor
        if actor is None or reason == "killed" or not actor._hermes_has_terminate:
            self.finalize()
            return
        self.run_terminate(actor, reason)

    def run_terminate(self, actor: Actor, reason: Any) -> None:
        token = current.set(self)
        try:
            result = actor.terminate(reason)
        except BaseException:  # even SystemExit: a failing terminate must not stop the node
            log.error("actor %s (%s) raised in terminate", self.pid, self.describe_kind(), exc_info=True)
            result = None
        finally:
            current.reset(token)
        if result is None or not asyncio.iscoroutine(result):
            self.finalize()
            return
        self.node.loop.create_task(self._await_terminate(result), context=self.task_context())

    async def _await_terminate(self, coro: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            pass
        except BaseException:
            log.error("actor %s (%s) raised in terminate", self.pid, self.describe_kind(), exc_info=True)
        finally:
            self.finalize()


def _where(msg: Any) -> str:
    from ._actor import Call, Cast  # local: avoids an import cycle at module load

    if type(msg) is Call:
        return "handle_call"
    if type(msg) is Cast:
        return "handle_cast"
    return "handle_info"

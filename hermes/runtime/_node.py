"""The node: one per OS process, owning the process table and routing signals.

The node knows every local process by pid and every registered name. All
signals between actors (exit, link, unlink, monitor, demonitor, down, call
replies) go through the ``route_*`` methods here: local ones are applied to
the target process at once (a fatal exit then ends it from its own loop
callback), remote ones are handed to ``self.dist`` (set by the distribution
layer; ``None`` on a node that never listened).

It must not know pubsub, registries or process groups: those are actors and
services built on top of it. They keep their per-node state in ``layers``,
which the runtime never reads.
"""
from __future__ import annotations

import asyncio
import contextvars
from threading import get_ident  # the thread rule's check: no syscall (3.11's running-loop lookup makes one)
import itertools
import logging

from typing import Any, Callable, Protocol

from .._errors import ActorExited, HermesError
from ._actor import Actor
from ._deadlines import Deadlines
from ._messages import Down, NodeDown
from ._pid import Pid, Ref
from . import _flow, _shutdown
from ._process import DEAD, RUNNING, ActorProcess, Process, TaskProcess, current

_new_tuple = tuple.__new__

log = logging.getLogger("hermes.runtime")


class Distribution(Protocol):
    """What the node needs from the distribution layer (``hermes.dist``)."""

    def send(self, pid: Pid, msg: Any) -> None: ...
    def send_signal(self, node: str, signal: tuple[Any, ...]) -> None: ...
    def call(self, pid: Pid, request: Any, sender: Pid | None, ref: Ref) -> str | None:
        """Send the call if ``pid`` may be alive on a connected node (``None``), else
        return why not, as ``remote_state``: ``"noconnection"`` or ``"noproc"``."""
    def call_name(self, node: str, name: str, request: Any, sender: Pid | None, ref: Ref) -> None: ...
    def reply(self, ref: Ref, value: Any, rpc: bool = False) -> None: ...
    def spawn(self, node: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *,
              parent: Process | None, link: bool) -> Pid: ...
    async def connect(self, node: str) -> bool: ...
    def disconnect(self, node: str) -> bool: ...
    def connected(self, node: str) -> bool: ...
    def peer_creation(self, node: str) -> int | None: ...
    def nodes(self) -> list[str]: ...


class Node:
    """The runtime of this OS process: process table, names, refs, routing."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop, creation: int) -> None:
        self.name = name
        self.creation = creation
        self.loop = loop
        self.thread = get_ident()  # the loop's thread: public calls from any other raise (the thread rule)
        self.procs: dict[Pid, Process] = {}
        self.names: dict[str, Pid] = {}
        self.pending: dict[Ref, asyncio.Future[Any]] = {}  # call/rpc ref -> reply future
        self.deadlines = Deadlines(loop)  # the timeouts of pending calls, one timer for all
        # ref -> the remote callee: its pid, (name, node) for a call by name, or an rpc's node
        self.pending_remote: dict[Ref, Pid | tuple[str, str] | str] = {}
        self.call_monitors: dict[Ref, Process] = {}  # a remote caller's ref -> our callee monitored
        self.node_watchers: dict[str, dict[Pid, int]] = {}
        self.all_node_watchers: set[Pid] = set()  # monitor_nodes(): NodeUp/NodeDown for every node
        self.dist: Distribution | None = None
        self.stopping = False
        self.drain_ctx = contextvars.Context()  # shared by every drain: they never nest
        self.exit_hooks: list[Callable[[Process], None]] = []
        self.request_stop: Callable[[], None] = lambda: None  # set by run(): a clean shutdown
        self.layers: dict[str, Any] = {}  # per-node state of the layers above, by layer name
        self.config: Any = None  # the NodeConfig it was started with (read by the layers, not here)
        self._pid_ids = itertools.count(1)
        self._ref_ids = itertools.count(1)
        self.stall_warning = 0.1  # seconds; read by every drain (from config.stall_warning)
        self.backlog_listeners: list[Callable[[int], None]] = []  # told the queued total on each scan
        self.mailbox_warned: set[Pid] = set()  # logged as past mailbox_warning, until back below half
        self._scan: asyncio.TimerHandle | None = None  # the mailbox scan, started by the first spawn

    def statistics(self) -> dict[str, Any]:
        """A snapshot of this node's runtime, for shells, status pages and tests."""
        stats = {"name": self.name, "creation": self.creation, "processes": len(self.procs),
                 "names": len(self.names), "pending_calls": len(self.pending),
                 "queued_messages": sum(len(p.mailbox) for p in self.procs.values()),
                 "nodes": self.dist.nodes() if self.dist is not None else []}
        stats["mailboxes"] = _flow.top_mailboxes(self)  # deepest first, top 10
        stats["dropped"] = sum(p.dropped for p in self.procs.values())
        return stats

    # -- flow control: the periodic mailbox scan ------------------------------

    def _start_scan(self) -> None:
        config = self.config
        if config is not None:
            self.stall_warning = config.stall_warning
        self._scan = self.loop.call_later(_flow.next_scan_delay(), self._scan_mailboxes)

    def _scan_mailboxes(self) -> None:
        if self.stopping or self.loop.is_closed():
            return
        threshold = self.config.mailbox_warning if self.config is not None else 100_000
        total = _flow.scan_mailboxes(self, threshold)
        for listener in self.backlog_listeners:
            try:
                listener(total)
            except Exception:
                log.exception("backlog listener failed")
        self._scan = self.loop.call_later(_flow.next_scan_delay(), self._scan_mailboxes)

    # -- identities -----------------------------------------------------------

    def new_pid(self) -> Pid:
        return _new_tuple(Pid, (self.name, self.creation, next(self._pid_ids)))  # skips Pid.__new__

    def make_ref(self) -> Ref:
        return _new_tuple(Ref, (self.name, self.creation, next(self._ref_ids)))  # skips Ref.__new__

    def is_local(self, pid: Pid) -> bool:
        """Of this node's name: a pid of an earlier incarnation is local, and dead."""
        return pid[0] == self.name

    # -- spawning -------------------------------------------------------------

    def spawn(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *,
              parent: Process | None, link: bool, pid: Pid | None = None,
              remote_link: Pid | None = None) -> Pid:
        if pid is None:
            pid = _new_tuple(Pid, (self.name, self.creation, next(self._pid_ids)))  # new_pid, inline
        parent_pid = parent.pid if parent is not None else None
        if self._scan is None:
            self._start_scan()
        if isinstance(target, type) and issubclass(target, Actor):
            # unbounded with the class's defaults: two attribute loads, no call (100k spawns well under 1 s)
            if not kwargs and target.mailbox_limit is None and target.overflow == "drop_oldest":
                proc: Process = ActorProcess(self, pid, parent_pid, target.__qualname__)
            else:
                proc = self._new_process(target, kwargs, pid, parent_pid)
        elif callable(target):
            proc = self._new_process(target, kwargs, pid, parent_pid)
        else:
            raise TypeError(f"spawn target must be an Actor subclass or an async function, not {target!r}")
        self.procs[pid] = proc
        if link and parent is not None:
            self.link_pair(parent, pid)
        if remote_link is not None:  # spawned for a linking actor on another node
            proc.links = {remote_link}
        if isinstance(proc, ActorProcess):
            self._init_actor(proc, target, args, kwargs)
        else:
            proc.start(args, kwargs)  # type: ignore[attr-defined]
        return pid

    def _new_process(self, target: Any, kwargs: dict[str, Any], pid: Pid, parent_pid: Pid | None) -> Process:
        """The process of a task target, or of an actor with flow-control options:
        ``mailbox_limit``/``overflow`` taken out of ``kwargs`` and checked first."""
        limit, overflow = _flow.options_of(target, kwargs)
        if isinstance(target, type) and issubclass(target, Actor):
            if limit is None:
                return ActorProcess(self, pid, parent_pid, target.__qualname__)
            return _flow.bound(_flow.BoundedActorProcess(self, pid, parent_pid, target.__qualname__), limit,
                               overflow)
        if limit is None:
            return TaskProcess(self, pid, parent_pid, target)
        return _flow.bound(_flow.BoundedTaskProcess(self, pid, parent_pid, target), limit, overflow)

    def _init_actor(self, proc: ActorProcess, cls: type[Actor], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> None:
        actor = cls.__new__(cls)
        actor._hermes_proc = proc
        if cls.__init__ is Actor.__init__:  # nothing to run (100k idle actors spawn faster)
            proc.actor = actor
            proc.started()
            return
        token = current.set(proc)
        try:
            cls.__init__(actor, *args, **kwargs)
        except BaseException as exc:  # even SystemExit: only this actor fails
            proc.crashed(exc, "__init__")  # no terminate: the actor never started
            return
        finally:
            current.reset(token)
        if proc.state == RUNNING:
            proc.actor = actor
            proc.started()

    def link_pair(self, proc: Process, other: Pid) -> None:
        if proc.links is None:
            proc.links = set()
        proc.links.add(other)
        target = self.procs.get(other)
        if target is not None:
            target.signal_link(proc.pid)
        else:
            self.route_link(other, proc.pid)

    # -- the process table ----------------------------------------------------

    def unregister_process(self, proc: Process) -> None:
        self.procs.pop(proc.pid, None)
        if proc.name is not None:
            self.names.pop(proc.name, None)
            proc.name = None
        for hook in self.exit_hooks:
            hook(proc)

    def resolve(self, dest: Any) -> Pid | None:
        """A pid, a registered name, or ``(name, node)`` -> pid (local names only)."""
        if type(dest) is Pid:
            return dest
        if isinstance(dest, str):
            return self.names.get(dest)
        if isinstance(dest, tuple) and len(dest) == 2 and dest[1] == self.name:
            return self.names.get(dest[0])
        raise TypeError(f"not an actor address: {dest!r}")

    # -- routing: messages ----------------------------------------------------

    def send(self, dest: Any, msg: Any) -> None:
        if type(dest) is Pid:
            proc = self.procs.get(dest)
            if proc is not None:
                proc.deliver(msg)
            elif dest[0] != self.name and self.dist is not None:
                self.dist.send(dest, msg)
            return
        if isinstance(dest, str):
            pid = self.names.get(dest)
            if pid is not None:
                self.procs[pid].deliver(msg)
            return
        if isinstance(dest, tuple) and len(dest) == 2 and isinstance(dest[0], str):
            name, node = dest
            if node == self.name:
                self.send(name, msg)
            elif self.dist is not None:
                self.dist.send_signal(node, ("send_name", name, msg))
            return
        raise TypeError(f"not an actor address: {dest!r}")

    def reply(self, ref: Ref, value: Any, rpc: bool = False) -> None:
        """Answer the call (or, with ``rpc``, the rpc) waiting on ``ref``."""
        if ref[0] == self.name:
            fut = self.pending.get(ref)
            if fut is not None and not fut.done():
                fut.set_result(value)
        elif self.dist is not None:
            callee = self.call_monitors.pop(ref, None)  # the reply ends the call's monitor here
            if callee is not None and callee.monitors:
                callee.monitors.pop(ref, None)
            self.dist.reply(ref, value, rpc)

    def fail_pending(self, ref: Ref, exc: BaseException) -> None:
        fut = self.pending.get(ref)
        if fut is not None and not fut.done():
            fut.set_exception(exc)

    # -- routing: signals -----------------------------------------------------

    def route_exit(self, dest: Pid, sender: Pid | None, reason: Any) -> None:
        proc = self.procs.get(dest)
        if proc is not None:
            proc.signal_exit(sender, reason)
        elif not self.is_local(dest):
            self._remote(dest, ("exit", dest, sender, reason))

    def route_unlink_and_exit(self, dest: Pid, sender: Pid, reason: Any) -> None:
        proc = self.procs.get(dest)
        if proc is not None:
            _unlink_then_exit(proc, sender, reason)
        elif not self.is_local(dest):
            self._remote(dest, ("link_exit", dest, sender, reason))

    def route_link(self, dest: Pid, sender: Pid) -> None:
        proc = self.procs.get(dest)
        if proc is not None:
            proc.signal_link(sender)
        elif (state := self.remote_state(dest)) != "ok":
            self.route_exit(sender, dest, state)
        else:
            self._remote(dest, ("link", dest, sender))

    def route_unlink(self, dest: Pid, sender: Pid) -> None:
        proc = self.procs.get(dest)
        if proc is not None:
            proc.signal_unlink(sender)
        elif not self.is_local(dest):
            self._remote(dest, ("unlink", dest, sender))

    def route_monitor(self, dest: Pid, watcher: Pid | None, ref: Ref) -> None:
        proc = self.procs.get(dest)
        if proc is not None:
            proc.signal_monitor(watcher, ref)
        elif (state := self.remote_state(dest)) != "ok":
            self.route_down(watcher, ref, dest, state)
        else:
            self._remote(dest, ("monitor", dest, watcher, ref))

    def route_demonitor(self, dest: Pid | None, ref: Ref) -> None:
        if dest is None:  # a remote caller gave up on its call: we know the callee by the ref
            callee = self.call_monitors.pop(ref, None)
            if callee is not None:
                callee.signal_demonitor(ref)
            return
        proc = self.procs.get(dest)
        if proc is not None:
            proc.signal_demonitor(ref)
        elif not self.is_local(dest):
            self._remote(dest, ("demonitor", dest, ref))

    def end_remote_call(self, node: str, ref: Ref) -> None:
        """A call to an actor on ``node`` ended without its reply (timeout,
        cancel): that node holds the call's monitor under ``ref``; drop it."""
        if self.dist is not None:
            self.dist.send_signal(node, ("demonitor", None, ref))

    def route_down(self, watcher: Pid | None, ref: Ref, pid: Pid, reason: Any) -> None:
        """Tell ``watcher`` that ``pid`` is gone: a pending call, or a Down message."""
        if ref[0] == self.name and ref in self.pending:
            self.fail_pending(ref, ActorExited(pid, reason))
            return
        if watcher is None:  # a call's monitor: its ref names the caller's node
            self.call_monitors.pop(ref, None)
            if ref[0] != self.name:
                self._remote(ref, ("down", None, ref, pid, reason))  # type: ignore[arg-type]
            return
        proc = self.procs.get(watcher)
        if proc is not None:
            if proc.watching is not None and proc.watching.pop(ref, None) is not None:
                proc.deliver(Down(ref, pid, reason))
        elif not self.is_local(watcher):
            self._remote(watcher, ("down", watcher, ref, pid, reason))

    def remote_state(self, pid: Pid) -> str:
        """``"ok"`` if ``pid`` may be alive on a connected node, else the reason
        it cannot be reached: ``"noproc"`` (this node, or an old incarnation of a
        connected one) or ``"noconnection"``."""
        if pid[0] == self.name:
            return "noproc"
        dist = self.dist
        if dist is None or not dist.connected(pid[0]):
            return "noconnection"
        creation = dist.peer_creation(pid[0])
        return "ok" if creation is None or creation == pid[1] else "noproc"

    def _remote(self, dest: Pid, signal: tuple[Any, ...]) -> None:
        if self.dist is not None:
            self.dist.send_signal(dest[0], signal)

    # -- node monitoring ------------------------------------------------------

    def monitor_node(self, watcher: Pid, node: str, flag: bool = True) -> None:
        watchers = self.node_watchers.setdefault(node, {})
        if not flag:
            watchers.pop(watcher, None)
            return
        watchers[watcher] = watchers.get(watcher, 0) + 1
        if node != self.name and (self.dist is None or not self.dist.connected(node)):
            self.node_down(node)

    def notify_node_watchers(self, msg: Any) -> None:
        for watcher in list(self.all_node_watchers):
            proc = self.procs.get(watcher)
            if proc is None:
                self.all_node_watchers.discard(watcher)
            else:
                proc.deliver(msg)

    def node_down(self, node: str) -> None:
        """The connection to ``node`` is gone: fail everything that depended on it."""
        for watcher, count in self.node_watchers.pop(node, {}).items():
            for _ in range(count):
                self.send(watcher, NodeDown(node))
        for ref, target in list(self.pending_remote.items()):
            if type(target) is Pid and target[0] == node or type(target) is tuple and target[1] == node:
                self.fail_pending(ref, ActorExited(target, "noconnection"))
            elif target == node:
                self.fail_pending(ref, HermesError(f"node {node} went down"))
        for proc in list(self.procs.values()):
            self._sever(proc, node)

    def _sever(self, proc: Process, node: str) -> None:
        if proc.links:
            for other in [p for p in proc.links if p[0] == node]:
                proc.links.discard(other)
                proc.signal_exit(other, "noconnection")
        if proc.watching:
            for ref, target in [(r, t) for r, t in proc.watching.items() if t[0] == node]:
                self.route_down(proc.pid, ref, target, "noconnection")
        if proc.monitors:
            for ref in [r for r, w in proc.monitors.items() if (w if w is not None else r)[0] == node]:
                del proc.monitors[ref]
                self.call_monitors.pop(ref, None)

    # -- stopping -------------------------------------------------------------

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every actor with ``"shutdown"`` (see ``_shutdown``)."""
        self.stopping = True
        if self._scan is not None:
            self._scan.cancel()
        await _shutdown.stop_all(self, timeout)

    def done_future(self, proc: Process) -> asyncio.Future[Any]:
        """A future set to ``proc``'s exit reason when it has ended."""
        if proc.done is None:
            proc.done = self.loop.create_future()
            if proc.state == DEAD:
                proc.done.set_result(proc.reason)
        return proc.done


def _unlink_then_exit(proc: Process, sender: Pid, reason: Any) -> None:
    if proc.links is None or sender not in proc.links:
        return  # unlinked meanwhile: the signal no longer applies
    proc.links.discard(sender)
    proc.signal_exit(sender, reason)

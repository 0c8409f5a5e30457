"""The actor API: the functions of the public contract that act on actors.

Each function finds the node of this process and the calling actor, then
asks the node to route the message or signal. ``send`` is the hot path: a
type check, a dict lookup and a deque append.
"""
from __future__ import annotations

import asyncio
import itertools
import types
from threading import get_ident
from typing import Any, Callable, Generator

from .._errors import ActorExited, HermesError, NotInActor
from . import _current as _nodemod
from ._node import Node
from ._actor import Actor, Call, Cast
from ._flow import options_of as flow_options_of
from ._flow import process_info as _process_info
from ._messages import Down
from ._pid import Pid, Ref
from ._process import Process, current

_new_tuple = tuple.__new__


def _caller(what: str) -> Process:
    proc = current.get()
    if proc is None:
        node_ = _nodemod._node
        if node_ is not None and node_.thread != get_ident():
            raise _nodemod.off_loop(node_)
        raise NotInActor(f"{what}() must be called from inside an actor (a task started inside one is not it)")
    return proc


# -- identity ---------------------------------------------------------------

def self() -> Pid:  # noqa: A001 - the contract's name, as Erlang's self()
    """The calling actor's pid."""
    return _caller("self").pid


def node() -> str:
    """This node's name, ``"NAME@HOST"``."""
    return _nodemod.get().name


def nodes() -> list[str]:
    """Names of the connected nodes, without this one."""
    dist = _nodemod.get().dist
    return dist.nodes() if dist is not None else []


async def connect(name: str) -> bool:
    """Connect to node ``name``: ``True``, or ``False`` if unreachable or refused."""
    node_ = _nodemod.get()
    if name == node_.name:
        return True
    if node_.dist is None:
        return False
    return await node_.dist.connect(name)


def disconnect(name: str) -> bool:
    """Drop the connection to ``name``; ``True`` if there was one."""
    dist = _nodemod.get().dist
    return dist is not None and dist.disconnect(name)


def monitor_node(name: str, flag: bool = True) -> None:
    """The caller receives ``NodeDown(name)`` when the connection to ``name`` goes."""
    proc = _caller("monitor_node")
    proc.node.monitor_node(proc.pid, name, flag)


def monitor_nodes(flag: bool = True) -> None:
    """The caller receives ``NodeUp(name)`` and ``NodeDown(name)`` for every node
    that connects or goes (hidden nodes excepted), as ``net_kernel:monitor_nodes``."""
    proc = _caller("monitor_nodes")
    if flag:
        proc.node.all_node_watchers.add(proc.pid)
    else:
        proc.node.all_node_watchers.discard(proc.pid)


def _check_timeout(timeout: Any) -> None:
    """``timeout`` of call/receive/rpc: seconds >= 0 (``None``: no limit). NaN is no number of seconds."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout is a number of seconds or None, not {type(timeout).__name__}")
    if not timeout >= 0:  # false for NaN too
        raise ValueError(f"timeout must be a number of seconds >= 0, or None; not {timeout!r}")


# -- spawning and messages --------------------------------------------------

def spawn(target: Any, *args: Any, node: str | None = None, link: bool = False, **kwargs: Any) -> Pid:
    """Start an actor running ``target`` (an ``Actor`` subclass or an async function).

    ``node``, ``link``, ``mailbox_limit`` and ``overflow`` are spawn's own
    keywords (never passed to ``target``): ``mailbox_limit``/``overflow``
    override the ``Actor`` class attributes of the same names."""
    node_ = _nodemod._node
    if node_ is None or node_.thread != get_ident():  # no node, or another thread: raise (get, inline)
        node_ = _nodemod.get()
    parent = current.get()
    if link and parent is None:
        raise NotInActor("spawn(..., link=True) must be called from inside an actor")
    if node is None or node == node_.name:
        return node_.spawn(target, args, kwargs, parent=parent, link=link)
    if not (callable(target) or isinstance(target, type) and issubclass(target, Actor)):
        # checked here, as a local spawn does: the other node would only log it
        raise TypeError(f"spawn target must be an Actor subclass or an async function, not {target!r}")
    if node_.dist is None:
        raise HermesError(f"cannot spawn on {node}: this node is not distributed")
    flow_options_of(target, dict(kwargs))  # ValueError/TypeError before anything leaves the node
    return node_.dist.spawn(node, target, args, kwargs, parent=parent, link=link)


def send(dest: Any, msg: Any, *, _ident: Callable[[], int] = get_ident) -> None:
    """Send ``msg`` to a pid, a registered name, or ``(name, node)``. Never raises
    for a dead or unknown destination; ``SerializationError`` if it must cross
    nodes and cannot be pickled."""
    node_ = _nodemod._node
    if node_ is None or node_.thread != _ident():  # no node, or another thread: raise (a local: cheaper)
        node_ = _nodemod.get()
    if type(dest) is Pid:  # Node.send's first case, inline: one call less pays for the thread check
        proc = node_.procs.get(dest)
        if proc is not None:
            proc.deliver(msg)
        elif dest[0] != node_.name and node_.dist is not None:  # and its remote case: a cross-node send
            node_.dist.send(dest, msg)
        return
    node_.send(dest, msg)


async def receive(match: Callable[[Any], bool] | None = None, timeout: float | None = None) -> Any:
    """The next message, or the first for which ``match(msg)`` is true; the
    others stay queued in order. ``TimeoutError`` after ``timeout`` seconds."""
    proc = _caller("receive")
    if timeout is not None:
        _check_timeout(timeout)
    mailbox = proc.mailbox
    if match is None and mailbox:
        return mailbox.popleft()
    loop = proc.node.loop
    expired = False
    timer = None
    checked = 0  # messages already tried against match: never tried twice

    def expire() -> None:
        nonlocal expired
        expired = True
        waiter = proc.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    try:
        while True:
            if match is None:
                if mailbox:
                    return mailbox.popleft()
            else:
                for index, msg in enumerate(itertools.islice(mailbox, checked, None), checked):
                    if match(msg):
                        del mailbox[index]
                        return msg
                checked = len(mailbox)
            if expired or (timeout is not None and timeout <= 0):
                raise TimeoutError(f"receive timed out after {timeout}s")
            if timeout is not None and timer is None:
                timer = loop.call_later(timeout, expire)
            waiter = proc.waiter = loop.create_future()
            try:
                await waiter
            finally:
                proc.waiter = None
    finally:
        if timer is not None:
            timer.cancel()


async def call(dest: Any, request: Any, timeout: float | None = 5.0) -> Any:
    """Send ``request`` to an ``Actor``'s ``handle_call`` and wait for the reply.

    ``TimeoutError`` after ``timeout`` seconds; ``ActorExited`` if the callee is
    dead or dies before replying."""
    node_ = _nodemod._node
    if node_ is None or node_.thread != get_ident():  # no node, or another thread: raise (get, inline)
        node_ = _nodemod.get()
    if timeout is not None and (type(timeout) is not float or not timeout >= 0):
        _check_timeout(timeout)  # before anything is sent (the default, a float >= 0, needs no call)
    loop = node_.loop
    target: Any
    if type(dest) is Pid:
        target = dest
    elif type(dest) is tuple and len(dest) == 2 and isinstance(dest[0], str) and dest[1] != node_.name:
        # (name, node) on another node: the name is resolved there, from the
        # call's one frame, as gen:call does; connected first if need be
        target = dest
        if node_.dist is not None and not node_.dist.connected(dest[1]):
            started = loop.time()
            if not await asyncio.wait_for(node_.dist.connect(dest[1]), timeout):
                raise ActorExited(dest, "noconnection")
            if timeout is not None:
                timeout = max(0.0, timeout - (loop.time() - started))
    else:
        target = node_.resolve(dest)
        if target is None:
            raise ActorExited(dest, "noproc")
    caller = current.get()
    ref = _new_tuple(Ref, (node_.name, node_.creation, next(node_._ref_ids)))  # make_ref, inline
    replied = False
    fut: asyncio.Future[Any] = loop.create_future()
    proc = node_.procs.get(target)
    node_.pending[ref] = fut
    try:
        if proc is None and type(target) is Pid:  # the remote call: one check-and-send, no helper calls
            if target[0] == node_.name:  # ours (perhaps an earlier incarnation), and dead
                raise ActorExited(target, "noproc")
            dist = node_.dist
            state = "noconnection" if dist is None else dist.call(
                target, request, caller.pid if caller is not None else None, ref)
            if state is not None:
                raise ActorExited(target, state)
            node_.pending_remote[ref] = target
        elif proc is not None:
            proc.signal_monitor(None, ref)  # a Down for ref fails fut (see Node.route_down)
            # An idle callee handles the request in this turn (as a remote call's
            # does, see deliver_now); the caller then yields once, as it would
            # have for the reply: one loop turn per call instead of two.
            proc.deliver_now(Call(request, caller.pid if caller is not None else None, ref))
            if fut.done():
                await _one_turn()
                replied = True
                return fut.result()
        else:
            _call_name(node_, target, request, caller, ref)
        if timeout is not None:
            node_.deadlines.add(fut, timeout)  # one timer per node, not one per call
        reply = await fut
        replied = True
        return reply
    finally:
        del node_.pending[ref]
        if proc is not None:
            proc.signal_demonitor(ref)
        elif node_.pending_remote.pop(ref, None) is not None and not replied:  # a reply ends it there
            node_.end_remote_call(target[0] if type(target) is Pid else target[1], ref)


@types.coroutine
def _one_turn() -> Generator[None, None, None]:
    """Yield to the loop for one turn (``asyncio.sleep(0)`` without its extra frame)."""
    yield


def _call_name(node_: Node, target: tuple[str, str], request: Any, caller: Process | None, ref: Ref) -> None:
    """Send a call to ``(name, node)`` on another node: the name is resolved there."""
    if node_.dist is None or not node_.dist.connected(target[1]):
        raise ActorExited(target, "noconnection")
    node_.dist.call_name(target[1], target[0], request, caller.pid if caller else None, ref)
    node_.pending_remote[ref] = target


def cast(dest: Any, msg: Any) -> None:
    """Fire-and-forget to an ``Actor``'s ``handle_cast``."""
    send(dest, Cast(msg))


def reply(ref: Ref, value: Any) -> None:
    """Answer a call later (after ``handle_call`` returned ``NOREPLY``)."""
    _nodemod.get().reply(ref, value)


# -- links, monitors, exits -------------------------------------------------

def link(pid: Pid) -> None:
    """Link the caller and ``pid``: when one exits abnormally, so does the other."""
    proc = _caller("link")
    if type(pid) is not Pid:  # as monitor and exit: a wrong argument is an error, not a no-op
        raise TypeError(f"link takes a pid, not {pid!r}")
    if pid == proc.pid or (proc.links is not None and pid in proc.links):
        return
    proc.node.link_pair(proc, pid)


def unlink(pid: Pid) -> None:
    proc = _caller("unlink")
    if proc.links is not None and pid in proc.links:
        proc.links.discard(pid)
        proc.node.route_unlink(pid, proc.pid)


def trap_exits(flag: bool = True) -> bool:
    """Receive ``Exit(pid, reason)`` messages instead of dying; returns the old flag."""
    proc = _caller("trap_exits")
    old, proc.trap_exit = proc.trap_exit, bool(flag)
    return old


def monitor(target: Any) -> Ref:
    """The caller receives ``Down(ref, pid, reason)`` when ``target`` exits."""
    proc = _caller("monitor")
    node_ = proc.node
    pid = node_.resolve(target)
    ref = node_.make_ref()
    if pid is None:
        proc.deliver(Down(ref, target, "noproc"))
        return ref
    if proc.watching is None:
        proc.watching = {}
    proc.watching[ref] = pid
    node_.route_monitor(pid, proc.pid, ref)
    return ref


def demonitor(ref: Ref, flush: bool = False) -> bool:
    """Stop monitoring; with ``flush``, also drop a ``Down`` for ``ref`` already queued."""
    proc = _caller("demonitor")
    target = proc.watching.pop(ref, None) if proc.watching else None
    if target is not None:
        proc.node.route_demonitor(target, ref)
    if flush:
        for msg in list(proc.mailbox):
            if type(msg) is Down and msg.ref == ref:
                proc.mailbox.remove(msg)
    return target is not None


def exit(pid: Pid, reason: Any) -> None:  # noqa: A001 - Erlang's exit/2
    """Send an exit signal to ``pid``. ``"kill"`` cannot be trapped."""
    node_ = _nodemod.get()
    caller = current.get()
    target = node_.resolve(pid)
    if target is not None:
        node_.route_exit(target, caller.pid if caller else None, reason)


# -- registered names -------------------------------------------------------

def register(name: str, pid: Pid | None = None) -> bool:
    """Register ``pid`` (default: the caller) under the unique local ``name``."""
    node_ = _nodemod.get()
    if pid is None:
        pid = _caller("register").pid
    if not isinstance(name, str):
        raise TypeError(f"names are strings, not {type(name).__name__}")
    proc = node_.procs.get(pid)
    if proc is None:
        raise ValueError(f"cannot register {name!r}: {pid} is not a live local actor")
    if name in node_.names:
        raise ValueError(f"name {name!r} is already registered to {node_.names[name]}")
    if proc.name is not None:
        raise ValueError(f"{pid} is already registered as {proc.name!r}")
    node_.names[name] = pid
    proc.name = name
    return True


def whereis(name: str) -> Pid | None:
    return _nodemod.get().names.get(name)


def unregister(name: str) -> bool:
    node_ = _nodemod.get()
    pid = node_.names.pop(name, None)
    if pid is None:
        return False
    proc = node_.procs.get(pid)
    if proc is not None:
        proc.name = None
    return True


# -- remote procedure call --------------------------------------------------

async def rpc(node: str, fn: Callable[..., Any], /, *args: Any, timeout: float | None = 5.0, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` as a temporary actor on ``node``; return its
    result or raise its exception."""
    node_ = _nodemod.get()
    if timeout is not None:
        _check_timeout(timeout)
    ref = node_.make_ref()
    fut: asyncio.Future[Any] = node_.loop.create_future()
    node_.pending[ref] = fut
    try:
        if node == node_.name:
            node_.spawn(rpc_body, (fn, args, kwargs, ref), {}, parent=None, link=False)
        else:
            if node_.dist is None or not await node_.dist.connect(node):
                raise HermesError(f"rpc: node {node} is not reachable")
            node_.pending_remote[ref] = node
            node_.dist.send_signal(node, ("rpc", ref, fn, args, kwargs))
        kind, value = await asyncio.wait_for(fut, timeout)
    finally:
        node_.pending.pop(ref, None)
        node_.pending_remote.pop(ref, None)
    if kind == "error":
        raise value
    return value


async def rpc_body(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], ref: Ref) -> None:
    """The temporary actor of an ``rpc``: runs ``fn`` and replies to ``ref``."""
    node_ = _nodemod.get()
    try:
        result = fn(*args, **kwargs)
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
    except BaseException as exc:  # even SystemExit: it is the rpc's answer, not the node's end
        node_.reply(ref, ("error", exc), rpc=True)
        return
    node_.reply(ref, ("ok", result), rpc=True)


# -- flow control -----------------------------------------------------------

def process_info(pid: Pid) -> dict[str, Any] | None:
    """A local actor's ``{"mailbox", "dropped", "name", "status"}`` (plus its
    ``mailbox_limit`` and ``overflow``); ``None`` if it is dead or not local."""
    if type(pid) is not Pid:
        raise TypeError(f"process_info takes a Pid, not {type(pid).__name__}")
    return _process_info(_nodemod.get().procs.get(pid))


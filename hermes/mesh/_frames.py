"""What each frame does when it arrives from a peer: the frame table.

A frame is a tuple whose first item is its tag. The hot ones carry plain ids
instead of ``Pid``/``Ref`` objects (a Pid pickles ~7x slower than an int):
the receiving node and the sending peer imply the rest. Their handlers look
the process or the pending call up with a plain tuple, which hashes and
compares as the Pid or Ref of the same fields (~50 ns to build, against
~170 ns for the subclass): the ``type: ignore``s below say just that.

| tag | frame | on arrival |
|---|---|---|
| ``m`` | ``(m, id, msg)`` | deliver ``msg`` to our actor ``id`` |
| ``c`` | ``(c, id, request, sender_id, ref_n)`` | a call: monitor the callee for the caller, deliver ``Call`` |
| ``cn`` | ``(cn, name, request, sender_id, ref_n)`` | the same, to our actor registered as ``name`` |
| ``r`` / ``x`` | ``(r, ref_n, value)`` / ``(x, ref_n, error)`` | a reply (or its error) for our pending call ``ref_n`` |
| ``send_name`` | ``(send_name, name, msg)`` | deliver to our actor registered as ``name`` |
| ``exit``, ``link_exit``, ``link``, ``unlink``, ``monitor``, ``demonitor``, ``down`` | pids and refs in full | the runtime's signals (``demonitor`` of a call: ``None``, the call's ref) |
| ``spawn`` / ``rpc`` | target, args, kwargs | start an actor (or an rpc's temporary actor) here |
| ``peers`` | ``[(name, address)]`` | mesh completion: connect to those we lack |
| ``bye`` | | the peer hangs up on purpose: not a failure to report |

Layers above add their own tags to a node's ``Distribution.handlers`` (pubsub's
``f``, pg's ``pg_sync``/``pg_delta``/``pg_hello`` when there is no service).

It knows the runtime's routing, never the transport's internals.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from .._errors import RemoteError, SerializationError
from ..runtime import Pid, Ref
from ..runtime.lowlevel import Call, rpc_body
from ..transport import Connection

if TYPE_CHECKING:
    from ._manager import Distribution

log = logging.getLogger("hermes.mesh")

# ``(MSG, pid_id, msg)``, a message to one of our actors, is the one frame not in
# HANDLERS: Distribution.frame_received delivers it itself, without a table lookup
# and a handler call (the receiving half of every cross-node send).
MSG = "m"


def _on_call(dist: Distribution, conn: Connection, frame: tuple[Any, ...]) -> None:
    _, pid_id, request, sender_id, ref_n = frame
    node = dist.node
    proc = node.procs.get((node.name, node.creation, pid_id))
    if proc is None:
        _refuse_call(conn, ref_n, Pid(node.name, node.creation, pid_id))
    else:
        _take_call(node, conn, proc, request, sender_id, ref_n)


def _on_call_name(dist: Distribution, conn: Connection, frame: tuple[Any, ...]) -> None:
    _, name, request, sender_id, ref_n = frame
    node = dist.node
    pid = node.names.get(name)
    proc = node.procs.get(pid) if pid is not None else None
    if proc is None:
        _refuse_call(conn, ref_n, (name, node.name))
    else:
        _take_call(node, conn, proc, request, sender_id, ref_n)


def _take_call(node: Any, conn: Connection, proc: Any, request: Any, sender_id: int | None, ref_n: int) -> None:
    peer = conn.peer
    ref = tuple.__new__(Ref, (peer.name, peer.creation, ref_n))
    sender = tuple.__new__(Pid, (peer.name, peer.creation, sender_id)) if sender_id is not None else None
    proc.signal_monitor(None, ref)  # its Down, if it dies first, goes back to the caller's node
    node.call_monitors[ref] = proc
    proc.deliver_now(Call(request, sender, ref))  # handled this turn if the callee is idle


def _refuse_call(conn: Connection, ref_n: int, callee: Any) -> None:
    """No such actor here: the caller's call fails with ``ActorExited(callee, "noproc")``."""
    peer = conn.peer
    conn.send(("down", None, Ref(peer.name, peer.creation, ref_n), callee, "noproc"))


def _on_send_name(dist: Distribution, conn: Connection, frame: tuple[Any, ...]) -> None:
    dist.node.send(frame[1], frame[2])


def _on_reply(dist: Distribution, conn: Connection, frame: tuple[Any, ...]) -> None:
    node = dist.node  # Node.reply's own-ref case, inline: a late reply (call ended) finds nothing
    fut = node.pending.get((node.name, node.creation, frame[1]))
    if fut is not None and not fut.done():
        fut.set_result(frame[2])


def _on_reply_error(dist: Distribution, conn: Connection, frame: tuple[Any, ...]) -> None:
    node = dist.node
    node.fail_pending((node.name, node.creation, frame[1]), frame[2])


def unsendable_reply(ref_n: int, value: Any, exc: SerializationError, rpc: bool) -> tuple[Any, ...]:
    """The frame to send instead of a reply that cannot be pickled: an rpc gets
    ``("error", RemoteError)`` as its answer; a call's caller gets the error raised."""
    if not rpc:
        return ("x", ref_n, RemoteError(f"the reply could not be sent back: {exc}"))
    kind, result = value
    if kind == "error":
        return ("r", ref_n, ("error", RemoteError.from_exception(result)))
    return ("r", ref_n, ("error", RemoteError(f"the result could not be sent back: {exc}")))


def _on_exit(dist: Distribution, conn: Connection, frame: tuple[Any, ...]) -> None:
    dist.node.route_exit(frame[1], frame[2], frame[3])


def _on_link_exit(dist: Distribution, conn: Connection, frame: tuple[Any, ...]) -> None:
    dist.node.route_unlink_and_exit(frame[1], frame[2], frame[3])


def _on_link(dist: Distribution, conn: Connection, frame: tuple[Any, ...]) -> None:
    dist.node.route_link(frame[1], frame[2])


def _on_unlink(dist: Distribution, conn: Connection, frame: tuple[Any, ...]) -> None:
    dist.node.route_unlink(frame[1], frame[2])


def _on_monitor(dist: Distribution, conn: Connection, frame: tuple[Any, ...]) -> None:
    dist.node.route_monitor(frame[1], frame[2], frame[3])


def _on_demonitor(dist: Distribution, conn: Connection, frame: tuple[Any, ...]) -> None:
    dist.node.route_demonitor(frame[1], frame[2])


def _on_down(dist: Distribution, conn: Connection, frame: tuple[Any, ...]) -> None:
    dist.node.route_down(frame[1], frame[2], frame[3], frame[4])


def _on_spawn(dist: Distribution, conn: Connection, frame: tuple[Any, ...]) -> None:
    _, pid, target, args, kwargs, link_from = frame
    node = dist.node
    if pid[0] != node.name or pid[1] != node.creation or pid in node.procs:
        if link_from is not None:
            node.route_exit(link_from, pid, "noproc")
        return
    try:
        node.spawn(target, args, kwargs, parent=None, link=False, pid=pid, remote_link=link_from)
    except (TypeError, ValueError) as exc:  # ValueError: a bad mailbox_limit/overflow of the class
        log.error("remote spawn from %s failed: %s", conn.peer.name, exc)
        if link_from is not None:
            node.route_exit(link_from, pid, exc)


def _on_rpc(dist: Distribution, conn: Connection, frame: tuple[Any, ...]) -> None:
    _, ref, fn, args, kwargs = frame
    if type(ref) is not Ref or type(args) is not tuple or type(kwargs) is not dict:  # else its actor would crash
        raise TypeError(f"rpc frame of a wrong shape ({type(ref).__name__}, {type(args).__name__}, "
                        f"{type(kwargs).__name__})")
    dist.node.spawn(rpc_body, (fn, args, kwargs, ref), {}, parent=None, link=False)


def _on_bye(dist: Distribution, conn: Connection, frame: tuple[Any, ...]) -> None:
    conn.close("disconnected by peer")


def _on_peers(dist: Distribution, conn: Connection, frame: tuple[Any, ...]) -> None:
    for name, address in frame[1]:
        if name not in dist.conns and name not in dist.pending:
            # with a directory, that node knows us from it too: one of us dials first
            dist.connect_soon(name, tuple(address), in_turn=bool(dist.resolvers))


HANDLERS: dict[str, Callable[[Distribution, Connection, tuple[Any, ...]], None]] = {
    "c": _on_call, "cn": _on_call_name, "r": _on_reply, "x": _on_reply_error, "send_name": _on_send_name, "exit": _on_exit,
    "link_exit": _on_link_exit, "link": _on_link, "unlink": _on_unlink, "monitor": _on_monitor,
    "demonitor": _on_demonitor, "down": _on_down, "spawn": _on_spawn, "rpc": _on_rpc, "peers": _on_peers,
    "bye": _on_bye,
}

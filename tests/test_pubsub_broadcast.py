"""The mesh adapter's publish path (``PGServer.broadcast``), between real node
processes: it pickles its frame inline (``transport.dumps``'s common case)
and leaves the max_frame check to the mesh's sender, so what the rare cases
do is pinned here: a message only cloudpickle can carry, one that names a
class, and one over ``max_frame`` (refused before anything leaves, naming the
message's type).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

import hermes
from hermes import mesh
from hermes.runtime import lowlevel

from _cluster import poll

MAX_FRAME = 2**16
GROUP = ("hermes", "hermes.pubsub")  # the default PubSub's group: the nodes it runs on


@dataclass(frozen=True)
class Event:
    n: int


class Box(hermes.Actor):
    def __init__(self, topic: str) -> None:
        hermes.subscribe(topic)
        self.got: list[Any] = []

    def handle_info(self, msg: Any) -> None:
        self.got.append(msg)


def start_box(topic: str) -> Any:
    return hermes.spawn(Box, topic)


def box_got(pid: Any) -> list[Any]:
    """What the box got; a function is shown as what it returns for 41."""
    got = lowlevel.process_of(pid).actor.got  # type: ignore[union-attr]
    return [("fn", m[1](41)) if type(m) is tuple and callable(m[1]) else m for m in got]


def sees_member_on(peer: str) -> bool:
    return any(pid[0] == peer for pid in hermes.pg.get_members(GROUP))


def publish_all(topic: str, peer: str) -> dict[str, Any]:
    """On the publishing node: a closure (cloudpickle), a class instance, one
    message over max_frame, then a marker; what the oversized one did."""
    conn = mesh.of(lowlevel.current_node()).conns[peer]  # type: ignore[union-attr]
    step = 1
    hermes.publish(topic, ("fn", lambda x: x + step))  # a closure: only cloudpickle carries it
    hermes.publish(topic, Event(3))
    before = (conn.statistics().bytes_out, conn.queued_bytes())
    try:
        hermes.publish(topic, b"x" * (MAX_FRAME + 1))
    except hermes.SerializationError as exc:
        error: Any = exc
    else:
        error = None
    after = (conn.statistics().bytes_out, conn.queued_bytes())
    hermes.publish(topic, "after")
    return {"error_type": type(error).__name__, "message": str(error), "unchanged": after == before}


@pytest.mark.timeout(120)
def test_broadcast_carries_closures_and_classes_and_refuses_an_oversized_message_before_it_leaves() -> None:
    with hermes.LocalCluster(["bcasta", "bcastb"], max_frame=MAX_FRAME) as c:
        a, b = c.nodes
        topic = "bcast.t"
        remote = c.rpc(b, start_box, topic)
        local = c.rpc(a, start_box, topic)
        poll(lambda: c.rpc(a, sees_member_on, b))
        result = c.rpc(a, publish_all, topic, b)
        assert result["error_type"] == "SerializationError"
        assert "type 'bytes'" in result["message"] and "max_frame" in result["message"]  # the message's type
        assert result["unchanged"]  # not a byte of it written or queued
        want = [("fn", 42), Event(3), "after"]
        poll(lambda: len(c.rpc(b, box_got, remote)) >= 3)
        assert c.rpc(b, box_got, remote) == want  # nothing of the oversized one, order kept
        assert c.rpc(a, box_got, local) == want  # nor locally: it raised before anyone got it

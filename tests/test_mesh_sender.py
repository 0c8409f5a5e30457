"""The mesh's sender seam: ``Distribution.sender(nodes)`` (multicast bound once,
for a hot path such as pubsub's) and ``Distribution.links`` (moves whenever a
connection comes or goes, so a holder knows its sender is stale), between
real node processes.
"""
from __future__ import annotations

from typing import Any

import pytest

import hermes
from hermes import mesh
from hermes._errors import SerializationError
from hermes.runtime import lowlevel
from hermes.transport import dumps

from _cluster import poll

MAX_FRAME = 2**20
_HELD: dict[str, Any] = {}  # senders bound on the node that runs these functions


class Box(hermes.Actor):
    def __init__(self) -> None:
        self.got: list[Any] = []

    def handle_info(self, msg: Any) -> None:
        self.got.append(msg)


def start_box() -> Any:
    return hermes.spawn(Box)


def box_got(pid: Any) -> list[Any]:
    return list(lowlevel.process_of(pid).actor.got)  # type: ignore[union-attr]


def _dist() -> Any:
    return mesh.of(lowlevel.current_node())


def links() -> int:
    return _dist().links  # type: ignore[no-any-return]


def bind(key: str, nodes: list[str]) -> bool:
    _HELD[key] = _dist().sender(nodes)
    return _HELD[key] is not None


def write(key: str, pid: Any, msg: Any) -> None:
    _HELD[key](dumps(("m", pid[2], msg)))


def write_too_big(key: str, peer: str) -> tuple[str, int, int]:
    conn = _dist().conns[peer]
    before = conn.statistics().bytes_out
    try:
        _HELD[key](b"x" * (MAX_FRAME + 1))
    except SerializationError:
        raised = "SerializationError"
    else:
        raised = "nothing"
    return raised, before, conn.statistics().bytes_out


def send_too_big(pid: Any, peer: str) -> tuple[str, int, int]:
    """``hermes.send`` of a message over max_frame to a remote pid: the error names its type."""
    conn = _dist().conns[peer]
    before = conn.statistics().bytes_out
    try:
        hermes.send(pid, b"x" * (MAX_FRAME + 1))
    except SerializationError as exc:
        raised = str(exc)
    else:
        raised = "nothing"
    return raised, before, conn.statistics().bytes_out


@pytest.mark.timeout(120)
def test_a_sender_writes_to_the_nodes_connected_when_bound_and_links_says_when_it_is_stale() -> None:
    with hermes.LocalCluster(["senda", "sendb"], max_frame=MAX_FRAME) as c:
        a, b = c.nodes
        box = c.rpc(b, start_box)
        assert c.rpc(a, bind, "none", ["nobody@nowhere"]) is False  # no node connected: no sender
        assert c.rpc(a, bind, "old", ["nobody@nowhere", b]) is True  # the unconnected one skipped
        c.rpc(a, write, "old", box, "one")
        poll(lambda: c.rpc(b, box_got, box) == ["one"])

        raised, before, after = c.rpc(a, write_too_big, "old", b)
        assert raised == "SerializationError" and after == before  # nothing written
        raised, before, after = c.rpc(a, send_too_big, box, b)
        assert "type 'bytes'" in raised and "max_frame" in raised and after == before  # the message's own type

        first = c.rpc(a, links)
        c.kill("sendb")
        poll(lambda: c.rpc(a, links) > first)  # the link went: links moved
        c.start("sendb")
        poll(lambda: c.rpc(a, hermes.nodes) == [b])
        assert c.rpc(a, links) >= first + 2  # and moved again when it came back
        box = c.rpc(b, start_box)
        c.rpc(a, write, "old", box, "stale")  # the old sender's link is closed: dropped
        assert c.rpc(a, bind, "new", [b]) is True
        c.rpc(a, write, "new", box, "two")
        poll(lambda: c.rpc(b, box_got, box) == ["two"])  # "stale" never came, though it went first


def register_tags() -> dict[str, str]:
    """On a node: what ``register_frame`` says to the runtime's tags and to a new one."""
    said = {}
    for tag in ("m", "c", "test.new"):
        try:
            _dist().register_frame(tag, lambda dist, conn, frame: None)
        except ValueError as exc:
            said[tag] = str(exc)
        else:
            said[tag] = "registered"
    return said


@pytest.mark.timeout(60)
def test_register_frame_refuses_the_runtimes_tags_the_message_frame_too() -> None:
    with hermes.LocalCluster(["tagsa"]) as c:
        said = c.rpc(c.nodes[0], register_tags)
    assert said == {"m": "frame tag 'm' belongs to the runtime", "c": "frame tag 'c' belongs to the runtime",
                    "test.new": "registered"}

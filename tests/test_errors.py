"""Bad input at the API raises the documented error, on the calling node, before any
frame leaves it: the same kind of mistake raises the same exception everywhere.

Table-driven: each row runs on node "erra" of a real two-node cluster against node
"errb"; the row asserts the exception type, that the link to errb carried no new
frame (its statistics, sent and queued), and that errb logged nothing about it.
"""
from __future__ import annotations

import math
from typing import Any, Awaitable, Callable, Iterator

import pytest

import hermes
from hermes import SerializationError
from hermes.mesh import of as dist_of
from hermes.runtime import lowlevel



MAX_FRAME = 2**20
BIG = b"x" * (2 * MAX_FRAME)


class Worker(hermes.Actor):
    def handle_call(self, request: Any, sender: Any) -> Any:
        return request


async def remote_fn() -> str:
    return "ran"


# name -> (what the caller does, given the peer's name; the exception it must raise)
CASES: dict[str, tuple[Callable[[str], Awaitable[Any] | Any], type[BaseException]]] = {
    "publish bigger than max_frame": (lambda peer: hermes.publish("topic", BIG), SerializationError),
    "send bigger than max_frame": (lambda peer: hermes.send(("worker", peer), BIG), SerializationError),
    "call bigger than max_frame": (lambda peer: hermes.call(("worker", peer), BIG), SerializationError),
    "rpc bigger than max_frame": (lambda peer: hermes.rpc(peer, len, BIG), SerializationError),
    "publish to an unhashable topic": (lambda peer: hermes.publish(["not", "hashable"], "m"), TypeError),
    "remote spawn of 42": (lambda peer: hermes.spawn(42, node=peer), TypeError),
    "remote spawn of a string": (lambda peer: hermes.spawn("Worker", node=peer), TypeError),
    "link to a non-pid": (lambda peer: hermes.link("not a pid"), TypeError),
    "monitor of a non-pid": (lambda peer: hermes.monitor(3.5), TypeError),
    "exit of a non-pid": (lambda peer: hermes.exit(3.5, "kill"), TypeError),
    "call with a NaN timeout": (lambda peer: hermes.call(("worker", peer), "x", timeout=math.nan), ValueError),
    "call with a negative timeout": (lambda peer: hermes.call(("worker", peer), "x", timeout=-1), ValueError),
    "call with a string timeout": (lambda peer: hermes.call(("worker", peer), "x", timeout="5"), TypeError),
    "rpc with a NaN timeout": (lambda peer: hermes.rpc(peer, remote_fn, timeout=math.nan), ValueError),
    "rpc with a negative timeout": (lambda peer: hermes.rpc(peer, remote_fn, timeout=-0.5), ValueError),
    "receive with a NaN timeout": (lambda peer: hermes.receive(timeout=math.nan), ValueError),
    "receive with a negative timeout": (lambda peer: hermes.receive(timeout=-1), ValueError),
}


def _link_counters(peer: str) -> tuple[int, int]:
    stats = dist_of(lowlevel.current_node()).statistics()[peer]  # type: ignore[union-attr]
    return stats.frames_out, stats.queued_bytes


async def run_case(name: str, peer: str) -> tuple[str | None, tuple[int, int], tuple[int, int]]:
    """On the calling node: the case's exception type (None: none raised) and the link's counters."""
    action, _ = CASES[name]
    before = _link_counters(peer)
    raised = None
    try:
        result = action(peer)
        if hasattr(result, "__await__"):
            await result
    except BaseException as exc:  # noqa: BLE001 - the type is the answer
        raised = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return raised, before, _link_counters(peer)


async def start_worker() -> None:
    hermes.register("worker", hermes.spawn(Worker))


@pytest.fixture(scope="module")
def cluster() -> Iterator[hermes.LocalCluster]:
    with hermes.LocalCluster(["erra", "errb"], max_frame=MAX_FRAME) as cluster:
        cluster.rpc(cluster.nodes[1], start_worker)
        yield cluster


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_raises_before_anything_is_sent(cluster: hermes.LocalCluster, name: str) -> None:
    caller, peer = cluster.nodes
    expected = CASES[name][1]
    peer_log = len(cluster.output(peer))
    raised, before, after = cluster.rpc(caller, run_case, name, peer, timeout=30)
    assert raised == f"{expected.__module__}.{expected.__qualname__}", name
    assert after == before, f"{name}: a frame left the node ({before} -> {after})"
    new_in_peer_log = cluster.output(peer)[peer_log:]
    assert "ERROR" not in new_in_peer_log and "Traceback" not in new_in_peer_log


def test_the_nodes_still_answer(cluster: hermes.LocalCluster) -> None:
    caller, peer = cluster.nodes

    async def call_worker(peer: str) -> Any:
        return await hermes.call(("worker", peer), "ok", timeout=10)

    assert cluster.rpc(caller, call_worker, peer) == "ok"

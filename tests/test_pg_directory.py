"""The directory's packed runs (``changes(..., seqs=True)``) and a replica that
skips a run the mesh already delivered without decoding it."""
from __future__ import annotations

import pickle

import pytest

from hermes.pg._directory import Directory
from hermes.pg._scope import get_scope


def _numbered_directory() -> tuple[Directory, str]:
    d = Directory()
    d.register_node("a@h", 1, ("127.0.0.1", 1))
    d.sync("a@h", 1, {}, 0)
    d.update("a@h", 1, [("join", "g", ["m1"], 1), ("join", "g", ["m2"], 2)])
    d.register_node("b@h", 7, ("127.0.0.1", 2))
    d.update("b@h", 7, [("join", "h", ["n1"], 1)])
    d.update("a@h", 1, [("leave", "g", ["m1"], 3), ("leave", "g", ["nobody"], 4), ("join", "k", ["m3"], 5)])
    return d, d.snapshot()[1]


def test_numbered_feed_answers_pack_each_run_of_one_node():
    d, epoch = _numbered_directory()
    kind, answer_epoch, version, events = d.changes(epoch, 0, 0, True)
    assert (kind, answer_epoch, version) == ("events", epoch, 8)
    shapes = [e[:5] for e in events]
    assert shapes == [("node_up", "a@h", 1, ("127.0.0.1", 1)), ("sync", "a@h", 1, {}, 0),
                      ("changes", "a@h", 1, 1, 2), ("node_up", "b@h", 7, ("127.0.0.1", 2)),
                      ("changes", "b@h", 7, 1, 1), ("changes", "a@h", 1, 3, 5)]
    assert pickle.loads(events[2][5]) == [("join", "g", ["m1"], 1), ("join", "g", ["m2"], 2)]
    assert pickle.loads(events[4][5]) == [("join", "h", ["n1"], 1)]
    # leave #4 removed nobody: no event, so the run's numbers may skip
    assert pickle.loads(events[5][5]) == [("leave", "g", ["m1"], 3), ("join", "k", ["m3"], 5)]


def test_unnumbered_answers_and_changes_keep_their_shape():
    d, epoch = _numbered_directory()
    plain = d.changes(epoch, 0, 0)[3]
    assert ("join", "a@h", 1, "g", ["m1"], 1) in plain and not any(e[0] == "changes" for e in plain)
    d.update("a@h", 1, [("join", "u", ["x"])])  # no number: served as before, even to numbered callers
    assert d.changes(epoch, 8, 0, True)[3] == [("join", "a@h", 1, "u", ["x"])]
    assert d.changes(epoch, 9, 0, True) == ("events", epoch, 9, [])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_run_the_mesh_delivered_is_skipped_undecoded(hermes_node: object) -> None:
    scope = get_scope()
    scope.remote["x@h"] = (3, {"g": ["m1"]})
    scope.applied["x@h"] = 6
    # a body that cannot be decoded proves it was not decoded
    scope.apply_feed("events", [("changes", "x@h", 3, 5, 6, b"not a pickle")])
    assert scope.remote["x@h"] == (3, {"g": ["m1"]}) and scope.applied["x@h"] == 6
    # a run that goes past what the mesh gave: decoded, and only the new numbers apply
    body = pickle.dumps([("join", "g", ["m6"], 6), ("join", "g", ["m7"], 7), ("leave", "g", ["m1"], 8)])
    scope.apply_feed("events", [("changes", "x@h", 3, 6, 8, body)])
    assert scope.remote["x@h"] == (3, {"g": ["m7"]}) and scope.applied["x@h"] == 8
    # a stale incarnation's run changes nothing
    scope.apply_feed("events", [("changes", "x@h", 2, 9, 9, pickle.dumps([("join", "g", ["old"], 9)]))])
    assert scope.remote["x@h"] == (3, {"g": ["m7"]}) and scope.applied["x@h"] == 8

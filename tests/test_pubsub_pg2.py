"""The mesh adapter (``pubsub._pg2``): what its cached sender must not miss,
between real node processes."""
from __future__ import annotations

import pytest

import hermes

from _cluster import poll
from test_pubsub import Collectors, pubsub_nodes, start_pubsub


@pytest.mark.timeout(120)
def test_a_member_that_joins_between_publishes_is_reached_after_a_publish_to_one_node() -> None:
    # A PGServer keeps the mesh's sender until pg's members or the mesh's links
    # move. Here a member joins (no link comes or goes) and a publish to one
    # node (node=) comes in between: the next publish must still reach it.
    topic = "t-late-member"
    with hermes.LocalCluster(["p", "q", "r"]) as c:
        p, q, r = c.nodes
        collectors = Collectors(c, "late")
        try:
            for name in ("p", "q"):
                c.rpc(name, start_pubsub, "chat")
            poll(lambda: c.rpc("p", pubsub_nodes, "chat") == sorted([p, q]))
            on_q = collectors.start("q", [topic], "chat")
            c.rpc("p", hermes.publish, topic, "one", pubsub="chat")  # p's sender: q only
            assert collectors.wait_for("q", on_q, "one") == ["one"]
            c.rpc("r", start_pubsub, "chat")
            on_r = collectors.start("r", [topic], "chat")
            poll(lambda: c.rpc("p", pubsub_nodes, "chat") == sorted([p, q, r]))
            c.rpc("p", hermes.publish, topic, "to q", node=q, pubsub="chat")
            c.rpc("p", hermes.publish, topic, "two", pubsub="chat")
            assert collectors.wait_for("r", on_r, "two") == ["two"]
            assert collectors.wait_for("q", on_q, "two") == ["one", "to q", "two"]
        finally:
            collectors.stop()

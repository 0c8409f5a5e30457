"""Who dials (``hermes.mesh._connecting``): of two nodes that know each other
from the pg service, the one with the greater name dials and the other waits
for its link, so a cluster's start costs one handshake per pair, not two with
one refused as a duplicate. Real node processes (``LocalCluster``)."""
from __future__ import annotations

import itertools
from typing import Callable

import pytest

import hermes

NAMES = ["n1", "n2", "n3", "n4", "n5", "n6"]


def initiators() -> dict[str, str]:
    """On a node: for each connected peer, the name of the node that opened the link."""
    from hermes.mesh import of
    from hermes.runtime import lowlevel

    dist = of(lowlevel.current_node())
    assert dist is not None
    return {name: conn.local.name if conn.role == "connect" else name for name, conn in dist.conns.items()}


@pytest.mark.timeout(240)
def test_a_cluster_starts_with_one_handshake_per_pair(hermes_cluster: Callable[..., hermes.LocalCluster]) -> None:
    c = hermes_cluster(NAMES, startup_timeout=120)
    full = dict(zip(NAMES, c.nodes))
    opened = {name: c.rpc(name, initiators) for name in NAMES}
    for a, b in itertools.combinations(NAMES, 2):
        # one link per pair, and both ends agree on who opened it
        assert opened[a][full[b]] == opened[b][full[a]], (a, b, opened[a], opened[b])
    refused = {name: c.output(name).count("refused the connection") for name in NAMES}
    assert refused == dict.fromkeys(NAMES, 0), refused

"""The Hermes pytest plugin (registered as ``pytest11`` entry point ``hermes``).

Fixtures:

- ``hermes_cluster``: a factory, ``hermes_cluster(["a", "b"], **options)``
  returns a started ``LocalCluster``; every cluster it made is stopped after the
  test, and when the test fails the nodes' and the service's logs are attached
  to the report (one section per log file).
- ``hermes_node``: a node started with ``hermes.start()`` on the test's own
  event loop (async tests: pytest-asyncio or anyio), stopped after the test.

It must not be imported by hermes itself: only pytest loads it.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import pytest

import hermes

_clusters_key = pytest.StashKey[list["hermes.LocalCluster"]]()
_names = itertools.count(1)


@pytest.fixture
def hermes_cluster(request: pytest.FixtureRequest) -> Iterator[Callable[..., hermes.LocalCluster]]:
    """``hermes_cluster(names, **options)``: a ``LocalCluster``, stopped after the test."""
    clusters: list[hermes.LocalCluster] = []
    request.node.stash[_clusters_key] = clusters

    def make(names: list[str], **options: Any) -> hermes.LocalCluster:
        cluster = hermes.LocalCluster(names, **options)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.stop()


@pytest.fixture
async def hermes_node() -> AsyncIterator[Any]:
    """A node on the test's loop (``hermes.start()``), stopped after the test."""
    start = getattr(hermes, "start", None)
    if start is None:
        pytest.skip("hermes_node needs hermes.start(), which this version of hermes does not have")
    node = await start(f"pytest-{os.getpid()}-{next(_names)}")
    try:
        yield node
    finally:
        await node.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    clusters = item.stash.get(_clusters_key, None)
    if clusters and report.failed and call.when != "teardown":
        for cluster in clusters:
            for path in sorted(Path(cluster.log_dir).glob("*.log")):
                text = path.read_text(errors="replace")
                report.sections.append((f"hermes log {path.name}", text[-20_000:] or "(empty)"))
    return report

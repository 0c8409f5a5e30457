"""The pytest plugin ``hermes.testing``: its fixtures, loaded through the pytest11 entry point."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _cluster import alive

import hermes

def test_the_plugin_is_registered_by_the_entry_point(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("hermes")




@pytest.mark.timeout(120)
def test_hermes_cluster_starts_a_cluster_and_a_failure_attaches_the_node_logs(tmp_path: Path) -> None:
    test_file = tmp_path / "test_uses_plugin.py"
    test_file.write_text(textwrap.dedent("""
        import os
        import hermes

        def test_fails(hermes_cluster):
            c = hermes_cluster(["a", "b"])
            print("PIDS", *[n.proc.pid for n in c._nodes.values()], c._service.pid)
            assert c.rpc("a", hermes.nodes) == [c.nodes[1]]
            assert c.rpc("a", os.getpid) == -1, "fail on purpose"
    """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(test_file)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=110)
    out = result.stdout
    assert result.returncode == 1, out[-3000:]
    assert "fail on purpose" in out
    assert "hermes log a@" in out and "hermes log service.log" in out, out[-3000:]
    pids = [int(p) for p in out.split("PIDS", 1)[1].split("\n", 1)[0].split()]
    assert len(pids) == 3 and not any(alive(pid) for pid in pids)  # torn down after the test


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_hermes_node_is_a_node_on_the_tests_loop(hermes_node: object) -> None:
    # skipped (with its reason) where hermes.start() does not exist yet
    assert hermes.node() == hermes_node.name  # type: ignore[attr-defined]
    assert hermes.nodes() == []

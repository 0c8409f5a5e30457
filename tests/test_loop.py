"""Option ``loop``: ``run`` and node processes run on the loop it names."""
from __future__ import annotations

import asyncio

import pytest

import hermes
from hermes import LocalCluster



uvloop = pytest.importorskip("uvloop")


def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


async def main_loop_module() -> str:
    return loop_module()


def test_run_on_asyncio_loop() -> None:
    assert hermes.run(main_loop_module, name="loop-asyncio", loop="asyncio") == "asyncio"


def test_run_on_uvloop() -> None:
    assert hermes.run(main_loop_module, name="loop-uvloop", loop="uvloop") == "uvloop"


def test_auto_takes_uvloop_when_installed() -> None:
    assert hermes.run(main_loop_module, name="loop-auto", loop="auto") == "uvloop"


def test_bad_loop_is_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="option loop"):
        hermes.run(main_loop_module, name="loop-bad", loop="trio")
    with pytest.raises(ValueError, match="option loop"):
        LocalCluster(["a"], loop="trio")


@pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
def test_cluster_nodes_run_on_the_chosen_loop_and_talk(choice: str) -> None:
    with LocalCluster(["a", "b"], loop=choice) as cluster:
        assert cluster.rpc("a", loop_module) == choice
        assert cluster.rpc("b", loop_module) == choice
        # a call across the mesh on that loop
        b = cluster.nodes[1]
        assert cluster.rpc("a", hermes.rpc, b, loop_module) == choice


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "uvloop", None)  # import uvloop -> ImportError
    assert hermes.run(main_loop_module, name="loop-fallback", loop="auto") == "asyncio"
    with pytest.raises(hermes.HermesError, match=r"hermes-actors\[uvloop\]"):
        hermes.run(main_loop_module, name="loop-missing", loop="uvloop")

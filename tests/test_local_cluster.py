"""LocalCluster nodes import what the driver imports, and code registered by value travels by value."""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable

import cloudpickle
import pytest

import hermes

HELPER = '''
import os

def where():
    return ("helper ran", os.getpid())

async def relay(node, fn):
    import hermes
    return await hermes.rpc(node, fn)

async def spawn_there(node):
    import hermes
    me = hermes.self()
    hermes.spawn(reply_from, me, node=node)
    return await hermes.receive(timeout=10)

async def reply_from(to):
    import hermes
    hermes.send(to, ("spawned", hermes.node()))
'''


def _import_from(folder: Path, name: str) -> Any:
    (folder / f"{name}.py").write_text(HELPER)
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


@pytest.mark.timeout(120)
def test_nodes_get_the_drivers_sys_path(hermes_cluster: Callable[..., hermes.LocalCluster],
                                        tmp_path: Path) -> None:
    (tmp_path / "only_the_driver_imports_me.py").write_text(HELPER)
    sys.path.insert(0, str(tmp_path))  # on the driver's sys.path, not on PYTHONPATH
    try:
        assert str(tmp_path) not in os.environ.get("PYTHONPATH", "")
        helper = importlib.import_module("only_the_driver_imports_me")
        c = hermes_cluster(["a"])
        text, pid = c.rpc("a", helper.where)
        assert text == "helper ran" and pid != os.getpid()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("only_the_driver_imports_me", None)


@pytest.mark.timeout(120)
def test_a_module_registered_by_value_travels_by_value(hermes_cluster: Callable[..., hermes.LocalCluster],
                                                       tmp_path: Path) -> None:
    # imported, then its folder leaves sys.path: no node can import it by name
    helper = _import_from(tmp_path, "shipped_by_value")
    cloudpickle.register_pickle_by_value(helper)
    try:
        c = hermes_cluster(["a", "b"])
        a, b = c.nodes
        assert c.rpc("a", helper.where)[0] == "helper ran"               # LocalCluster.rpc
        assert c.rpc("a", helper.relay, b, helper.where)[0] == "helper ran"  # rpc between nodes
        assert c.rpc("a", helper.spawn_there, b) == ("spawned", b)       # spawn(node=)
    finally:
        cloudpickle.unregister_pickle_by_value(helper)
        sys.modules.pop("shipped_by_value", None)


def test_without_the_registration_the_node_cannot_import_it(hermes_cluster: Callable[..., hermes.LocalCluster],
                                                            tmp_path: Path) -> None:
    helper = _import_from(tmp_path, "not_registered")
    try:
        c = hermes_cluster(["a"])
        with pytest.raises(ModuleNotFoundError):
            c.rpc("a", helper.where)
    finally:
        sys.modules.pop("not_registered", None)

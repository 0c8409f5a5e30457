"""The layers' seams: no module imports a private name of another package.

Walks every module of the ``hermes`` package with ``ast`` and fails on

- an import of a private module (``_x``) or a private name of another
  subpackage (``hermes.runtime._node`` from ``hermes.pg``, ``from ..runtime
  import _node``), except the root's own shared modules (``hermes._errors``,
  ``hermes._config``, ``hermes._app``), which every layer may read;
- an import that points up the layers (the transport importing the mesh, the
  runtime importing pg, ...);
- a read of the runtime's private per-object attributes (``._hermes_proc``)
  outside ``hermes/runtime/``: the layers above use ``runtime.lowlevel``.

``__init__`` modules may re-export their own package's private modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import hermes

PACKAGE = Path(hermes.__file__).parent
ROOT_SHARED = {"_errors", "_config", "_app"}
# what each layer may import (besides itself and ROOT_SHARED); the rest is "up"
LAYER_BELOW = {
    "runtime": set(),
    "transport": set(),
    "mesh": {"runtime", "transport"},
    "registry": {"runtime"},
    "pg": {"runtime", "mesh", "transport"},
    "pubsub": {"runtime", "mesh", "transport", "registry", "pg"},
    "presence": {"runtime", "mesh", "transport", "registry", "pg", "pubsub"},
}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every hermes module or name imported."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    names: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node, is_package)
            names += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in names if name == "hermes" or name.startswith("hermes.")]


def _package_of(dotted: str) -> str:
    """The subpackage a dotted name belongs to; ``""`` for the root package's own modules."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else ""


def _private_crossing(importer: str, imported: str) -> bool:
    parts = imported.split(".")
    own = _package_of(importer)
    other = _package_of(imported)
    if other == own:
        return False  # inside one package (the root's own modules are one package too)
    if other == "":  # a subpackage reading the root: only its shared modules
        return parts[1].startswith("_") and parts[1] not in ROOT_SHARED or \
            any(p.startswith("_") and not p.startswith("__") for p in parts[3:])
    return any(p.startswith("_") and not p.startswith("__") for p in parts[1:])


def test_no_module_imports_a_private_name_of_another_package() -> None:
    offences = []
    for module, path in _modules():
        for line, imported in _imports(module, path):
            if _private_crossing(module, imported):
                offences.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported}")
    assert not offences, "private names crossing packages (use hermes.runtime.lowlevel or the package's " \
                         "public names):\n" + "\n".join(offences)


def test_imports_point_down_the_layers() -> None:
    offences = []
    for module, path in _modules():
        own = _package_of(module)
        if own not in LAYER_BELOW:
            continue
        allowed = LAYER_BELOW[own] | {own} | ROOT_SHARED | {""}
        for line, imported in _imports(module, path):
            other = _package_of(imported)
            if other not in allowed and other in LAYER_BELOW:
                offences.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {imported} ({other})")
    assert not offences, "imports pointing up the layers:\n" + "\n".join(offences)


def test_only_the_runtime_reads_its_private_process_attributes() -> None:
    offences = []
    for module, path in _modules():
        if _package_of(module) == "runtime":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_hermes_"):
                offences.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} reads .{node.attr}")
    assert not offences, "\n".join(offences)


def test_the_checker_sees_an_offence() -> None:
    """The walk must not pass by seeing nothing: a planted import is caught."""
    assert _private_crossing("hermes.pg._scope", "hermes.runtime._node.Node")
    assert _private_crossing("hermes.pubsub._pg2", "hermes.runtime._node")
    assert not _private_crossing("hermes.pubsub._pg2", "hermes.runtime.lowlevel.Node")
    assert not _private_crossing("hermes.pg._scope", "hermes.pg._wire.ServiceConnection")
    assert not _private_crossing("hermes.mesh._manager", "hermes._errors.HermesError")
    assert not _private_crossing("hermes._app", "hermes._join.first_round")
    assert _private_crossing("hermes.pg._start", "hermes._join.first_round")
    assert len(_modules()) > 30

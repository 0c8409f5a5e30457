"""Registry: a local key -> [(pid, value)] table owned by a Registry actor.

As Elixir's ``Registry``: a key may hold many entries (``keys="duplicate"``,
the pubsub case) or one (``keys="unique"``); only the caller registers itself;
reads (``lookup``, ``dispatch``, ``count``, ``keys``, ``match``) go straight to
the table, as Elixir reads ETS, with no message round trip.

The registry monitors its registrants through the runtime's exit hook: the
moment an actor exits (normally, by crash or by ``kill``) its entries are
gone, before anything else can observe the table. The table lives as long as
its Registry actor: stopping the actor drops it.

For senders (pubsub's fan-out) a key's entries are also kept as ready
``(pid, deliver)`` pairs, one per entry, built on first use and dropped
whenever an entry of that key changes: a delivery then neither hashes pids
nor looks up processes.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from ._errors import HermesError, NotInActor
from .runtime import Actor, Pid, register as register_name, spawn
from .runtime import lowlevel
from .runtime.lowlevel import Node
from .runtime.lowlevel import Process, current

DEFAULT = "hermes.registry"
KINDS = ("duplicate", "unique")


class AlreadyRegisteredError(HermesError):
    """A unique key is held by another live actor (``.pid``)."""

    def __init__(self, key: Any, pid: Pid) -> None:
        self.key = key
        self.pid = pid
        super().__init__(f"key {key!r} is already registered by {pid}")


class Registry(Actor):
    """Owns one table. Started by ``start``; found by name through ``_tables``."""

    def __init__(self, name: str, keys: str = "duplicate") -> None:
        if keys not in KINDS:
            raise ValueError(f"keys must be one of {KINDS}, not {keys!r}")
        self.name = name
        self.unique = keys == "unique"
        self.table: dict[Any, dict[Pid, list[Any]]] = {}  # key -> pid -> values, in registration order
        self.by_pid: dict[Pid, list[Any]] = {}  # pid -> its keys (one per entry)
        # key -> ((pid, its process's deliver), ...) per entry; see ``targets``
        self.delivery: dict[Any, tuple[tuple[Pid, Callable[[Any], None]], ...]] = {}
        self.procs = lowlevel.current_node().procs
        _tables(lowlevel.current_node())[name] = self
        register_name(name)

    def terminate(self, reason: Any) -> None:
        _tables(lowlevel.current_node()).pop(self.name, None)

    # -- writes (called in the registrant's context) --------------------------

    def add(self, pid: Pid, key: Any, value: Any) -> None:
        entries = self.table.get(key)
        if entries is None:
            entries = self.table[key] = {}
        elif self.unique and entries:  # its one holder: another actor, or the caller again
            raise AlreadyRegisteredError(key, next(iter(entries)))
        entries.setdefault(pid, []).append(value)
        self.by_pid.setdefault(pid, []).append(key)
        self.delivery.pop(key, None)

    def remove(self, pid: Pid, key: Any, keep: Callable[[Any], bool] | None = None) -> int:
        entries = self.table.get(key)
        if not entries or pid not in entries:
            return 0
        values = entries[pid]
        kept = [v for v in values if keep(v)] if keep is not None else []
        removed = len(values) - len(kept)
        if kept:
            entries[pid] = kept
        else:
            del entries[pid]
            if not entries:
                del self.table[key]
        self.delivery.pop(key, None)
        keys = self.by_pid[pid]
        for _ in range(removed):
            keys.remove(key)
        if not keys:
            del self.by_pid[pid]
        return removed

    def forget(self, pid: Pid) -> None:
        for key in set(self.by_pid.pop(pid, ())):
            entries = self.table.get(key)
            if entries is not None:
                entries.pop(pid, None)
                if not entries:
                    del self.table[key]
            self.delivery.pop(key, None)

    # -- reads for senders ----------------------------------------------------

    def targets(self, key: Any) -> tuple[tuple[Pid, Callable[[Any], None]], ...]:
        """``(pid, deliver)`` per entry under ``key``, in ``lookup``'s order;
        cached until an entry of ``key`` changes. Empty (and not cached) if none."""
        found = self.delivery.get(key)
        if found is None:
            entries = self.table.get(key)
            if not entries:
                return ()
            procs = self.procs
            found = self.delivery[key] = tuple(
                (pid, procs[pid].deliver) for pid, values in entries.items() if pid in procs for _ in values
            )
        return found


def _tables(node: Node) -> dict[str, Registry]:
    """This node's registries by name (``node.layers["registry"]``)."""
    tables: dict[str, Registry] | None = node.layers.get("registry")
    if tables is None:
        tables = node.layers["registry"] = {}
        node.exit_hooks.append(_forget)
    return tables


def _forget(proc: Process) -> None:
    """Exit hook: drop every entry of an exiting actor, in every registry; and
    the table of an exiting Registry actor (``kill`` skips ``terminate``)."""
    tables = _tables(proc.node)
    for name, reg in list(tables.items()):
        if lowlevel.process_of_actor(reg) is proc:
            del tables[name]
        elif proc.pid in reg.by_pid:
            reg.forget(proc.pid)


def get_registry(registry: str | None = None) -> Registry:
    """The ``Registry`` actor instance named ``registry`` (default: the node's), for
    layers that read its table directly (pubsub's fan-out)."""
    return _table(registry)


def _table(registry: str | None) -> Registry:
    name = registry or DEFAULT
    try:
        return _tables(lowlevel.current_node())[name]
    except KeyError:
        raise HermesError(f"no registry named {name!r} runs on this node") from None


def _caller() -> Pid:
    proc = current.get()
    if proc is None:
        raise NotInActor("only an actor can register itself")
    return proc.pid


# -- the public API -----------------------------------------------------------

def start(name: str, keys: str = "duplicate") -> Pid:
    """Start a Registry actor registered under ``name``."""
    if keys not in KINDS:
        raise ValueError(f"keys must be one of {KINDS}, not {keys!r}")
    node = lowlevel.current_node()
    if name in _tables(node):
        raise ValueError(f"a registry named {name!r} is already running")
    pid = spawn(Registry, name, keys)
    if name not in _tables(node):
        raise HermesError(f"registry {name!r} failed to start")
    return pid


def register(key: Any, value: Any = None, *, registry: str | None = None) -> None:
    """Register the caller under ``key`` with ``value`` (again for another entry)."""
    _table(registry).add(_caller(), key, value)


def unregister(key: Any, *, registry: str | None = None) -> None:
    """Remove all of the caller's entries under ``key`` (no-op if none)."""
    _table(registry).remove(_caller(), key)


def unregister_match(key: Any, pattern: Any, *, registry: str | None = None) -> None:
    """Remove the caller's entries under ``key`` whose value matches ``pattern``."""
    test = _matcher(pattern)
    _table(registry).remove(_caller(), key, keep=lambda value: not test(value))


def lookup(key: Any, *, registry: str | None = None) -> list[tuple[Pid, Any]]:
    """``[(pid, value)]`` registered under ``key``, in registration order per pid."""
    entries = _table(registry).table.get(key)
    if not entries:
        return []
    return [(pid, value) for pid, values in entries.items() for value in values]


def dispatch(key: Any, fn: Callable[[list[tuple[Pid, Any]]], Any], *, registry: str | None = None) -> None:
    """Call ``fn(entries)`` in the caller with the entries under ``key``, if any."""
    entries = lookup(key, registry=registry)
    if entries:
        fn(entries)


def count(key: Any, *, registry: str | None = None) -> int:
    entries = _table(registry).table.get(key)
    return sum(len(values) for values in entries.values()) if entries else 0


def keys(pid: Pid, *, registry: str | None = None) -> list[Any]:
    """The keys ``pid`` is registered under (a key twice if registered twice)."""
    return list(_table(registry).by_pid.get(pid, ()))


def match(key: Any, pattern: Any, *, registry: str | None = None) -> list[tuple[Pid, Any]]:
    """Entries under ``key`` whose value matches ``pattern`` (a predicate, or equal)."""
    test = _matcher(pattern)
    return [(pid, value) for pid, value in lookup(key, registry=registry) if test(value)]


def values(key: Any, pid: Pid, *, registry: str | None = None) -> list[Any]:
    entries = _table(registry).table.get(key)
    return list(entries.get(pid, ())) if entries else []


def all_keys(*, registry: str | None = None) -> Iterable[Any]:
    return list(_table(registry).table)


def _matcher(pattern: Any) -> Callable[[Any], bool]:
    if callable(pattern):
        return pattern
    return lambda value: value == pattern


def system_children() -> list[tuple[Any, ...]]:
    """Every node's default duplicate registry, for the node's system supervisor."""
    return [(Registry, DEFAULT, "duplicate")]

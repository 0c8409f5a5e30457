"""The Registry, after Elixir's duplicate-key ``Registry`` suite, on one standalone node.

Keys compare with Python equality and hashing, not Erlang's exact match:
``1``, ``1.0`` and ``True`` are one key (Elixir keeps ``1`` and ``1.0`` apart),
while ``"1"``, ``(1,)`` and ``(1, 1)`` are keys of their own. The tests below
pin that down so a change to it is a deliberate one.
"""
from __future__ import annotations

import asyncio
import contextvars
from collections import Counter
from typing import Any

import pytest

import hermes
from conftest import agent, ask, receive_down, run_node
from hermes import registry
from hermes.registry import AlreadyRegisteredError

pytestmark = pytest.mark.timeout(20)


def bag(entries: list[Any]) -> Counter[Any]:
    """Order across pids is not part of the contract: compare as multisets."""
    return Counter(entries)


async def registrant(owner: hermes.Pid, entries: list[tuple[Any, Any]], reg: str | None = None) -> None:
    """Register ``entries`` as ``(key, value)``, tell ``owner``, then return or raise when told."""
    for key, value in entries:
        registry.register(key, value, registry=reg)
    hermes.send(owner, ("registered", hermes.self()))
    order = await hermes.receive()
    if order == "crash":
        raise RuntimeError("registrant told to crash")


async def start_registrant(entries: list[tuple[Any, Any]], reg: str | None = None) -> hermes.Pid:
    pid = hermes.spawn(registrant, hermes.self(), entries, reg)
    await hermes.receive(match=lambda m: m == ("registered", pid), timeout=5.0)
    return pid


class Registrant(hermes.Actor):
    """The same, as an ``Actor`` subclass: registers itself in ``__init__``."""

    def __init__(self, key: Any) -> None:
        registry.register(key, "actor")

    def handle_cast(self, msg: Any) -> None:
        if msg == "crash":
            raise RuntimeError("Registrant told to crash")


# -- duplicate registrations --------------------------------------------------


def test_duplicate_registrations_by_one_process():
    async def main():
        me = hermes.self()
        assert registry.keys(me) == []
        registry.register("hello", "value")
        registry.register("hello", "value")
        assert registry.lookup("hello") == [(me, "value"), (me, "value")]
        assert registry.keys(me) == ["hello", "hello"]
        registry.register("world", "value")
        assert registry.keys(me) == ["hello", "hello", "world"]
        assert registry.count("hello") == 2
        assert registry.count("world") == 1
        assert registry.values("hello", me) == ["value", "value"]
        registry.register("hello", "other")  # entries keep registration order per pid
        assert registry.lookup("hello") == [(me, "value"), (me, "value"), (me, "other")]

    run_node(main)


def test_register_defaults_value_to_none():
    async def main():
        registry.register("k")
        assert registry.lookup("k") == [(hermes.self(), None)]

    run_node(main)


def test_duplicate_registrations_across_processes():
    async def main():
        me = hermes.self()
        registry.register("hello", "main")
        other = await start_registrant([("hello", "other"), ("hello", "other")])
        assert bag(registry.lookup("hello")) == bag([(me, "main"), (other, "other"), (other, "other")])
        assert registry.count("hello") == 3
        assert registry.keys(other) == ["hello", "hello"]
        assert registry.keys(me) == ["hello"]
        assert registry.values("hello", other) == ["other", "other"]
        assert registry.values("hello", me) == ["main"]
        assert registry.match("hello", "other") == [(other, "other"), (other, "other")]

    run_node(main)


def test_lookup_returns_a_copy():
    async def main():
        registry.register("k", 1)
        entries = registry.lookup("k")
        entries.clear()
        keys = registry.keys(hermes.self())
        keys.clear()
        assert registry.lookup("k") == [(hermes.self(), 1)]
        assert registry.keys(hermes.self()) == ["k"]

    run_node(main)


def test_unknown_keys_are_empty():
    async def main():
        assert registry.lookup("nobody") == []
        assert registry.count("nobody") == 0
        assert registry.match("nobody", lambda v: True) == []
        assert registry.values("nobody", hermes.self()) == []
        assert registry.keys(hermes.self()) == []

    run_node(main)


# -- exact keys -------------------------------------------------------------


def test_different_keys_do_not_mix():
    async def main():
        me = hermes.self()
        registry.register(("hello",), "tuple1")
        registry.register(("hello", "world"), "tuple2")
        registry.register("hello", "string")
        registry.register("1", "string-one")
        registry.register((1,), "tuple-one")
        registry.register(frozenset({"hello"}), "set")
        assert registry.lookup(("hello",)) == [(me, "tuple1")]
        assert registry.lookup(("hello", "world")) == [(me, "tuple2")]
        assert registry.lookup("hello") == [(me, "string")]
        assert registry.lookup("1") == [(me, "string-one")]
        assert registry.lookup((1,)) == [(me, "tuple-one")]
        assert registry.lookup(frozenset({"hello"})) == [(me, "set")]
        assert registry.lookup(1) == []
        # "_" and "$1" are match-spec syntax in Erlang; here they are plain keys
        registry.register("_", "underscore")
        assert registry.lookup("$1") == []
        assert registry.lookup("_") == [(me, "underscore")]

    run_node(main)


def test_keys_follow_python_equality():
    """Unlike Elixir (1 and 1.0 are different keys there), equal Python values are one key."""

    async def main():
        me = hermes.self()
        registry.register(1, "int")
        registry.register(1.0, "float")
        registry.register(True, "bool")
        assert registry.lookup(1) == [(me, "int"), (me, "float"), (me, "bool")]
        assert registry.lookup(1.0) == registry.lookup(1)
        assert registry.count(True) == 3
        assert registry.lookup(2) == []
        registry.unregister(1.0)  # removes all three: they are one key
        assert registry.lookup(1) == []
        assert registry.keys(me) == []

    run_node(main)


def test_unhashable_key_raises_type_error_and_changes_nothing():
    async def main():
        with pytest.raises(TypeError):
            registry.register(["a", "list"], "v")
        assert registry.keys(hermes.self()) == []
        assert registry.all_keys() == []

    run_node(main)


# -- dispatch -----------------------------------------------------------------


def test_dispatch_calls_fn_in_the_caller_with_the_entries():
    async def main():
        me = hermes.self()
        other = await start_registrant([("topic", "b")])
        registry.register("topic", "a")
        calls = []

        def fn(entries):
            calls.append((hermes.self(), bag(entries)))

        assert registry.dispatch("topic", fn) is None
        assert calls == [(me, bag([(me, "a"), (other, "b")]))]

    run_node(main)


def test_dispatch_is_not_called_without_entries():
    async def main():
        calls = []
        registry.dispatch("nobody", calls.append)
        registry.register("gone", 1)
        registry.unregister("gone")
        registry.dispatch("gone", calls.append)
        assert calls == []

    run_node(main)


def test_dispatch_exceptions_propagate_to_the_caller():
    async def main():
        registry.register("k", 1)

        def fn(entries):
            raise LookupError("from fn")

        with pytest.raises(LookupError, match="from fn"):
            registry.dispatch("k", fn)
        assert registry.lookup("k") == [(hermes.self(), 1)]  # the registry is unharmed

    run_node(main)


# -- unregister ---------------------------------------------------------------


def test_unregister_removes_all_of_the_callers_entries_under_key():
    async def main():
        me = hermes.self()
        other = await start_registrant([("hello", "other")])
        registry.register("hello", "a")
        registry.register("hello", "b")
        registry.register("world", "c")
        assert registry.unregister("hello") is None
        assert registry.lookup("hello") == [(other, "other")]
        assert registry.keys(me) == ["world"]
        assert registry.lookup("world") == [(me, "c")]
        assert registry.keys(other) == ["hello"]

    run_node(main)


def test_unregister_without_entries_is_a_noop():
    async def main():
        other = await start_registrant([("hello", "other")])
        registry.unregister("hello")  # the caller holds none of them
        registry.unregister("never")
        assert registry.lookup("hello") == [(other, "other")]
        assert registry.lookup("never") == []

    run_node(main)


def test_register_outside_an_actor_raises_not_in_actor():
    async def main():
        loop = asyncio.get_running_loop()
        outcome = loop.create_future()

        def outside():  # a plain loop callback: no current actor
            try:
                registry.register("k", 1)
            except hermes.NotInActor as exc:
                outcome.set_result(exc)
            else:
                outcome.set_result(None)

        loop.call_soon(outside, context=contextvars.Context())
        assert type(await asyncio.wait_for(outcome, 5.0)) is hermes.NotInActor
        assert registry.lookup("k") == []
        assert registry.all_keys() == []

    run_node(main)


# -- match and unregister_match --------------------------------------------------


def test_match_with_values_and_predicates():
    async def main():
        me = hermes.self()
        registry.register("k", {"role": "primary", "n": 1})
        registry.register("k", {"role": "replica", "n": 2})
        registry.register("k", ("tuple", 3))
        other = await start_registrant([("k", {"role": "replica", "n": 9})])
        assert registry.match("k", {"role": "primary", "n": 1}) == [(me, {"role": "primary", "n": 1})]
        replicas = registry.match("k", lambda v: isinstance(v, dict) and v["role"] == "replica")
        assert bag((p, v["n"]) for p, v in replicas) == bag([(me, 2), (other, 9)])
        assert registry.match("k", lambda v: isinstance(v, tuple) and v[1] > 2) == [(me, ("tuple", 3))]
        assert registry.match("k", "no such value") == []
        assert registry.match("other-key", lambda v: True) == []

    run_node(main)


def test_unregister_match_removes_only_the_callers_matching_entries():
    async def main():
        me = hermes.self()
        registry.register("k", "a")
        registry.register("k", "b")
        registry.register("k", "a")
        registry.register("j", "a")
        other = await start_registrant([("k", "a")])
        registry.unregister_match("k", "a")
        assert bag(registry.lookup("k")) == bag([(me, "b"), (other, "a")])
        assert bag(registry.keys(me)) == bag(["k", "j"])
        assert registry.lookup("j") == [(me, "a")]
        registry.unregister_match("k", lambda v: v == "b")
        assert registry.lookup("k") == [(other, "a")]
        assert registry.keys(me) == ["j"]
        registry.unregister_match("k", "nothing")  # no-op
        registry.unregister_match("missing", "a")  # no-op
        assert registry.lookup("k") == [(other, "a")]
        assert registry.count("k") == 1

    run_node(main)


# -- cleanup when a registrant exits ----------------------------------------------


@pytest.mark.parametrize("how", ["normal", "crash", "kill", "exit-signal"])
def test_an_exited_registrant_leaves_no_entry(how):
    async def main():
        survivor = await start_registrant([("shared", "survivor")])
        pid = await start_registrant([("shared", "x"), ("shared", "y"), ("own", 1)])
        assert registry.count("shared") == 3
        table = registry._table(None)  # senders' cached (pid, deliver) pairs must go too
        assert [p for p, _ in table.targets("shared")] == [survivor, pid, pid]
        ref = hermes.monitor(pid)
        if how == "normal":
            hermes.send(pid, "stop")
        elif how == "crash":
            hermes.send(pid, "crash")
        elif how == "kill":
            hermes.exit(pid, "kill")
        else:
            hermes.exit(pid, "shutdown")
        down = await receive_down(ref)
        expected = {"normal": "normal", "kill": "killed", "exit-signal": "shutdown"}
        if how == "crash":
            assert isinstance(down.reason, RuntimeError)
        else:
            assert down.reason == expected[how]
        # checked at once: no poll
        assert registry.lookup("shared") == [(survivor, "survivor")]
        assert [p for p, _ in table.targets("shared")] == [survivor]
        assert registry.lookup("own") == []
        assert registry.keys(pid) == []
        assert registry.count("own") == 0
        assert "own" not in registry.all_keys()

    run_node(main)


@pytest.mark.parametrize("how", ["crash", "kill"])
def test_an_exited_actor_subclass_leaves_no_entry(how):
    async def main():
        pid = hermes.spawn(Registrant, "gs")
        assert registry.lookup("gs") == [(pid, "actor")]
        ref = hermes.monitor(pid)
        if how == "crash":
            hermes.cast(pid, "crash")
        else:
            hermes.exit(pid, "kill")
        await receive_down(ref)
        assert registry.lookup("gs") == []
        assert registry.keys(pid) == []

    run_node(main)


def test_an_exited_registrant_leaves_no_entry_in_any_registry():
    async def main():
        registry.start("second")
        pid = hermes.spawn(agent, hermes.self())
        await ask(pid, lambda: registry.register("k", 1))
        await ask(pid, lambda: registry.register("k", 2, registry="second"))
        assert registry.count("k") == 1 and registry.count("k", registry="second") == 1
        ref = hermes.monitor(pid)
        hermes.exit(pid, "kill")
        await receive_down(ref)
        assert registry.lookup("k") == []
        assert registry.lookup("k", registry="second") == []

    run_node(main)


# -- unique registries ---------------------------------------------------------


def test_unique_registry_refuses_a_second_registration():
    async def main():
        me = hermes.self()
        registry.start("uniq", keys="unique")
        registry.register("k", "first", registry="uniq")
        with pytest.raises(AlreadyRegisteredError) as info:
            registry.register("k", "again", registry="uniq")
        assert info.value.pid == me and info.value.key == "k"
        assert isinstance(info.value, hermes.HermesError)

        other = hermes.spawn(agent, me)

        def try_register():
            try:
                registry.register("k", "other", registry="uniq")
            except AlreadyRegisteredError as exc:
                return ("refused", exc.pid)
            return "registered"

        assert await ask(other, try_register) == ("refused", me)
        # the failed registrations changed nothing
        assert registry.lookup("k", registry="uniq") == [(me, "first")]
        assert registry.keys(other, registry="uniq") == []
        assert registry.keys(me, registry="uniq") == ["k"]
        # a different key is fine, and after the holder leaves, another may take it
        assert await ask(other, lambda: registry.register("j", "other", registry="uniq")) is None
        registry.unregister("k", registry="uniq")
        assert await ask(other, try_register) == "registered"
        assert registry.lookup("k", registry="uniq") == [(other, "other")]

    run_node(main)


def test_unique_key_is_free_once_its_holder_dies():
    async def main():
        registry.start("uniq", keys="unique")
        holder = await start_registrant([("k", "v")], reg="uniq")
        with pytest.raises(AlreadyRegisteredError):
            registry.register("k", "mine", registry="uniq")
        ref = hermes.monitor(holder)
        hermes.exit(holder, "kill")
        await receive_down(ref)
        registry.register("k", "mine", registry="uniq")
        assert registry.lookup("k", registry="uniq") == [(hermes.self(), "mine")]

    run_node(main)


# -- custom registries and errors ------------------------------------------------


def test_custom_registries_are_separate_tables():
    async def main():
        me = hermes.self()
        pid = registry.start("mine")
        assert isinstance(pid, hermes.Pid)
        assert hermes.whereis("mine") == pid
        registry.register("k", "default")
        registry.register("k", "mine", registry="mine")
        registry.register("k", "mine2", registry="mine")
        assert registry.lookup("k") == [(me, "default")]
        assert registry.lookup("k", registry="mine") == [(me, "mine"), (me, "mine2")]
        assert registry.keys(me, registry="mine") == ["k", "k"]
        registry.unregister("k", registry="mine")
        assert registry.lookup("k") == [(me, "default")]
        assert registry.lookup("k", registry="mine") == []
        seen = []
        registry.register("d", 1, registry="mine")
        registry.dispatch("d", seen.append, registry="mine")
        registry.dispatch("d", seen.append)
        assert seen == [[(me, 1)]]

    run_node(main)


def test_start_validates_its_arguments_and_changes_nothing():
    async def main():
        with pytest.raises(ValueError):
            registry.start("bad", keys="triplicate")
        with pytest.raises(hermes.HermesError, match="bad"):
            registry.lookup("k", registry="bad")
        assert hermes.whereis("bad") is None
        registry.start("twice")
        with pytest.raises(ValueError):
            registry.start("twice")
        with pytest.raises(ValueError):
            registry.start(registry.DEFAULT)

    run_node(main)


def test_unknown_registry_name_raises_hermes_error():
    async def main():
        calls = []
        operations = [
            lambda: registry.register("k", registry="nope"),
            lambda: registry.unregister("k", registry="nope"),
            lambda: registry.unregister_match("k", 1, registry="nope"),
            lambda: registry.lookup("k", registry="nope"),
            lambda: registry.dispatch("k", calls.append, registry="nope"),
            lambda: registry.count("k", registry="nope"),
            lambda: registry.keys(hermes.self(), registry="nope"),
            lambda: registry.match("k", 1, registry="nope"),
            lambda: registry.values("k", hermes.self(), registry="nope"),
        ]
        for op in operations:
            with pytest.raises(hermes.HermesError, match="nope") as info:
                op()
            assert type(info.value) is hermes.HermesError
        assert calls == []
        assert registry.keys(hermes.self()) == []  # the default registry was not touched

    run_node(main)


def test_a_stopped_registry_drops_its_table():
    async def main():
        pid = registry.start("temp")
        registry.register("k", 1, registry="temp")
        ref = hermes.monitor(pid)
        hermes.exit(pid, "kill")
        await receive_down(ref)
        with pytest.raises(hermes.HermesError, match="temp"):
            registry.lookup("k", registry="temp")
        registry.start("temp")  # the name is free again, with an empty table
        assert registry.lookup("k", registry="temp") == []

    run_node(main)

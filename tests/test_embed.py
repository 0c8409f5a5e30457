"""``hermes.start`` on a running loop, the ``Node`` handle, the first discovery
round, ``wait_for_nodes``, the identity and thread rules, and ``NameInUse``.

Cluster tests use one module-scoped ``LocalCluster`` (real node processes and
a real pg service); this test process joins it with ``hermes.start`` /
``hermes.run`` on the service's address and the cluster's cookie.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import pytest

import hermes
from hermes.runtime import lowlevel



def no_node_left() -> bool:
    return lowlevel.node_or_none() is None


# -- standalone ---------------------------------------------------------------

@pytest.mark.timeout(60)
def test_start_returns_a_handle_on_the_running_loop_and_stop_is_idempotent():
    async def main() -> None:
        node = await hermes.start()
        assert isinstance(node, hermes.Node)
        assert node.name == hermes.node() and node.name.startswith("hermes-")
        assert node.statistics()["name"] == node.name
        with pytest.raises(hermes.HermesError, match="already running"):
            await hermes.start("other")
        assert hermes.node() == node.name  # the failed second start changed nothing
        await asyncio.gather(node.stop(), node.stop())
        await node.stop()
        assert no_node_left()
        with pytest.raises(hermes.NoNode):
            hermes.node()

    asyncio.run(main())
    assert no_node_left()


@pytest.mark.timeout(60)
def test_async_with_stops_the_node_and_its_actors_get_terminate_shutdown():
    reasons: list[Any] = []

    class Keeper(hermes.Actor):
        def terminate(self, reason: Any) -> None:
            reasons.append(reason)

    async def main() -> str:
        async with hermes.start("embedded") as node:
            hermes.spawn(Keeper)
            name = node.name
        assert reasons == ["shutdown"]
        assert no_node_left()
        return name

    assert asyncio.run(main()).startswith("embedded@")


@pytest.mark.timeout(60)
def test_start_checks_options_before_anything_starts():
    async def main() -> None:
        with pytest.raises(TypeError, match="join_timout.*join_timeout"):
            hermes.start(join_timout=1)
        with pytest.raises(ValueError, match="cluster"):
            hermes.start(cluster="nowhere")
        assert no_node_left()

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_two_nodes_started_one_after_the_other_get_unique_names():
    async def one() -> str:
        async with hermes.start() as node:
            return node.name

    assert asyncio.run(one()) != asyncio.run(one())


# -- the thread rule and submit -------------------------------------------------

@pytest.mark.timeout(60)
def test_calls_from_another_thread_raise_naming_submit_and_submit_runs_on_the_loop():
    got: list[Any] = []

    async def main() -> None:
        async with hermes.start() as node:
            async with hermes.subscription("t") as sub:
                outcomes: dict[str, Any] = {}

                def other_thread() -> None:
                    for label, fn in (("node", hermes.node), ("publish", lambda: hermes.publish("t", "x")),
                                      ("send", lambda: hermes.send(sub.pid, "x")),
                                      ("spawn", lambda: hermes.spawn(hermes.Actor)),
                                      ("self", hermes.self)):
                        try:
                            fn()
                            outcomes[label] = "no error"
                        except BaseException as exc:  # noqa: BLE001 - recorded and asserted below
                            outcomes[label] = exc
                    outcomes["submit"] = node.submit(hermes.publish, "t", "from a thread").result(10)
                    outcomes["coro"] = node.submit(asyncio.sleep(0, "slept")).result(10)

                thread = threading.Thread(target=other_thread)
                thread.start()
                while thread.is_alive():
                    await asyncio.sleep(0.01)
                for label in ("node", "publish", "send", "spawn", "self"):
                    exc = outcomes[label]
                    assert type(exc) is hermes.HermesError, (label, exc)
                    assert "node.submit" in str(exc)
                assert outcomes["submit"] is None and outcomes["coro"] == "slept"
                got.append(await sub.get(timeout=5))
                assert sub.qsize() == 0  # nothing sent or published off the loop arrived

    asyncio.run(main())
    assert got == ["from a thread"]


# -- identity -------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_a_task_created_inside_an_actor_is_not_that_actor():
    async def main() -> None:
        async with hermes.start():
            results: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

            async def plain_task(owner: Any) -> None:
                found: dict[str, Any] = {}
                for label, fn in (("self", hermes.self), ("subscribe", lambda: hermes.subscribe("x")),
                                  ("join", lambda: hermes.pg.join("g"))):
                    try:
                        fn()
                        found[label] = "acted as the actor"
                    except BaseException as exc:  # noqa: BLE001
                        found[label] = exc
                try:
                    await hermes.receive(timeout=0.01)
                    found["receive"] = "acted as the actor"
                except BaseException as exc:  # noqa: BLE001
                    found["receive"] = exc
                found["owner"] = owner
                results.set_result(found)

            class Owner(hermes.Actor):
                def handle_info(self, msg: Any) -> None:
                    asyncio.get_running_loop().create_task(plain_task(hermes.self()))

            async def function_owner() -> None:
                me = hermes.self()
                assert await asyncio.wait_for(hermes.receive(), 5) == "go"  # wait_for keeps the caller
                asyncio.get_running_loop().create_task(plain_task(me))
                await hermes.receive()

            for target in (Owner, function_owner):
                results = asyncio.get_running_loop().create_future()
                pid = hermes.spawn(target)
                hermes.send(pid, "go")
                found = await asyncio.wait_for(results, 10)
                assert found["owner"] == pid
                for label in ("self", "subscribe", "join", "receive"):
                    assert type(found[label]) is hermes.NotInActor, (target, label, found[label])
                assert hermes.subscribers("x") == [] and hermes.pg.get_members("g") == []
                hermes.exit(pid, "kill")

    asyncio.run(main())


# -- a cluster ------------------------------------------------------------------

class Inbox(hermes.Actor):
    """Keeps what it receives on ``topic``; answers ``"got"`` with the list."""

    def __init__(self, name: str, topic: Any) -> None:
        hermes.register(name)
        hermes.subscribe(topic)
        self.got: list[Any] = []

    def handle_call(self, request: Any, sender: Any) -> Any:
        return list(self.got)

    def handle_info(self, msg: Any) -> None:
        self.got.append(msg)


def start_inbox(name: str, topic: Any) -> None:
    hermes.spawn(Inbox, name, topic)


async def inbox_of(name: str) -> list[Any]:
    return await hermes.call(name, "got")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def cluster() -> Iterator[hermes.LocalCluster]:
    c = hermes.LocalCluster(["ea", "eb"])
    try:
        yield c
    finally:
        c.stop()


def service_of(cluster: hermes.LocalCluster) -> str:
    host, port = cluster.service_address
    return f"{host}:{port}"


@pytest.mark.timeout(120)
def test_readme_example_reaches_subscribers_on_another_node_on_the_first_publish(cluster):
    for node in ("ea", "eb"):
        cluster.rpc(node, start_inbox, "readme-inbox", "user.created")

    async def main() -> list[str]:
        hermes.publish("user.created", {"name": "Jade"})  # the very first thing main does
        return hermes.nodes()

    seen = hermes.run(main, name="readme", cluster=service_of(cluster), cookie=cluster.cookie)
    assert sorted(seen) == sorted(cluster.nodes)
    for node in ("ea", "eb"):
        assert cluster.rpc(node, inbox_of, "readme-inbox") == [{"name": "Jade"}]
    assert no_node_left()


@pytest.mark.timeout(120)
def test_start_returns_after_the_first_round_and_wait_for_nodes(cluster):
    for node in ("ea", "eb"):
        cluster.rpc(node, start_inbox, "start-inbox", "start.topic")

    async def main() -> None:
        async with hermes.start(cluster=service_of(cluster), cookie=cluster.cookie) as node:
            hermes.publish("start.topic", "first")
            assert await hermes.wait_for_nodes(names=["ea", "eb"], timeout=10) == sorted(cluster.nodes)
            assert await hermes.wait_for_nodes(2, timeout=10) == sorted(cluster.nodes)
            with pytest.raises(TimeoutError, match="nobody"):
                await hermes.wait_for_nodes(names=["nobody"], timeout=0.2)
            with pytest.raises(TypeError):
                await hermes.wait_for_nodes()
            assert node.name in cluster.rpc("ea", hermes.nodes)

    asyncio.run(main())
    for node in ("ea", "eb"):
        assert cluster.rpc(node, inbox_of, "start-inbox") == ["first"]


@pytest.mark.timeout(120)
def test_a_live_name_is_refused_with_name_in_use_within_2s(cluster):
    taken = cluster.nodes[0]

    async def main() -> float:
        t0 = time.monotonic()
        with pytest.raises(hermes.NameInUse, match="held by a live node"):
            await hermes.start(taken, cluster=service_of(cluster), cookie=cluster.cookie)
        elapsed = time.monotonic() - t0
        assert no_node_left()
        return elapsed

    assert asyncio.run(main()) < 2.0
    assert sorted(cluster.rpc("eb", hermes.nodes)) == [taken]  # the holder was not evicted
    cluster.rpc(taken, hermes.node)


@pytest.mark.timeout(120)
def test_the_cli_prints_one_line_and_exits_1_for_a_live_name(cluster):
    env_cookie = {"HERMES_COOKIE": cluster.cookie}
    proc = subprocess.run([sys.executable, "-m", "hermes", "node", "--name", cluster.nodes[0], "--cluster",
                           service_of(cluster)], capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, **env_cookie})
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hermes:")]
    assert len(lines) == 1 and "held by a live node" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(180)
def test_a_dead_holder_is_replaced_at_once(cluster):
    cluster.kill("ea")
    try:
        async def main() -> float:
            t0 = time.monotonic()
            async with hermes.start("ea", cluster=service_of(cluster), cookie=cluster.cookie):
                elapsed = time.monotonic() - t0
                await hermes.wait_for_nodes(names=["eb"], timeout=10)
            return elapsed

        assert asyncio.run(main()) < 1.0
    finally:
        t0 = time.monotonic()
        cluster.start("ea")  # and LocalCluster's restart still works (and is not slowed by the name check)
    assert time.monotonic() - t0 < 30
    assert sorted(cluster.rpc("ea", hermes.nodes)) == [cluster.nodes[1]]

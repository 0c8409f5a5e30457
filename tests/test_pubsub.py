"""PubSub: Phoenix.PubSub's shared suite and distributed suite, ported.

The first half runs on one standalone node (``run_node``): local subscribers get
the message before ``publish`` returns, so "nobody got it" is a plain check of
the mailbox, no time window needed.

The second half runs on one module-scoped ``LocalCluster`` of three real node
processes. On each node a ``Collector`` actor subscribes and records what it
gets; the driver reads the record by rpc. To check that a message did *not*
arrive somewhere, the test publishes a marker from the same publisher right
after it and waits for the marker: per-publisher ordering puts any wrong
delivery before the marker. Functions and classes shipped to the nodes are
module-level in this file, which the nodes import by reference (the fixture
puts this folder on their ``PYTHONPATH``).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pytest

import hermes
from hermes import pg, pubsub

from hermes.runtime import lowlevel

from _cluster import poll
from _redisserver import BINARY, redis_server  # noqa: F401  # a fixture: the "redis" cluster's server
from conftest import ask, agent, forwarded, run_node, wait_until

pytestmark = pytest.mark.timeout(30)

TOPIC = "room:lobby"


@dataclass(frozen=True)
class Event:
    """A user-defined message type: it must arrive as itself, on every node."""

    kind: str
    payload: Any


async def spawn_agent() -> hermes.Pid:
    return hermes.spawn(agent, hermes.self())


async def mailbox_empty() -> bool:
    """True if the caller has no message right now (local delivery is synchronous)."""
    try:
        await hermes.receive(timeout=0)
    except TimeoutError:
        return True
    return False


# -- one node: the shared suite ---------------------------------------------------------


def test_subscribe_and_unsubscribe():
    async def main():
        sub = await spawn_agent()
        assert hermes.subscribers(TOPIC) == []
        await ask(sub, lambda: hermes.subscribe(TOPIC))
        assert hermes.subscribers(TOPIC) == [(sub, None)]
        hermes.publish(TOPIC, "ping")
        assert await forwarded(sub) == "ping"
        await ask(sub, lambda: hermes.unsubscribe(TOPIC))
        assert hermes.subscribers(TOPIC) == []
        hermes.publish(TOPIC, "after")
        await ask(sub, lambda: None)  # the agent has handled everything sent before this
        return await mailbox_empty()

    assert run_node(main) is True


def test_subscribe_with_metadata_and_unsubscribe_removes_all_entries():
    async def main():
        one, two = await spawn_agent(), await spawn_agent()
        await ask(one, lambda: hermes.subscribe(TOPIC, metadata="custom"))
        await ask(one, lambda: hermes.subscribe(TOPIC, metadata={"other": 1}))
        await ask(two, lambda: hermes.subscribe(TOPIC))
        listed = hermes.subscribers(TOPIC)
        await ask(one, lambda: hermes.unsubscribe(TOPIC))
        return one, two, listed, hermes.subscribers(TOPIC)

    one, two, listed, after = run_node(main)
    assert len(listed) == 3
    assert (one, "custom") in listed and (one, {"other": 1}) in listed and (two, None) in listed
    assert after == [(two, None)]


def test_publish_reaches_each_subscriber_before_it_returns():
    async def main():
        hermes.subscribe(TOPIC)
        hermes.publish(TOPIC, "ping")
        first = await hermes.receive(timeout=0)  # already in the mailbox: no waiting
        hermes.broadcast_local(TOPIC, "local")
        return first, await hermes.receive(timeout=0)

    assert run_node(main) == ("ping", "local")


def test_publish_does_not_reach_other_topics():
    async def main():
        hermes.subscribe("unknown")
        agents = [await spawn_agent() for _ in range(11)]
        for a in agents:
            await ask(a, lambda: hermes.subscribe(TOPIC))
        hermes.publish(TOPIC, "ping")
        got = [await forwarded(a) for a in agents]
        return got, await mailbox_empty()

    got, empty = run_node(main)
    assert got == ["ping"] * 11
    assert empty


def test_exclude_skips_the_sender():
    async def main():
        peer = await spawn_agent()
        await ask(peer, lambda: hermes.subscribe(TOPIC))
        hermes.subscribe(TOPIC)
        hermes.publish(TOPIC, "ping", exclude=hermes.self())
        hermes.broadcast_local(TOPIC, "local ping", exclude=hermes.self())
        peer_got = [await forwarded(peer), await forwarded(peer)]
        return peer_got, await mailbox_empty()

    peer_got, empty = run_node(main)
    assert peer_got == ["ping", "local ping"]
    assert empty


def test_unsubscribe_of_a_topic_never_subscribed_is_a_noop():
    async def main():
        hermes.subscribe("other")
        assert hermes.unsubscribe(TOPIC) is None
        return hermes.subscribers(TOPIC), hermes.subscribers("other")

    never, other = run_node(main)
    assert never == []
    assert len(other) == 1


def test_subscribing_twice_means_two_deliveries():
    async def main():
        hermes.subscribe(TOPIC)
        hermes.subscribe(TOPIC)
        hermes.publish(TOPIC, "ping")
        got = [await hermes.receive(timeout=0), await hermes.receive(timeout=0)]
        return got, await mailbox_empty()

    assert run_node(main) == (["ping", "ping"], True)


def test_publish_to_own_node_and_to_an_unknown_node():
    async def main():
        hermes.subscribe(TOPIC)
        hermes.publish(TOPIC, "direct", node=hermes.node())
        direct = await hermes.receive(timeout=0)
        hermes.publish(TOPIC, "nowhere", node="IDONTKNOW@127.0.0.1")  # silently nothing
        return direct, await mailbox_empty()

    assert run_node(main) == ("direct", True)


def test_subscribers_get_the_message_itself():
    async def main():
        message = Event("created", {"name": "Jade"})
        hermes.subscribe(TOPIC)
        hermes.publish(TOPIC, message)
        got = await hermes.receive(timeout=0)
        return got is message

    assert run_node(main) is True


def test_an_unpicklable_message_is_fine_with_no_remote_node():
    async def main():
        lock = threading.Lock()  # only crosses nodes if there are any: here there are none
        hermes.subscribe(TOPIC)
        hermes.publish(TOPIC, lock)
        return (await hermes.receive(timeout=0)) is lock

    assert run_node(main) is True


class Crasher(hermes.Actor):
    def __init__(self, topic: Any) -> None:
        hermes.subscribe(topic)

    def handle_info(self, msg: Any) -> None:
        raise RuntimeError(f"crashing on {msg!r}")


def test_a_crashing_subscriber_disturbs_no_other():
    async def main():
        before = await spawn_agent()
        await ask(before, lambda: hermes.subscribe(TOPIC))
        crasher = hermes.spawn(Crasher, TOPIC)
        ref = hermes.monitor(crasher)
        after = await spawn_agent()
        await ask(after, lambda: hermes.subscribe(TOPIC))
        hermes.publish(TOPIC, 1)
        down = await hermes.receive(match=lambda m: isinstance(m, hermes.Down) and m.ref == ref, timeout=5)
        hermes.publish(TOPIC, 2)
        got = [await forwarded(before), await forwarded(after), await forwarded(before), await forwarded(after)]
        return down.reason, got, [pid for pid, _ in hermes.subscribers(TOPIC)], [before, after]

    reason, got, subscribed, survivors = run_node(main)
    assert isinstance(reason, RuntimeError)
    assert got == [1, 1, 2, 2]
    assert sorted(subscribed) == sorted(survivors)  # the crashed one left the topic


def test_a_dead_subscriber_leaves_the_topic():
    async def main():
        sub = await spawn_agent()
        await ask(sub, lambda: hermes.subscribe(TOPIC))
        ref = hermes.monitor(sub)
        hermes.exit(sub, "kill")
        await hermes.receive(match=lambda m: isinstance(m, hermes.Down) and m.ref == ref, timeout=5)
        left = hermes.subscribers(TOPIC)
        hermes.publish(TOPIC, "to nobody")  # publishing to a topic whose subscribers died is fine
        return left

    assert run_node(main) == []


def test_deliveries_follow_every_change_of_the_subscriptions():
    # Deliveries read per-topic targets cached by the registry: each kind of
    # change after a delivery (subscribe, unsubscribe, exit, metadata-only
    # twice-subscribe) must show in the very next publish.
    async def main():
        first, second = await spawn_agent(), await spawn_agent()
        await ask(first, lambda: hermes.subscribe(TOPIC))
        hermes.publish(TOPIC, 1)  # the targets are cached now
        await ask(second, lambda: hermes.subscribe(TOPIC, "twice"))
        await ask(second, lambda: hermes.subscribe(TOPIC, "twice"))
        hermes.publish(TOPIC, 2)
        await ask(first, lambda: hermes.unsubscribe(TOPIC))
        hermes.publish(TOPIC, 3)
        second_got = [await forwarded(second) for _ in range(4)]
        ref = hermes.monitor(second)
        hermes.exit(second, "kill")
        await hermes.receive(match=lambda m: isinstance(m, hermes.Down) and m.ref == ref, timeout=5)
        hermes.publish(TOPIC, 4)  # no one left: nothing, no error
        await ask(first, lambda: hermes.subscribe(TOPIC))
        hermes.publish(TOPIC, 5, exclude=first)
        hermes.publish(TOPIC, 6)
        first_got = [await forwarded(first) for _ in range(3)]
        return first_got, second_got, await mailbox_empty()

    first_got, second_got, nothing_else = run_node(main)
    assert first_got == [1, 2, 6]  # not 3 (unsubscribed), not 5 (excluded)
    assert second_got == [2, 2, 3, 3]
    assert nothing_else


def test_per_publisher_ordering():
    async def publisher(tag: str, n: int) -> None:
        for i in range(n):
            hermes.publish(TOPIC, (tag, i))

    async def main():
        hermes.subscribe(TOPIC)
        for tag in "ab":
            hermes.spawn(publisher, tag, 2000)
        return [await hermes.receive(timeout=5) for _ in range(4000)]

    got = run_node(main)
    for tag in "ab":
        assert [i for t, i in got if t == tag] == list(range(2000))


def test_named_pubsub_instances_are_separate():
    async def main():
        pubsub.start("chat")
        hermes.subscribe(TOPIC, "default")
        hermes.subscribe(TOPIC, "chat", pubsub="chat")
        hermes.publish(TOPIC, "to chat", pubsub="chat")
        first = await hermes.receive(timeout=0)
        hermes.publish(TOPIC, "to default")
        second = await hermes.receive(timeout=0)
        empty = await mailbox_empty()
        return (first, second, empty, hermes.subscribers(TOPIC), hermes.subscribers(TOPIC, pubsub="chat"),
                hermes.self())

    first, second, empty, default_subs, chat_subs, me = run_node(main)
    assert (first, second, empty) == ("to chat", "to default", True)
    assert default_subs == [(me, "default")]
    assert chat_subs == [(me, "chat")]


async def _replaced(name: str, old: hermes.Pid) -> hermes.Pid:
    """The pid registered as ``name`` once it is no longer ``old``."""
    return await wait_until(lambda: (lambda pid: pid if pid not in (None, old) else None)(hermes.whereis(name)))


def test_a_named_pubsub_is_supervised_rest_for_one():
    async def main():
        sup = pubsub.start("chat")
        with pytest.raises(ValueError, match="already running"):
            pubsub.start("chat")
        assert [child for child, _ in await hermes.call(sup, "which_children")] == [0, 1]
        hermes.subscribe(TOPIC, pubsub="chat")
        # its PGServer crashes: a new one serves, subscriptions (in the registry) stay
        server = hermes.whereis("chat")
        hermes.exit(server, "kill")
        await _replaced("chat", server)
        hermes.publish(TOPIC, "after the server", pubsub="chat")
        first = await hermes.receive(timeout=1)
        # its registry crashes: the subscriptions go with it, the PGServer restarts after it
        table, server = hermes.whereis("chat.registry"), hermes.whereis("chat")
        hermes.exit(table, "kill")
        await _replaced("chat.registry", table)
        await _replaced("chat", server)
        emptied = hermes.subscribers(TOPIC, pubsub="chat")
        hermes.subscribe(TOPIC, pubsub="chat")
        hermes.publish(TOPIC, "after the registry", pubsub="chat")
        second = await hermes.receive(timeout=1)
        members = (pg.get_local_members(pubsub.group_of("chat")), [hermes.whereis("chat")])
        # stopping the supervisor stops the instance; it can be started again
        ref = hermes.monitor(sup)
        hermes.exit(sup, "shutdown")
        await hermes.receive(match=lambda m: isinstance(m, hermes.Down) and m.ref == ref, timeout=5)
        with pytest.raises(hermes.HermesError, match="no PubSub named 'chat'"):
            hermes.publish(TOPIC, "x", pubsub="chat")
        pubsub.start("chat")
        return first, second, emptied, members, await mailbox_empty()

    first, second, emptied, (members, server), nothing_else = run_node(main)
    assert (first, second, emptied) == ("after the server", "after the registry", [])
    assert members == server  # the latest PGServer, once, in the group
    assert nothing_else


def test_a_named_pubsub_under_a_supervisor_of_ones_own():
    async def main():
        sup = hermes.spawn(hermes.Supervisor, [pubsub.child_spec("news"), pubsub.child_spec("chat")])
        hermes.subscribe(TOPIC, pubsub="news")
        hermes.publish(TOPIC, "news", pubsub="news")
        got = await hermes.receive(timeout=1)
        return got, [child for child, _ in await hermes.call(sup, "which_children")]

    got, children = run_node(main)
    assert got == "news"
    assert children == [("hermes.pubsub", "news"), ("hermes.pubsub", "chat")]


def test_a_named_pubsub_joins_its_group_again_after_a_pg_scope_restart():
    # The default PGServer is restarted after the scope by the system
    # supervisor; a named one lives on and must join the new, empty scope.
    async def main():
        pubsub.start("chat")
        server = hermes.whereis("chat")
        old = hermes.whereis("hermes.pg")
        ref = hermes.monitor(old)
        hermes.exit(old, "kill")
        await hermes.receive(match=lambda m: isinstance(m, hermes.Down) and m.ref == ref, timeout=5)
        await _replaced("hermes.pg", old)
        members = await wait_until(lambda: pg.get_local_members(pubsub.group_of("chat")))
        return members, server, hermes.whereis("chat")

    members, server, still = run_node(main)
    assert members == [server]
    assert still == server  # the same PGServer: it was not restarted, it joined again


def test_an_unknown_pubsub_instance_is_an_error():
    async def main():
        with pytest.raises(hermes.HermesError):
            hermes.subscribe(TOPIC, pubsub="nope")
        with pytest.raises(hermes.HermesError):
            hermes.publish(TOPIC, "x", pubsub="nope")
        return hermes.subscribers(TOPIC)

    assert run_node(main) == []


# -- three nodes: the distributed suite -------------------------------------------------
#
# Everything below runs on the cluster's nodes (module-level, imported there by name).


class Collector(hermes.Actor):
    """Subscribes to ``topics`` and records every message; ``call(name, "got")`` reads the record."""

    def __init__(self, name: str, topics: list[Any], pubsub: str | None = None) -> None:
        hermes.register(name)
        self.got: list[Any] = []
        for topic in topics:
            hermes.subscribe(topic, pubsub=pubsub)

    def handle_info(self, msg: Any) -> None:
        self.got.append(msg)

    def handle_call(self, request: Any, sender: Any) -> Any:
        if request == "got":
            return list(self.got)
        return request()  # a function to run inside the collector (unsubscribe, say)


def start_collector(name: str, topics: list[Any], pubsub_name: str | None = None) -> hermes.Pid:
    return hermes.spawn(Collector, name, topics, pubsub_name)


async def collected(name: str) -> list[Any]:
    return await hermes.call(name, "got")  # type: ignore[no-any-return]


async def in_collector(name: str, fn: Callable[[], Any]) -> Any:
    return await hermes.call(name, fn)


def stop_collector(name: str) -> None:
    pid = hermes.whereis(name)
    if pid is not None:
        hermes.exit(pid, "kill")


def publish_many(tag: str, topic: Any, n: int) -> None:
    for i in range(n):
        hermes.publish(topic, (tag, i))


def subscriber_pids(topic: Any, pubsub_name: str | None = None) -> list[hermes.Pid]:
    return [pid for pid, _ in hermes.subscribers(topic, pubsub=pubsub_name)]


async def start_pubsub(name: str) -> None:
    """Start PubSub ``name`` here, through Redis if the node's default one is
    (and return once its subscription is in place)."""
    if name not in pubsub.instances():
        pubsub.start(name, url=lowlevel.current_node().config.pubsub_url)
    assert await pubsub.wait_subscribed(name, timeout=10.0)


def pubsub_nodes(name: str) -> list[str]:
    return sorted(pid.node for pid in pg.get_members(pubsub.group_of(name)))


async def publish_unpicklable(topic: Any, local_name: str) -> dict[str, Any]:
    """On the publishing node: a local subscriber, then a publish that must fail for everyone."""
    hermes.spawn(Collector, local_name, [topic])
    before = hermes.subscribers(topic)
    try:
        hermes.publish(topic, (threading.Lock(), "payload"))
    except hermes.SerializationError as exc:
        error: Any = exc
    else:
        error = None
    unchanged = hermes.subscribers(topic) == before
    hermes.publish(topic, "after")  # per-publisher order: anything wrongly delivered comes first
    local = await wait_until(lambda: _ends_with(local_name, "after"))
    return {"error_type": type(error).__name__, "is_type_error": isinstance(error, TypeError),
            "message": str(error), "unchanged": unchanged, "local": local}


async def _ends_with(name: str, last: Any) -> list[Any] | None:
    got = await collected(name)
    return got if got and got[-1] == last else None


class Keeper(hermes.Actor):
    """Subscribes and keeps what it gets, so that the test can compare identities on the node."""

    def __init__(self, topic: Any) -> None:
        hermes.subscribe(topic)
        self.got: list[Any] = []

    def handle_info(self, msg: Any) -> None:
        self.got.append(msg)

    def handle_call(self, request: Any, sender: Any) -> Any:
        return self.got[0] is request if self.got else None


async def identity_check(topic: Any) -> tuple[bool, bool]:
    """On a cluster node: a local subscriber gets the very object published (by reference),
    also an unpicklable one published to this node only (it crosses no node: no pickling)."""
    results = []
    for message, options in ((Event("local", object()), {}), (Event("lock", threading.Lock()), {"node": hermes.node()})):
        keeper = hermes.spawn(Keeper, topic)
        hermes.publish(topic, message, **options)
        try:
            results.append(await hermes.call(keeper, message))
        finally:
            hermes.exit(keeper, "kill")
    return tuple(results)  # type: ignore[return-value]


@pytest.fixture(scope="module", params=["mesh", "redis"] if BINARY is not None else ["mesh"])
def cluster(request: pytest.FixtureRequest) -> Iterator[hermes.LocalCluster]:
    """The same three nodes, their PubSubs carried by the mesh or by Redis."""
    options = {}
    if request.param == "redis":
        options["pubsub_url"] = request.getfixturevalue("redis_server").url
    c = hermes.LocalCluster(["a", "b", "c"], **options)
    try:
        yield c
    finally:
        c.stop()


class Collectors:
    """Starts collectors on nodes, reads them, and kills them all at teardown."""

    def __init__(self, cluster: hermes.LocalCluster, prefix: str) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.started: list[tuple[str, str]] = []

    def start(self, node: str, topics: list[Any], pubsub_name: str | None = None, tag: str = "") -> str:
        name = f"{self.prefix}-{node}-{tag}-{len(self.started)}"
        self.cluster.rpc(node, start_collector, name, topics, pubsub_name)
        self.started.append((node, name))
        return name

    def got(self, node: str, name: str) -> list[Any]:
        return self.cluster.rpc(node, collected, name)  # type: ignore[no-any-return]

    def wait_for(self, node: str, name: str, marker: Any, timeout: float = 10.0) -> list[Any]:
        """The collector's record once it ends with ``marker``."""
        return poll(lambda: (lambda got: got if got and got[-1] == marker else None)(self.got(node, name)),
                    timeout=timeout)

    def stop(self) -> None:
        for node, name in self.started:
            try:
                self.cluster.rpc(node, stop_collector, name, timeout=5.0)
            except Exception:  # a node that is gone took its collectors with it
                pass


@pytest.fixture
def collectors(cluster: hermes.LocalCluster, request: pytest.FixtureRequest) -> Iterator[Collectors]:
    found = Collectors(cluster, request.node.name)
    try:
        yield found
    finally:
        found.stop()


NODES = ["a", "b", "c"]


@pytest.mark.timeout(60)
def test_cluster_publish_reaches_subscribers_on_every_node(cluster, collectors):
    topic = "t-all"
    names = {n: collectors.start(n, [topic]) for n in NODES}
    twice = collectors.start("b", [topic, topic])  # subscribed twice: two deliveries, also from afar
    for publisher in NODES:
        cluster.rpc(publisher, hermes.publish, topic, ("ping", publisher))
    expected = sorted(("ping", p) for p in NODES)
    for n in NODES:
        got = poll(lambda: (lambda g: g if len(g) >= 3 else None)(collectors.got(n, names[n])))
        assert sorted(got) == expected
    got = poll(lambda: (lambda g: g if len(g) >= 6 else None)(collectors.got("b", twice)))
    assert sorted(got) == sorted(expected * 2)
    cluster.rpc("c", hermes.publish, topic, "marker")
    for n in NODES:  # and nothing more than once
        assert len(collectors.wait_for(n, names[n], "marker")) == 4
    assert collectors.wait_for("b", twice, "marker")[-2:] == ["marker", "marker"]
    assert len(collectors.got("b", twice)) == 8


@pytest.mark.timeout(60)
def test_cluster_subscribers_get_the_message_itself(cluster, collectors):
    topic = "t-identity"
    names = {n: collectors.start(n, [topic]) for n in NODES}
    message = Event("created", {"name": "Jade", "tags": ("a", "b")})
    cluster.rpc("a", hermes.publish, topic, message)
    for n in NODES:
        got = collectors.wait_for(n, names[n], message)
        assert got == [message]
        assert type(got[0]) is Event  # not a Forward or any other envelope
    assert cluster.rpc("a", identity_check, "t-identity-local") == (True, True)


@pytest.mark.timeout(60)
def test_cluster_broadcast_local_stays_local(cluster, collectors):
    topic = "t-local"
    names = {n: collectors.start(n, [topic]) for n in NODES}
    cluster.rpc("a", hermes.broadcast_local, topic, "local only")
    cluster.rpc("a", hermes.publish, topic, "marker")
    assert collectors.wait_for("a", names["a"], "marker") == ["local only", "marker"]
    for n in ("b", "c"):
        assert collectors.wait_for(n, names[n], "marker") == ["marker"]


@pytest.mark.timeout(60)
def test_cluster_publish_to_one_node_targets_exactly_that_node(cluster, collectors):
    topic = "t-direct"
    names = {n: collectors.start(n, [topic]) for n in NODES}
    b = cluster.nodes[1]
    cluster.rpc("a", hermes.publish, topic, "only b", node=b)
    cluster.rpc("a", hermes.publish, topic, "nowhere", node="IDONTKNOW@127.0.0.1")
    cluster.rpc("a", hermes.publish, topic, "only a", node=cluster.nodes[0])
    cluster.rpc("a", hermes.publish, topic, "marker")
    assert collectors.wait_for("a", names["a"], "marker") == ["only a", "marker"]
    assert collectors.wait_for("b", names["b"], "marker") == ["only b", "marker"]
    assert collectors.wait_for("c", names["c"], "marker") == ["marker"]


@pytest.mark.timeout(60)
def test_cluster_exclude_skips_a_remote_subscriber(cluster, collectors):
    topic = "t-exclude"
    names = {n: collectors.start(n, [topic]) for n in NODES}
    pids = {n: cluster.rpc(n, hermes.whereis, names[n]) for n in NODES}
    cluster.rpc("a", hermes.publish, topic, "not b", exclude=pids["b"])
    cluster.rpc("a", hermes.publish, topic, "marker")
    assert collectors.wait_for("a", names["a"], "marker") == ["not b", "marker"]
    assert collectors.wait_for("b", names["b"], "marker") == ["marker"]
    assert collectors.wait_for("c", names["c"], "marker") == ["not b", "marker"]


@pytest.mark.timeout(60)
def test_cluster_unsubscribe_on_a_remote_node_stops_deliveries_there(cluster, collectors):
    topic, marker_topic = "t-unsub", "t-unsub-marker"
    names = {n: collectors.start(n, [topic, marker_topic]) for n in NODES}
    cluster.rpc("a", hermes.publish, topic, "before")
    cluster.rpc("a", hermes.publish, marker_topic, "marker 1")
    for n in NODES:
        assert collectors.wait_for(n, names[n], "marker 1") == ["before", "marker 1"]
    cluster.rpc("b", in_collector, names["b"], lambda: hermes.unsubscribe(topic))
    assert cluster.rpc("b", subscriber_pids, topic) == []
    cluster.rpc("a", hermes.publish, topic, "after")
    cluster.rpc("a", hermes.publish, marker_topic, "marker 2")
    assert collectors.wait_for("b", names["b"], "marker 2") == ["before", "marker 1", "marker 2"]
    for n in ("a", "c"):
        assert collectors.wait_for(n, names[n], "marker 2") == ["before", "marker 1", "after", "marker 2"]


@pytest.mark.timeout(60)
def test_cluster_a_dead_subscriber_is_cleaned_up(cluster, collectors):
    topic = "t-dead"
    names = {n: collectors.start(n, [topic]) for n in NODES}
    cluster.rpc("b", stop_collector, names["b"])
    poll(lambda: cluster.rpc("b", subscriber_pids, topic) == [])
    cluster.rpc("a", hermes.publish, topic, "still delivered")
    for n in ("a", "c"):
        assert collectors.wait_for(n, names[n], "still delivered") == ["still delivered"]
    assert cluster.rpc("b", hermes.whereis, names["b"]) is None


@pytest.mark.timeout(60)
def test_cluster_unpicklable_message_raises_and_reaches_nobody(cluster, collectors):
    topic = "t-unpicklable"
    names = {n: collectors.start(n, [topic]) for n in ("b", "c")}
    local_name = f"{collectors.prefix}-local"
    collectors.started.append(("a", local_name))
    result = cluster.rpc("a", publish_unpicklable, topic, local_name)
    assert result["error_type"] == "SerializationError"
    assert result["is_type_error"]
    assert "lock" in result["message"]
    assert result["unchanged"]
    assert result["local"] == ["after"]
    for n in ("b", "c"):
        assert collectors.wait_for(n, names[n], "after") == ["after"]


@pytest.mark.timeout(60)
def test_cluster_per_publisher_ordering(cluster, collectors):
    topic, n_msgs = "t-order", 5000
    names = {n: collectors.start(n, [topic]) for n in NODES}
    with ThreadPoolExecutor(2) as pool:  # two publishers at once, on two nodes
        list(pool.map(lambda p: cluster.rpc(p, publish_many, p, topic, n_msgs, timeout=30), ["a", "b"]))
    for n in NODES:
        got = poll(lambda: (lambda g: g if len(g) >= 2 * n_msgs else None)(collectors.got(n, names[n])), timeout=20)
        assert len(got) == 2 * n_msgs
        for publisher in ("a", "b"):
            assert [i for tag, i in got if tag == publisher] == list(range(n_msgs))


@pytest.mark.timeout(60)
def test_cluster_named_pubsub_instances_do_not_cross(cluster, collectors):
    topic, marker_topic = "t-named", "t-named-marker"
    for n in NODES:
        cluster.rpc(n, start_pubsub, "chat")
    for n in NODES:
        poll(lambda: cluster.rpc(n, pubsub_nodes, "chat") == sorted(cluster.nodes))
    default = {n: collectors.start(n, [topic, marker_topic], tag="default") for n in NODES}
    chat = {n: collectors.start(n, [topic, marker_topic], "chat", tag="chat") for n in NODES}
    cluster.rpc("a", hermes.publish, topic, "to chat", pubsub="chat")
    cluster.rpc("a", hermes.publish, topic, "to default")
    cluster.rpc("a", hermes.publish, marker_topic, "chat done", pubsub="chat")
    cluster.rpc("a", hermes.publish, marker_topic, "default done")
    for n in NODES:
        assert collectors.wait_for(n, chat[n], "chat done") == ["to chat", "chat done"]
        assert collectors.wait_for(n, default[n], "default done") == ["to default", "default done"]
        chat_pid = cluster.rpc(n, hermes.whereis, chat[n])
        assert cluster.rpc(n, subscriber_pids, topic, "chat") == [chat_pid]


async def restart_pg_scope() -> bool:
    """Kill this node's pg scope; return once its supervisor started a new one."""
    old = hermes.whereis("hermes.pg")
    ref = hermes.monitor(old)
    hermes.exit(old, "kill")
    await hermes.receive(match=lambda m: isinstance(m, hermes.Down) and m.ref == ref, timeout=5)
    await wait_until(lambda: hermes.whereis("hermes.pg") not in (None, old))
    return True


@pytest.mark.timeout(60)
def test_cluster_named_pubsub_survives_a_pg_scope_restart(cluster, collectors):
    # b's scope restarts empty: its named PGServer joins again, and a's
    # publishes reach b's subscribers again (the default one is restarted).
    topic = "t-scope-restart"
    for n in NODES:
        cluster.rpc(n, start_pubsub, "chat")
    got = collectors.start("b", [topic], "chat")
    cluster.rpc("b", restart_pg_scope)
    for name in ("chat", pubsub.DEFAULT):
        for n in NODES:
            poll(lambda: cluster.rpc(n, pubsub_nodes, name) == sorted(cluster.nodes))
    cluster.rpc("a", hermes.publish, topic, "after the restart", pubsub="chat")
    assert collectors.wait_for("b", got, "after the restart") == ["after the restart"]


@pytest.mark.timeout(120)
def test_publish_follows_a_node_that_restarts_and_one_that_joins_late():
    # The publisher caches its connections to the group's nodes: a restarted
    # node (new incarnation, new connection) and a new node must both be found.
    topic = "t-restart"
    with hermes.LocalCluster(["p", "q"]) as c:
        p, q = c.nodes
        collectors = Collectors(c, "restart")
        first = collectors.start("q", [topic])
        c.rpc("p", hermes.publish, topic, "one")
        assert collectors.wait_for("q", first, "one") == ["one"]
        c.kill("q")
        poll(lambda: c.rpc("p", pubsub_nodes, pubsub.DEFAULT) == [p])
        c.rpc("p", hermes.publish, topic, "to no one")  # q is gone: nothing to send to, no error
        c.start("q")
        poll(lambda: c.rpc("p", pubsub_nodes, pubsub.DEFAULT) == sorted([p, q]))
        again = collectors.start("q", [topic])
        c.rpc("p", hermes.publish, topic, "two")
        assert collectors.wait_for("q", again, "two") == ["two"]
        c.start("r")
        r = c.nodes[2]
        poll(lambda: c.rpc("p", pubsub_nodes, pubsub.DEFAULT) == sorted([p, q, r]))
        late = collectors.start("r", [topic])
        c.rpc("p", hermes.publish, topic, "three")
        assert collectors.wait_for("r", late, "three") == ["three"]
        assert collectors.wait_for("q", again, "three") == ["two", "three"]

"""The Redis adapter: nodes that share a Redis and nothing else, publishing from
a plain script, payload integrity, and Redis going away.

The PubSub semantics suite itself (exclude, node=, broadcast_local, order...)
runs against both adapters in ``test_pubsub.py`` (its ``cluster`` fixture is
parametrized). Here, "islands" are three nodes that are NOT meshed: each is
the only node of its own ``LocalCluster`` (its own pg service), all with the
same cookie and ``pubsub_url``; each test checks ``nodes() == []`` on them.
Three more are started as ``python -m hermes node --pubsub-url ...`` without
``--cluster`` at all (standalone: they cannot mesh).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest

import hermes
from hermes import pubsub
from hermes.pubsub import Reconnected
from hermes.pubsub._redis_wire import Wire  # the wire format, to forge a payload as an attacker would

from _cluster import poll
from _redisserver import BINARY, MISSING, RedisServer, redis_server, started_redis  # noqa: F401  # a fixture
from test_pg import collected, start_collector  # noqa: E402  # shipped to the nodes by reference

if BINARY is None:  # one line for the whole module (test_pubsub then runs its suite on the mesh only)
    pytest.skip(MISSING, allow_module_level=True)
from conftest import run_node
from test_pubsub import Collectors

pytestmark = pytest.mark.timeout(120)

COOKIE = "islands-cookie-for-the-redis-tests"
ISLANDS = ["isla", "islb", "islc"]


@pytest.fixture(scope="module")
def islands(redis_server: RedisServer) -> Iterator[dict[str, hermes.LocalCluster]]:
    clusters: dict[str, hermes.LocalCluster] = {}
    try:
        for name in ISLANDS:
            clusters[name] = hermes.LocalCluster([name], cookie=COOKIE, pubsub_url=redis_server.url)
        yield clusters
    finally:
        for cluster in clusters.values():
            cluster.stop()


def visible_nodes() -> list[str]:
    return hermes.nodes()


def stats() -> dict[str, Any]:
    return pubsub.statistics()


def collectors_on(islands: dict[str, hermes.LocalCluster], prefix: str, topics: list[Any]) -> list[tuple[Collectors, str]]:
    found = []
    for name, cluster in islands.items():
        c = Collectors(cluster, prefix)
        found.append((c, c.start(name, topics)))
    return found


def test_three_unmeshed_nodes_share_one_redis(islands):
    for name, cluster in islands.items():
        assert cluster.rpc(name, visible_nodes) == []  # no mesh at all
    topic = "r-islands"
    found = collectors_on(islands, "share", [topic])
    try:
        for name, cluster in islands.items():
            cluster.rpc(name, hermes.publish, topic, ("from", name))
        expected = sorted(("from", n) for n in ISLANDS)
        for c, collector in found:
            node = c.cluster.nodes[0]
            got = poll(lambda: (lambda g: g if len(g) >= 3 else None)(c.got(node, collector)), timeout=20)
            assert sorted(got) == expected  # once each: a node's own copy from Redis is skipped
        # node= and exclude= through Redis, no mesh: only islb, and not the excluded one
        target = islands["islb"].nodes[0]
        excluded = islands["islc"].rpc("islc", hermes.whereis, found[2][1])
        islands["isla"].rpc("isla", hermes.publish, topic, "only b", node=target)
        islands["isla"].rpc("isla", hermes.publish, topic, "not c", exclude=excluded)
        islands["isla"].rpc("isla", hermes.publish, topic, "marker")
        tails = [c.wait_for(c.cluster.nodes[0], collector, "marker", timeout=20)[3:] for c, collector in found]
        assert tails == [["not c", "marker"], ["only b", "not c", "marker"], ["marker"]]
        assert all(islands[n].rpc(n, stats)["published"] >= 1 for n in ISLANDS)
    finally:
        for c, _ in found:
            c.stop()


PUBLISHER_SCRIPT = """
import sys, hermes
with hermes.RedisPublisher(sys.argv[1]) as p:   # the cookie: HERMES_COOKIE, as a node finds it
    for i in range(3):
        p.publish("r-script", ("script", i))
    p.publish("r-script", "only b", node=sys.argv[2])
    p.publish("r-script", "done")
"""


def test_a_redis_publisher_in_a_plain_script_reaches_three_nodes(islands, redis_server):
    found = collectors_on(islands, "script", ["r-script"])
    try:
        env = {**os.environ, "HERMES_COOKIE": COOKIE}
        target = islands["islb"].nodes[0]
        subprocess.run([sys.executable, "-c", PUBLISHER_SCRIPT, redis_server.url, target], env=env, check=True,
                       timeout=60)
        expected = [("script", 0), ("script", 1), ("script", 2)]
        for c, collector in found:
            node = c.cluster.nodes[0]
            extra = ["only b"] if node == target else []
            assert c.wait_for(node, collector, "done", timeout=20) == expected + extra + ["done"]
    finally:
        for c, _ in found:
            c.stop()


async def recorder_app() -> None:
    """A standalone CLI node's first actor: writes each message of "r-cli" to a file."""
    path = os.environ["HERMES_TEST_RECORD"]
    hermes.subscribe("r-cli")
    with open(path, "a") as f:
        f.write(f"ready {hermes.node()} {hermes.nodes()}\n")
    while True:
        msg = await hermes.receive()
        with open(path, "a") as f:
            f.write(f"{msg!r}\n")


def test_standalone_cli_nodes_without_a_cluster_share_redis(redis_server, tmp_path):
    records = {name: tmp_path / f"{name}.txt" for name in ("clia", "clib", "clic")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, path in records.items():  # no --cluster: standalone, they never mesh
            env = {**os.environ, "HERMES_COOKIE": COOKIE, "HERMES_TEST_RECORD": str(path),  # --app from tests/
                   "PYTHONPATH": os.pathsep.join(p for p in (os.path.dirname(__file__), os.environ.get("PYTHONPATH"))
                                                 if p)}
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "hermes", "node", "--name", name, "--pubsub-url", redis_server.url,
                 "--app", "test_redis:recorder_app"], env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True))
        lines = {name: poll(lambda: path.exists() and path.read_text().splitlines(), timeout=30)
                 for name, path in records.items()}
        assert all(got[0].startswith("ready ") and got[0].endswith(" []") for got in lines.values())
        target = lines["clib"][0].split()[1]
        with hermes.RedisPublisher(redis_server.url, cookie=COOKIE) as pub:
            pub.publish("r-cli", "to all")
            pub.publish("r-cli", "to b", node=target)
            pub.publish("r-cli", "done")
        for name, path in records.items():
            got = poll(lambda: (lambda t: t if t[-1] == "'done'" else None)(path.read_text().splitlines()),
                       timeout=20)
            assert got[1:] == (["'to all'", "'to b'", "'done'"] if name == "clib" else ["'to all'", "'done'"])
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


class Boom:
    """Unpickling it would run ``os.system`` on the node: the MAC check must come first."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.path}",))


def test_a_payload_signed_with_another_cookie_reaches_nobody(islands, redis_server, tmp_path):
    import redis

    found = collectors_on(islands, "forged", ["r-forged"])
    marker_file = tmp_path / "unpickled"
    try:
        before = {n: islands[n].rpc(n, stats)["rejected"] for n in ISLANDS}
        ours = Wire(COOKIE.encode(), pubsub.DEFAULT)
        forged = Wire(b"not the cookie", pubsub.DEFAULT)
        client = redis.Redis.from_url(redis_server.url)
        try:  # on the islands' own channel: only the MAC stands in the way
            receivers = client.publish(ours.channel, forged.payload(None, None, "r-forged", Boom(str(marker_file)), None))
            client.publish(ours.channel, b"\x00" * 10)  # too short to hold a MAC
        finally:
            client.close()
        assert receivers == 3
        with hermes.RedisPublisher(redis_server.url, cookie=COOKIE) as good:
            good.publish("r-forged", "marker")
        for c, collector in found:
            assert c.wait_for(c.cluster.nodes[0], collector, "marker", timeout=20) == ["marker"]
        for n in ISLANDS:
            assert islands[n].rpc(n, stats)["rejected"] == before[n] + 2
            assert "dropped a payload from Redis channel" in islands[n].output(n)
        assert not marker_file.exists()
    finally:
        for c, _ in found:
            c.stop()


# -- Redis going away -------------------------------------------------------------------


# a subscribed actor that records messages and ``Reconnected`` notices (test_pg's Collector)
start_listener, listened = start_collector, collected


async def publish_for(topic: str, seconds: float) -> int:
    """Publish every ~2 ms for ``seconds`` (Redis may be gone meanwhile): how many."""
    import asyncio

    count, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        hermes.publish(topic, ("tick", count))
        count += 1
        await asyncio.sleep(0.002)
    return count


def start_publisher(topic: str, seconds: float) -> None:
    hermes.spawn(publish_for, topic, seconds)


_SUBSCRIPTIONS: dict[str, Any] = {}  # on a node: open subscriptions by name


async def hold_subscription(name: str, topic: str) -> None:
    """A subscription held by a plain coroutine for the test's life."""
    import asyncio

    async with hermes.subscription(topic) as sub:
        _SUBSCRIPTIONS[name] = sub
        await asyncio.Event().wait()


def start_subscription(name: str, topic: str) -> None:
    hermes.spawn(hold_subscription, name, topic)


def subscription_counts(name: str) -> tuple[int, int]:
    sub = _SUBSCRIPTIONS[name]
    return sub.reconnects, sub.qsize()


@pytest.mark.timeout(180)
def test_redis_killed_and_restarted_under_publishing(tmp_path):
    server_iter = started_redis()
    server = next(server_iter)
    topic = "r-outage"
    try:
        with hermes.LocalCluster(["ra", "rb"], pubsub_url=server.url) as c:
            a, b = c.nodes
            for n in (a, b):
                c.rpc(n, start_listener, "listener", topic)
            c.rpc(b, start_subscription, "sub", topic)
            poll(lambda: c.rpc(b, subscription_counts, "sub") == (0, 0), timeout=10)
            c.rpc(a, start_publisher, topic, 8.0)
            poll(lambda: any(m[0] == "tick" for m in c.rpc(b, listened, "listener")), timeout=20)
            server.kill()
            poll(lambda: not c.rpc(a, stats)["subscribed"] and not c.rpc(b, stats)["subscribed"], timeout=20)
            server.start()
            back = time.monotonic()
            poll(lambda: all(c.rpc(n, stats)["subscribed"] for n in (a, b)), timeout=20, interval=0.01)
            assert time.monotonic() - back < 2.0  # reconnected within 2 s of its return
            for n in (a, b):
                got = poll(lambda: (lambda g: g if Reconnected(pubsub.DEFAULT) in g else None)(
                    c.rpc(n, listened, "listener")), timeout=10)
                assert got.count(Reconnected(pubsub.DEFAULT)) == 1
                assert c.rpc(n, stats)["reconnects"] == 1
            # a subscription counts the reconnect; none is queued among its messages
            reconnects, _queued = c.rpc(b, subscription_counts, "sub")
            assert reconnects == 1
            # nothing else broke: publishing goes on, both ways, and the mesh is intact
            c.rpc(b, hermes.publish, topic, "after")
            for n in (a, b):
                assert "after" in poll(lambda: (lambda g: g if "after" in g else None)(c.rpc(n, listened, "listener")),
                                       timeout=10)
            ticks = [m[1] for m in c.rpc(b, listened, "listener") if type(m) is tuple]
            assert ticks == sorted(ticks)  # what arrived came in order (losses are only what Redis missed)
            assert c.rpc(a, visible_nodes) == [b]
            assert "lost Redis" in c.output(a) and "is back" in c.output(a)
    finally:
        server.kill()
        server_iter.close()


# -- one node: options, bounds, the import --------------------------------------------


def test_bad_redis_options_fail_before_anything_starts():
    async def main():
        with pytest.raises(TypeError, match="max_queu"):
            pubsub.start("q", url="redis://127.0.0.1:1/0", max_queu=3)
        with pytest.raises(ValueError, match="max_queue"):
            pubsub.start("q", url="redis://127.0.0.1:1/0", max_queue=0)
        with pytest.raises(ValueError, match="overflow"):
            pubsub.start("q", url="redis://127.0.0.1:1/0", overflow="wait")
        with pytest.raises(ValueError, match="redis://"):
            pubsub.start("q", url="http://127.0.0.1:1/0")
        with pytest.raises(TypeError, match="url="):
            pubsub.start("q", max_queue=3)
        return "q" in pubsub.instances(), hermes.whereis("q")

    assert run_node(main) == (False, None)
    with pytest.raises(ValueError, match="redis://"):
        hermes.RedisPublisher("localhost:6379")
    with pytest.raises(ValueError, match="pubsub_url"):
        hermes.run(lambda: None, name="never", pubsub_url="localhost:6379")


def test_publishes_wait_in_a_bounded_queue_while_redis_is_unreachable(caplog):
    from _redisserver import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    async def main():
        pubsub.start("q", url=url, max_queue=10)
        hermes.subscribe("t", pubsub="q")
        for i in range(25):
            hermes.publish("t", i, pubsub="q")
        got = [await hermes.receive(timeout=1) for _ in range(25)]  # local subscribers all get theirs
        return got, pubsub.statistics("q")

    with caplog.at_level(logging.WARNING, logger="hermes.pubsub.redis"):
        got, counters = run_node(main)
    assert got == list(range(25))
    assert counters["queued"] == 10 and counters["dropped"] == 15 and counters["subscribed"] is False
    overflow = [r for r in caplog.records if "max_queue" in r.getMessage()]
    assert len(overflow) == 1 and "PubSub q " in overflow[0].getMessage()


def test_an_unhashable_topic_is_refused_before_anything_is_queued():
    from _redisserver import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: publishes would queue

    async def main():
        pubsub.start("q", url=url, max_queue=10)
        with pytest.raises(TypeError, match="hashable"):
            hermes.publish(["not", "hashable"], "x", pubsub="q")
        with pytest.raises(TypeError, match="hashable"):
            hermes.publish(["not", "hashable"], "x", pubsub="q", node="elsewhere@h")
        return pubsub.statistics("q")

    counters = run_node(main)
    assert counters["published"] == 0 and counters["queued"] == 0  # as on the mesh: nothing left the node


def test_redis_is_imported_only_when_a_redis_pubsub_is_used():
    code = ("import sys, hermes\n"
            "hermes.run(lambda: hermes.publish('t', 1), name='plain')\n"
            "print('redis' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"

"""``hermes.subscription``: a bounded queue of a topic's messages for any
coroutine on the node's loop, its overflow policies and its lifetime."""
from __future__ import annotations

import asyncio
from typing import Any, Iterator

import pytest

import hermes



def on_node(main: Any) -> Any:
    async def body() -> Any:
        async with hermes.start():
            return await main()
    return asyncio.run(body())


@pytest.mark.timeout(60)
def test_a_plain_coroutine_receives_in_order_and_is_unsubscribed_on_exit():
    async def main() -> None:
        async with hermes.subscription("t") as sub:
            assert [pid for pid, _ in hermes.subscribers("t")] == [sub.pid]
            for i in range(100):
                hermes.publish("t", i)
            got = [await sub.get() for _ in range(100)]
            assert got == list(range(100)) and sub.dropped == 0
        assert hermes.subscribers("t") == []
        hermes.publish("t", "after")  # no one: nothing to keep
        assert sub.qsize() == 0

    on_node(main)


@pytest.mark.timeout(60)
def test_async_for_and_get_timeout():
    async def main() -> None:
        async with hermes.subscription("t") as sub:
            with pytest.raises(TimeoutError):
                await sub.get(timeout=0.05)
            for i in range(3):
                hermes.publish("t", i)
            hermes.publish("t", "end")
            got = []
            async for msg in sub:
                if msg == "end":
                    break
                got.append(msg)
            assert got == [0, 1, 2]

    on_node(main)


@pytest.mark.timeout(60)
def test_cancellation_unsubscribes():
    async def main() -> None:
        started = asyncio.Event()

        async def consumer() -> None:
            async with hermes.subscription("t") as sub:
                started.set()
                async for _ in sub:
                    pass

        task = asyncio.get_running_loop().create_task(consumer())
        await asyncio.wait_for(started.wait(), 5)
        assert len(hermes.subscribers("t")) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert hermes.subscribers("t") == []

    on_node(main)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest"])
def test_a_slow_consumer_stays_bounded_and_counts_every_drop(overflow):
    maxsize, published = 100, 5_000

    async def main() -> None:
        async with hermes.subscription("t", maxsize=maxsize, overflow=overflow) as sub:
            received: list[int] = []
            for i in range(published):
                hermes.publish("t", i)
                assert sub.qsize() <= maxsize  # bounded at every moment
                if i % 10 == 0:  # a consumer ten times slower than its publisher
                    await asyncio.sleep(0)
                    while sub.qsize():
                        received.append(await sub.get())
                        break
            while sub.qsize():
                received.append(await sub.get())
            assert published == len(received) + sub.dropped
            assert sub.dropped > 0
            assert received == sorted(received)  # order kept for what is delivered
            if overflow == "drop_oldest":
                assert received[-maxsize:] == list(range(published - maxsize, published))
            else:
                assert received[:maxsize] == list(range(maxsize))

    on_node(main)


@pytest.mark.timeout(60)
def test_overflow_error_ends_the_subscription_with_slow_consumer():
    async def main() -> None:
        async with hermes.subscription("t", maxsize=10, overflow="error") as sub:
            for i in range(15):
                hermes.publish("t", i)
            with pytest.raises(hermes.SlowConsumer) as info:
                await sub.get()
            assert info.value.dropped == 5 and isinstance(info.value, hermes.HermesError)
            await asyncio.sleep(0)
            assert hermes.subscribers("t") == []  # ended: unsubscribed
            with pytest.raises(hermes.SlowConsumer):
                async for _ in sub:
                    pass

    on_node(main)


@pytest.mark.timeout(60)
def test_bad_arguments_raise_before_subscribing():
    async def main() -> None:
        with pytest.raises(ValueError, match="overflow"):
            hermes.subscription("t", overflow="block")
        with pytest.raises(ValueError, match="maxsize"):
            hermes.subscription("t", maxsize=0)
        with pytest.raises(hermes.HermesError, match="no PubSub named"):
            async with hermes.subscription("t", pubsub="nope"):
                pass
        assert hermes.subscribers("t") == []
        sub = hermes.subscription("t")
        with pytest.raises(hermes.HermesError, match="not open"):
            await sub.get()

    on_node(main)


@pytest.mark.timeout(60)
def test_note_reconnect_counts():
    async def main() -> None:
        async with hermes.subscription("t") as sub:
            assert sub.reconnects == 0
            sub.note_reconnect()
            sub.note_reconnect()
            assert sub.reconnects == 2

    on_node(main)


@pytest.mark.timeout(60)
def test_node_stop_ends_iteration():
    async def main() -> None:
        node = await hermes.start()
        async with hermes.subscription("t") as sub:
            hermes.publish("t", "before")
            await node.stop()
            assert [msg async for msg in sub] == ["before"]

    asyncio.run(main())


def publish_range(topic: str, n: int) -> None:
    for i in range(n):
        hermes.publish(topic, i)


@pytest.fixture(scope="module")
def cluster() -> Iterator[hermes.LocalCluster]:
    c = hermes.LocalCluster(["sa"])
    try:
        yield c
    finally:
        c.stop()


@pytest.mark.timeout(120)
def test_publishes_from_another_node_reach_a_subscription_in_order(cluster):
    host, port = cluster.service_address

    async def main() -> None:
        async with hermes.start(cluster=f"{host}:{port}", cookie=cluster.cookie):
            async with hermes.subscription("remote.t") as sub:
                await hermes.wait_for_nodes(names=["sa"], timeout=10)
                me = hermes.node()
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: cluster.rpc("sa", _wait_then_publish, me, "remote.t", 500))
                got = [await sub.get(timeout=10) for _ in range(500)]
                assert got == list(range(500)) and sub.dropped == 0

    asyncio.run(main())


async def _wait_then_publish(subscriber_node: str, topic: str, n: int) -> None:
    from hermes.pubsub import group_of, DEFAULT

    for _ in range(1000):  # our subscription is visible here once the subscriber's node is
        if any(pid.node == subscriber_node for pid in hermes.pg.get_members(group_of(DEFAULT))):
            break
        await asyncio.sleep(0.01)
    publish_range(topic, n)

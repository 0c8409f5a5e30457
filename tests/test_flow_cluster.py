"""Flow control between real node processes (issue 11): slow consumers, a peer
that stops reading, drain(). Durations are scaled down from the issue's (20 s
blasts, 10 s SIGSTOP) to keep each test near 30 s; the bounds are the issue's."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import hermes

from _mesh_support import make_cluster  # noqa: F401  # a fixture: clusters stopped (and SIGCONTed) at teardown
from _cluster import poll

MB = 2**20
LINK = 8 * MB  # max_link_buffer for these clusters: small, so a blocked link overflows fast
PAYLOAD = b"x" * 100


def in_flight_bound() -> int:
    """Messages that fit between a publisher and its consumer's mailbox: both socket
    buffers at their kernel maximum, plus the transport's high-water mark (1 MiB),
    counted at the payload's size alone (a frame is larger: a generous bound)."""
    def kernel_max(name: str) -> int:
        try:
            return int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
        except (OSError, ValueError, IndexError):
            return 8 * MB
    return (kernel_max("tcp_rmem") + kernel_max("tcp_wmem") + MB) // len(PAYLOAD)
TOPIC = "flow.blast"


# -- on the nodes -----------------------------------------------------------

def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class SlowSync(hermes.Actor):
    """About 1k messages a second: a blocking 1 ms per message."""

    mailbox_limit = 10_000

    def __init__(self) -> None:
        self.handled = 0
        hermes.subscribe(TOPIC)

    def handle_call(self, request: Any, sender: Any) -> Any:
        return self.handled

    def handle_info(self, msg: Any) -> None:
        time.sleep(0.001)
        self.handled += 1


class SlowAsync(SlowSync):
    async def handle_info(self, msg: Any) -> None:
        await asyncio.sleep(0.001)
        self.handled += 1


class Recorder(hermes.Actor):
    """Keeps the sequence numbers it got, in order."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        hermes.subscribe(TOPIC)

    def handle_call(self, request: Any, sender: Any) -> Any:
        return self.seqs

    def handle_info(self, msg: Any) -> None:
        self.seqs.append(msg[0])


class Echo(hermes.Actor):
    def handle_call(self, request: Any, sender: Any) -> Any:
        return request


def start(cls: type) -> hermes.Pid:
    return hermes.spawn(cls)


def slow_counts(pid: hermes.Pid) -> tuple[int, int, int]:
    """(handled, dropped, still queued): read beside the actor, not through a call
    that would queue behind its backlog."""
    from hermes.runtime.lowlevel import process_of

    info = hermes.process_info(pid)
    proc = process_of(pid)
    assert info is not None and proc is not None
    return proc.actor.handled, info["dropped"], info["mailbox"]


async def blast(peer: str, seconds: float, *, chunk: int = 1000, pause: float = 0.0, drain: int = 0,
                echo: hermes.Pid | None = None, stop_on_down: bool = False) -> dict[str, Any]:
    """Publish ``(seq, PAYLOAD)`` for ``seconds``; sample this node's RSS; with
    ``echo``, call it every 20 ms meanwhile and keep the latencies."""
    assert peer in hermes.nodes()
    hermes.monitor_node(peer)
    base = peak = rss()
    latencies: list[float] = []
    done = False

    async def pinger() -> None:
        while not done:
            t = time.perf_counter()
            await hermes.call(echo, "ping", timeout=10)
            latencies.append(time.perf_counter() - t)
            await asyncio.sleep(0.02)

    pings = asyncio.ensure_future(pinger()) if echo is not None else None
    sent = 0
    down = False
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not down:
        for _ in range(chunk):
            hermes.publish(TOPIC, (sent, PAYLOAD))
            sent += 1
            if drain and sent % drain == 0:
                await hermes.drain(peer, timeout=60)
        peak = max(peak, rss())
        await asyncio.sleep(pause)
        down = stop_on_down and _node_down_seen(peer)
    done = True
    if pings is not None:
        await pings
    return {"sent": sent, "base": base, "peak": peak, "latencies": latencies, "down": _node_down_seen(peer)}


def _peek_mailbox() -> list[Any]:
    from hermes.runtime.lowlevel import current_process

    proc = current_process()
    return list(proc.mailbox) if proc is not None else []


def _node_down_seen(peer: str) -> bool:
    return any(isinstance(m, hermes.NodeDown) and m.node == peer for m in _peek_mailbox())


def own_pid() -> int:
    return os.getpid()


def links() -> dict[str, Any]:
    return hermes.statistics()["links"]


def connected_to(peer: str) -> bool:
    return peer in hermes.nodes()


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * (len(ordered) - 1) + 0.5))]


# -- the tests --------------------------------------------------------------

@pytest.mark.parametrize("consumer", [SlowSync, SlowAsync])
def test_slow_remote_consumer_bounds_memory_on_both_nodes(make_cluster: Callable[..., hermes.LocalCluster],
                                                          consumer: type) -> None:
    c = make_cluster(["pub", "sub"], max_link_buffer=4 * LINK)  # room for a loaded machine's hiccups
    pub, sub = c.nodes
    slow = c.rpc(sub, start, consumer)
    echo = c.rpc(sub, start, Echo)
    sub_base = c.rpc(sub, rss)
    # 50k publishes a second of 100 bytes: 50x what the consumer handles
    result = c.rpc(pub, blast, sub, 8.0, chunk=500, pause=0.01, echo=echo if consumer is SlowAsync else None,
                   timeout=60)
    sub_peak = c.rpc(sub, rss)
    overloaded = "overloaded" in c.output(pub)
    assert result["peak"] - result["base"] <= 4 * LINK + 64 * MB
    assert sub_peak - sub_base <= 64 * MB
    assert overloaded == result["down"]  # the link closes only as overloaded
    if not result["down"]:
        # everything published reached the consumer's mailbox or was counted as dropped
        poll(lambda: sum(c.rpc(sub, slow_counts, slow, timeout=40)) == result["sent"], timeout=30)
        handled, dropped, _ = c.rpc(sub, slow_counts, slow, timeout=40)
        assert dropped > 0 and handled > 0
    if consumer is SlowAsync:
        assert not result["down"], "the async consumer's node keeps up with reading: no overload"
        assert len(result["latencies"]) > 100
        assert p99(result["latencies"]) <= 0.2


def test_peer_that_stops_reading_is_closed_as_overloaded_and_gets_a_prefix(
        make_cluster: Callable[..., hermes.LocalCluster]) -> None:
    c = make_cluster(["pub", "sub"], max_link_buffer=LINK)
    pub, sub = c.nodes
    recorder = c.rpc(sub, start, Recorder)
    sub_os_pid = c.rpc(sub, own_pid)
    outcome: dict[str, Any] = {}

    def publish() -> None:
        try:
            outcome["result"] = c.rpc(pub, blast, sub, 12.0, chunk=1000, stop_on_down=True, timeout=60)
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        poll(lambda: len(c.rpc(sub, _recorded, recorder)) > 1000, timeout=20, interval=0.05)
        os.kill(sub_os_pid, signal.SIGSTOP)
        publisher.join(30)
    finally:
        os.kill(sub_os_pid, signal.SIGCONT)
        publisher.join(60)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result["down"], "the publisher never saw the link go"
    assert result["peak"] - result["base"] <= LINK + 64 * MB
    log = c.output(pub)
    assert "overloaded" in log and f"max_link_buffer {LINK}" in log
    poll(lambda: c.rpc(pub, connected_to, sub) and c.rpc(sub, connected_to, pub), timeout=30)
    seqs = c.rpc(sub, _recorded, recorder)
    assert seqs == list(range(len(seqs)))  # a prefix: no gap
    assert 0 < len(seqs) < result["sent"]


def _recorded(pid: hermes.Pid) -> Any:
    from hermes.runtime.lowlevel import process_of

    proc = process_of(pid)
    return list(proc.actor.seqs) if proc is not None and proc.actor is not None else []


def test_drain_paces_a_publisher_to_its_consumer(make_cluster: Callable[..., hermes.LocalCluster]) -> None:
    # the consumer's node stops reading past 5k queued messages; drain() then holds the publisher
    c = make_cluster(["pub", "sub"], max_link_buffer=LINK, mailbox_warning=5_000)
    pub, sub = c.nodes
    before = c.rpc(sub, process_count)
    with pytest.raises(ValueError, match="mailbox_limit must be at least 1"):
        c.rpc(pub, spawn_on, sub, 0)  # checked on the spawning node: nothing leaves it
    assert c.rpc(sub, process_count) == before
    slow = c.rpc(sub, start_unbounded_async)
    sub_base = c.rpc(sub, rss)
    result = c.rpc(pub, blast, sub, 8.0, chunk=1000, drain=1000, timeout=120)
    sub_peak = c.rpc(sub, rss)
    assert not result["down"]
    assert result["peak"] - result["base"] <= 32 * MB
    assert sub_peak - sub_base <= 64 * MB
    # at the consumer's pace: what it has not handled yet is what the high-water mark lets queue
    handled, dropped, queued = c.rpc(sub, slow_counts, slow, timeout=40)
    assert dropped == 0
    # queued in the mailbox (the high-water mark) + what the kernel's socket buffers and the
    # transport's write buffer can hold in between (this machine's tcp_rmem/tcp_wmem maxima)
    assert result["sent"] - handled <= 5_000 * 2 + in_flight_bound()
    assert f"stops reading {pub}" in c.output(sub)  # the consumer's node pushed back: that is what held drain()
    assert c.rpc(sub, links)[pub]["max_link_buffer"] == LINK


class YieldingAsync(SlowSync):
    """An async consumer slower than the publisher (a loop turn per message), but
    fast enough that the backlog the high-water mark lets in drains in seconds."""

    async def handle_info(self, msg: Any) -> None:
        await asyncio.sleep(0)
        self.handled += 1


def start_unbounded_async() -> hermes.Pid:
    return hermes.spawn(YieldingAsync, mailbox_limit=None)


def spawn_on(peer: str, limit: Any) -> hermes.Pid:
    return hermes.spawn(Echo, node=peer, mailbox_limit=limit)


def process_count() -> int:
    return int(hermes.statistics()["processes"])

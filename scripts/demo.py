"""The seed article's story on a real three-node local cluster.

alice: 1 client on user.created, 1 on user.updated; bob: 5 on user.created;
carol: 2 on user.updated. alice publishes user.created, then bob publishes
user.updated; each node's output is shown, labelled by node.
"""
from __future__ import annotations

import sys
import time

from hermes import LocalCluster, publish
from hermes.demo import start_clients

PLAN = {"alice": [("user.created", 1), ("user.updated", 1)], "bob": [("user.created", 5)],
        "carol": [("user.updated", 2)]}
STEPS = [("alice", "user.created", {"name": "Jade"}), ("bob", "user.updated", {"id": 1, "name": "Jadyline"})]


def received_lines(cluster: LocalCluster, name: str) -> list[str]:
    return [line for line in cluster.output(name).splitlines() if " received: " in line]


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def main() -> int:
    print("Starting a local cluster: alice, bob, carol ...", flush=True)
    with LocalCluster(list(PLAN)) as cluster:
        print(f"  nodes: {', '.join(cluster.nodes)}  (pg service at {cluster.service_address[0]}:{cluster.service_address[1]})")
        for name, subscriptions in PLAN.items():
            for topic, count in subscriptions:
                pids = cluster.rpc(name, start_clients, topic, count)
                print(f"  {name}: {count} client(s) on {topic!r}: {', '.join(map(str, pids))}")
        expected = {name: 0 for name in PLAN}
        for publisher, topic, message in STEPS:
            print(f"\n{publisher}> publish({topic!r}, {message!r})", flush=True)
            before = {name: len(received_lines(cluster, name)) for name in PLAN}
            cluster.rpc(publisher, publish, topic, message)
            for name, subscriptions in PLAN.items():
                expected[name] += sum(count for t, count in subscriptions if t == topic)
            if not wait_for(lambda: all(len(received_lines(cluster, n)) >= expected[n] for n in PLAN)):
                print("  timed out waiting for deliveries", file=sys.stderr)
                return 1
            for name in PLAN:
                lines = received_lines(cluster, name)[before[name]:]
                print(f"  [{name}] " + ("\n  [{0}] ".format(name).join(lines) if lines else "** nothing new **"))
        time.sleep(0.2)  # let any wrong extra delivery show up before checking exact counts
        counts = {name: len(received_lines(cluster, name)) for name in PLAN}
        if counts != expected:
            print(f"unexpected deliveries: {counts} != {expected}", file=sys.stderr)
            return 1
    print("\nDone: every client got exactly what it subscribed to; all nodes stopped.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # LocalCluster has stopped every node on the way out
        print("demo: interrupted; every node is stopped", file=sys.stderr)
        sys.exit(130)

"""Launch a local cluster in the background, look at it, stop it.

    scripts/cluster.py up alice bob carol   # service + nodes, detached
    scripts/cluster.py status               # nodes, connections, groups, topics
    scripts/cluster.py down                 # stop everything, leave nothing

State (pids, logs) lives in one folder, ``.hermes-cluster/`` by default. The
cluster uses the default local service address (127.0.0.1:4370) and your
cookie (HERMES_COOKIE or ~/.hermes/cookie), so ``python -m hermes shell
--name dave --cluster local`` joins it and ``--remote alice@HOST`` attaches.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hermes  # noqa: E402
from hermes._app import full_name  # noqa: E402
from hermes.transport._cookie import resolve_cookie  # noqa: E402
from hermes.pg._service import DEFAULT_PORT, ServiceConnection, ping_service, start_service_process  # noqa: E402


def _state_file(state: Path) -> Path:
    return state / "cluster.json"


def _load(state: Path) -> dict[str, Any]:
    path = _state_file(state)
    return json.loads(path.read_text()) if path.exists() else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def up(state: Path, names: list[str], host: str, port: int, timeout: float) -> int:
    current = _load(state)
    if current and any(_alive(p) for p in current.get("pids", {}).values()):
        print(f"a cluster is already up (state in {state}); run `down` first", file=sys.stderr)
        return 1
    state.mkdir(parents=True, exist_ok=True)
    (state / "logs").mkdir(exist_ok=True)
    cookie = resolve_cookie(None).value
    if ping_service((host, port), cookie):
        print(f"a pg service already answers at {host}:{port}; using it")
        service_pid = None
    else:
        service = start_service_process(host, port, cookie, detached=True)
        service_pid = service.pid
    pids: dict[str, int] = {}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    for name in names:
        full = full_name(name)
        with open(state / "logs" / f"{name}.log", "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "hermes", "node", "--name", full,
                                     "--cluster", f"{host}:{port}"], env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        pids[full] = proc.pid
    _state_file(state).write_text(json.dumps({"service": [host, port], "service_pid": service_pid,
                                              "pids": pids}, indent=2))
    expected = sorted(pids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = _query(host, port, cookie, expected)
        group = repr(hermes.pubsub.group_of(hermes.pubsub.DEFAULT))
        if len(report) == len(expected) and all(
                sorted([n, *info.get("nodes", [])]) == expected and info.get("groups", {}).get(group) == len(expected)
                for n, info in report.items()):
            print(f"cluster up: {', '.join(expected)} (service {host}:{port}, state in {state})")
            return 0
        time.sleep(0.2)
    print(f"the cluster did not connect within {timeout}s; see {state / 'logs'}", file=sys.stderr)
    return 1


def _node_status() -> dict[str, Any]:
    from hermes import pg, registry

    return {"nodes": hermes.nodes(), "groups": {repr(g): len(pg.get_members(g)) for g in pg.which_groups()},
            "topics": {repr(t): registry.count(t) for t in registry.all_keys()}}


def _query(host: str, port: int, cookie: bytes, names: list[str] | None = None) -> dict[str, Any]:
    """Ask every node (as a hidden node) for its view."""
    if names is None:
        conn = ServiceConnection((host, port), cookie, timeout=2.0)
        try:
            names = sorted(conn.call("nodes"))
        finally:
            conn.close()

    async def main() -> dict[str, Any]:
        found = {}
        for name in names:
            if await hermes.connect(name):
                try:
                    found[name] = await hermes.rpc(name, _node_status, timeout=2.0)
                except Exception as exc:  # one node's failure is part of the report
                    found[name] = {"error": repr(exc)}
        return found

    try:
        return hermes.run(main, name=f"status-{os.getpid()}", cookie=cookie, cluster=f"{host}:{port}",
                          hidden=True)
    except Exception as exc:
        return {"error": {"error": repr(exc)}}


def status(state: Path) -> int:
    current = _load(state)
    host, port = current.get("service", ["127.0.0.1", DEFAULT_PORT])
    cookie = resolve_cookie(None).value
    if not ping_service((host, port), cookie):
        print(f"no pg service answers at {host}:{port}: the cluster is down")
        return 1
    report = _query(host, port, cookie)
    for name, info in sorted(report.items()):
        print(f"{name}")
        if "error" in info:
            print(f"  error: {info['error']}")
            continue
        print(f"  connected to: {', '.join(info['nodes']) or '-'}")
        for group, count in sorted(info["groups"].items()):
            print(f"  group {group}: {count} member(s)")
        for topic, count in sorted(info["topics"].items()):
            print(f"  topic {topic}: {count} subscriber(s)")
    return 0


def down(state: Path) -> int:
    current = _load(state)
    if not current:
        print("no cluster state: nothing to stop")
        return 0
    pids = list(current.get("pids", {}).values())
    if current.get("service_pid"):
        pids.append(current["service_pid"])
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    _state_file(state).unlink(missing_ok=True)
    print(f"cluster down: {len(pids)} process(es) stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", default=str(ROOT / ".hermes-cluster"), help="state folder")
    sub = parser.add_subparsers(dest="command", required=True)
    up_cmd = sub.add_parser("up")
    up_cmd.add_argument("names", nargs="+")
    up_cmd.add_argument("--host", default="127.0.0.1")
    up_cmd.add_argument("--port", type=int, default=DEFAULT_PORT)
    up_cmd.add_argument("--timeout", type=float, default=30.0)
    sub.add_parser("status")
    sub.add_parser("down")
    args = parser.parse_args(argv)
    state = Path(args.state)
    if args.command == "up":
        return up(state, args.names, args.host, args.port, args.timeout)
    if args.command == "status":
        return status(state)
    return down(state)


if __name__ == "__main__":
    sys.exit(main())

#!/bin/sh
"true" '''\'
# Run by sh first: re-run this file with the project's Python (.venv if present).
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -x "$root/.venv/bin/python" ]; then exec "$root/.venv/bin/python" "$0" "$@"; fi
exec python3 "$0" "$@"
'''
from __future__ import annotations

DOC = """Launch a local cluster in the background, look at it, change it, stop it.

    scripts/cluster.py up alice bob carol   # service + nodes, detached (again: adds nodes)
    scripts/cluster.py status               # every node: running / not running, its view
    scripts/cluster.py restart bob          # stop one node and start it again
    scripts/cluster.py down                 # stop everything, leave nothing

State (pids, logs) lives in one folder, ``.hermes-cluster/`` by default
(``--state`` or HERMES_CLUSTER_STATE). The cluster uses the default local
service address 127.0.0.1:4370 (``--port`` or HERMES_CLUSTER_PORT) and your
cookie (HERMES_COOKIE or ~/.hermes/cookie), so ``hermes shell --name dave
--cluster local`` joins it and ``hermes shell --remote alice@HOST`` attaches.
"""

import argparse
import json
import logging
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
from hermes.cluster._zygote import Zygote, ZygoteUnavailable, available as zygote_available  # noqa: E402
from hermes.pg.service import DEFAULT_PORT, ping_service, start_service_process  # noqa: E402
from hermes.transport import resolve_cookie  # noqa: E402

STOP_GRACE = 5.0  # seconds a node has to stop on SIGTERM before SIGKILL


# -- state ------------------------------------------------------------------------------------


def _state_file(state: Path) -> Path:
    return state / "cluster.json"


def _load(state: Path) -> dict[str, Any]:
    path = _state_file(state)
    return json.loads(path.read_text()) if path.exists() else {}


def _save(state: Path, current: dict[str, Any]) -> None:
    _state_file(state).write_text(json.dumps(current, indent=2))


def _alive(pid: int | None) -> bool:
    """A live process (not a zombie) that is still a Hermes process (not a reused pid)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"hermes" in cmdline.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _stop(pids: list[int], grace: float = STOP_GRACE) -> int:
    """SIGTERM the live ones, SIGKILL what outlives ``grace``; returns how many were running."""
    running = [pid for pid in pids if _alive(pid)]
    for pid in running:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in running) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in running:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    return len(running)


# -- commands ---------------------------------------------------------------------------------


def up(state: Path, names: list[str], host: str, port: int, timeout: float) -> int:
    """Start the service if needed and every named node not running, in parallel;
    wait until all the cluster's running nodes see each other."""
    state.mkdir(parents=True, exist_ok=True)
    (state / "logs").mkdir(exist_ok=True)
    current = _load(state) or {"service": [host, port], "service_pid": None, "pids": {}}
    host, port = current["service"]
    cookie = resolve_cookie(None).value
    if not ping_service((host, port), cookie):
        service = start_service_process(host, port, cookie, detached=True, log_path=state / "logs" / "service.log")
        current["service_pid"] = service.pid
    wanted = [full_name(n) for n in names]
    starting = [full for full in wanted if not _alive(current["pids"].get(full))]
    for full in wanted:
        if full not in starting:
            print(f"{full} is already running")
    # several nodes: forked from one process that imports Hermes once (see hermes.cluster._zygote)
    zygote = Zygote(_node_env(), state / "logs" / "zygote.log") if len(starting) > 1 and zygote_available() else None
    try:
        for full in starting:
            current["pids"][full] = _start_node(state, full, host, port, zygote)
    finally:
        if zygote is not None:
            zygote.close()  # the zygote exits; the nodes it forked run on, detached
    _save(state, current)
    return _wait_whole(state, current, timeout)


def _node_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def _start_node(state: Path, full: str, host: str, port: int, zygote: Zygote | None = None) -> int:
    """Start one node process, detached; returns at once (nodes start side by side)."""
    env = _node_env()
    log_path = state / "logs" / f"{full.split('@')[0]}.log"
    if zygote is not None:
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            return zygote.fork(["node", "--name", full, "--cluster", f"{host}:{port}"], env, log_path, (devnull,)).pid
        except ZygoteUnavailable:
            pass  # spawned below
        finally:
            os.close(devnull)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hermes", "node", "--name", full, "--cluster", f"{host}:{port}"],
                                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc.pid


def _wait_whole(state: Path, current: dict[str, Any], timeout: float) -> int:
    host, port = current["service"]
    cookie = resolve_cookie(None).value
    expected = sorted(name for name, pid in current["pids"].items() if _alive(pid))
    group = repr(hermes.pubsub.group_of(hermes.pubsub.DEFAULT))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = _query(host, port, cookie, expected)
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


def _query(host: str, port: int, cookie: bytes, names: list[str]) -> dict[str, Any]:
    """Ask every node (as a hidden node) for its view; a node that does not answer is left out."""

    async def main() -> dict[str, Any]:
        found = {}
        for name in names:
            if await hermes.connect(name):
                try:
                    found[name] = await hermes.rpc(name, _node_status, timeout=2.0)
                except Exception as exc:  # one node's failure is part of the report
                    found[name] = {"error": repr(exc)}
        return found

    if not names:
        return {}
    try:
        return hermes.run(main, name=f"status-{os.getpid()}", cookie=cookie, cluster=f"{host}:{port}", hidden=True)
    except Exception as exc:
        return {"?": {"error": repr(exc)}}


def status(state: Path) -> int:
    current = _load(state)
    pids: dict[str, int] = current.get("pids", {})
    if not pids:
        print(f"no nodes: the cluster is down (state in {state})")
        return 1
    host, port = current["service"]
    cookie = resolve_cookie(None).value
    service = "running" if ping_service((host, port), cookie) else "not running"
    print(f"pg service {host}:{port}: {service}")
    running = sorted(name for name, pid in pids.items() if _alive(pid))
    report = _query(host, port, cookie, running) if service == "running" else {}
    for name in sorted(pids):
        if name not in running:
            print(f"{name}: not running (pid {pids[name]})")
            continue
        print(f"{name}: running (pid {pids[name]})")
        info = report.get(name, {"error": "did not answer"})
        if "error" in info:
            print(f"  error: {info['error']}")
            continue
        print(f"  connected to: {', '.join(info['nodes']) or '-'}")
        for group, count in sorted(info["groups"].items()):
            print(f"  group {group}: {count} member(s)")
        for topic, count in sorted(info["topics"].items()):
            print(f"  topic {topic}: {count} subscriber(s)")
    return 0


def restart(state: Path, name: str, timeout: float) -> int:
    current = _load(state)
    full = full_name(name)
    if full not in current.get("pids", {}):
        print(f"no node {full} in this cluster (state in {state}); `up {name}` starts it", file=sys.stderr)
        return 1
    _stop([current["pids"][full]])
    host, port = current["service"]
    current["pids"][full] = _start_node(state, full, host, port)
    _save(state, current)
    return _wait_whole(state, current, timeout)


def down(state: Path) -> int:
    current = _load(state)
    if not current:
        print("no cluster state: nothing to stop")
        return 0
    nodes = list(current.get("pids", {}).values())
    stopped = _stop(nodes) + _stop([current["service_pid"]] if current.get("service_pid") else [])
    _state_file(state).unlink(missing_ok=True)
    dead = len(nodes) + (1 if current.get("service_pid") else 0) - stopped
    print(f"cluster down: {stopped} process(es) stopped" + (f", {dead} already gone" if dead else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/cluster.py", description=DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", default=os.environ.get("HERMES_CLUSTER_STATE", str(ROOT / ".hermes-cluster")),
                        help="state folder (default: HERMES_CLUSTER_STATE, else %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    up_cmd = sub.add_parser("up", help="start the service and these nodes (or add them to the running cluster)")
    up_cmd.add_argument("names", nargs="+", help="short node names")
    up_cmd.add_argument("--host", default="127.0.0.1", help="pg service host (default: %(default)s)")
    up_cmd.add_argument("--port", type=int, default=int(os.environ.get("HERMES_CLUSTER_PORT", DEFAULT_PORT)),
                        help="pg service port (default: HERMES_CLUSTER_PORT, else %(default)s)")
    restart_cmd = sub.add_parser("restart", help="stop one node and start it again")
    restart_cmd.add_argument("name", help="short node name")
    for cmd in (up_cmd, restart_cmd):
        cmd.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the cluster (default: 30)")
    sub.add_parser("status", help="every node, running or not, and what it sees")
    sub.add_parser("down", help="stop every node and the service")
    args = parser.parse_args(argv)
    logging.getLogger("hermes").setLevel(logging.ERROR)  # the probes' "not yet" lines are no news
    state = Path(args.state)
    if args.command == "up":
        return up(state, args.names, args.host, args.port, args.timeout)
    if args.command == "restart":
        return restart(state, args.name, args.timeout)
    if args.command == "status":
        return status(state)
    return down(state)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

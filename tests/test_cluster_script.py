"""scripts/cluster.py, run exactly as the docs type it (no interpreter in front).

Each test has its own state folder, service port and HOME (so its own cookie):
no test touches a real ~/.hermes, .hermes-cluster/ or port 4370.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from _cluster import alive

from hermes._app import full_name
from hermes.pg.service import free_port

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120


class Script:
    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path / "state"
        home = tmp_path / "home"
        home.mkdir()
        self.env = {k: v for k, v in os.environ.items() if k != "HERMES_COOKIE"}
        self.env.update(HOME=str(home), HERMES_CLUSTER_STATE=str(self.state), HERMES_CLUSTER_PORT=str(free_port()))

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        # exactly as typed in docs/guide.md and docs/operations.md: the file itself is the command
        return subprocess.run(["scripts/cluster.py", *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=TIMEOUT)

    def pids(self) -> dict[str, int]:
        path = self.state / "cluster.json"
        if not path.exists():
            return {}
        current = json.loads(path.read_text())
        return {**current["pids"], "service": current["service_pid"]}




@pytest.fixture
def script(tmp_path: Path) -> Iterator[Script]:
    run = Script(tmp_path)
    seen: set[int] = set()
    try:
        yield run
        seen.update(run.pids().values())
    finally:
        seen.update(run.pids().values())
        run("down")
        for pid in seen:  # even if the script failed: leave nothing behind
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)


def status_lines(script: Script) -> list[str]:
    result = script("status")
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if not line.startswith(" ")]


@pytest.mark.timeout(400)
def test_up_status_add_restart_crash_down(script: Script) -> None:
    alice, bob, carol, dave = (full_name(n) for n in ("alice", "bob", "carol", "dave"))
    assert os.access(ROOT / "scripts" / "cluster.py", os.X_OK)
    empty = script("status")
    assert empty.stdout.startswith("no nodes: the cluster is down")

    result = script("up", "alice", "bob", "carol")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"cluster up: {alice}, {bob}, {carol} ")
    lines = status_lines(script)
    pids = script.pids()
    assert lines[1:] == [f"{n}: running (pid {pids[n]})" for n in (alice, bob, carol)]
    assert lines[0].endswith(": running")  # the pg service

    result = script("up", "dave")  # added to the running cluster
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"cluster up: {alice}, {bob}, {carol}, {dave} ")
    assert script.pids()[alice] == pids[alice]  # the others were left alone

    old_bob = script.pids()[bob]
    result = script("restart", "bob")
    assert result.returncode == 0, result.stderr
    new_bob = script.pids()[bob]
    assert new_bob != old_bob and not alive(old_bob) and alive(new_bob)

    os.kill(pids[carol], signal.SIGKILL)
    pids = script.pids()
    lines = status_lines(script)
    assert lines[1:] == [f"{alice}: running (pid {pids[alice]})", f"{bob}: running (pid {pids[bob]})",
                         f"{carol}: not running (pid {pids[carol]})", f"{dave}: running (pid {pids[dave]})"]

    result = script("down")
    assert result.stdout == "cluster down: 4 process(es) stopped, 1 already gone\n"  # 3 nodes + the service
    assert not any(alive(pid) for pid in pids.values())
    assert script("status").stdout.startswith("no nodes: the cluster is down")

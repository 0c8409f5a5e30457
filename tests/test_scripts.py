"""End to end: ``scripts/demo``, ``scripts/cluster.py up/status/down`` and ``python -m hermes shell``.

Everything runs as real subprocesses, as a user would run it. Each test marks
the processes it starts with a unique environment variable (children inherit
it), so "nothing is left running" is checked exactly: no process on the
machine carries the mark afterwards. The launched cluster uses a tmp state
folder, a free service port and its own ``HERMES_COOKIE``, so it never meets a
user's real cluster; its fixture runs ``down`` and then SIGKILLs whatever pid
of the state file is still alive, also when a test fails.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from hermes._app import full_name
from hermes.pg._service import free_port

from _cluster import poll

ROOT = Path(__file__).resolve().parents[1]
MARK = "HERMES_TEST_PROCESS_MARK"
PROMPT = re.compile(r"^(?:(?:>>>|\.\.\.) ?)+")


# -- processes --------------------------------------------------------------------------


def marked_env(mark: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, MARK: mark, **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _state(pid: int) -> str | None:
    """The process state letter (``Z`` for a zombie), ``None`` if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rpartition(")")[2].split()[0]


def running(pid: int) -> bool:
    return _state(pid) not in (None, "Z")


def marked_processes(mark: str) -> list[int]:
    """Live processes whose environment carries ``MARK=mark``."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        if needle in environ.split(b"\0") and running(int(entry.name)):
            found.append(int(entry.name))
    return found


def kill_marked(mark: str) -> None:
    for pid in marked_processes(mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def no_marked_process_left(mark: str, timeout: float = 10.0) -> None:
    poll(lambda: not marked_processes(mark), timeout=timeout)


@pytest.fixture
def mark() -> Iterator[str]:
    """A fresh mark for this test's processes; whatever still carries it at the end is killed."""
    value = secrets.token_hex(8)
    try:
        yield value
    finally:
        kill_marked(value)


def strip_prompts(text: str) -> list[str]:
    """The shell's output lines without the ``>>> ``/``... `` prompts, empty lines dropped."""
    lines = (PROMPT.sub("", line) for line in text.splitlines())
    return [line for line in lines if line.strip()]


# -- scripts/demo -----------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_demo_tells_the_seed_story_and_leaves_nothing(mark):
    result = subprocess.run([str(ROOT / "scripts" / "demo")], env=marked_env(mark), capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    clients = {}  # (node, topic) -> the clients' pids as printed
    for node, count, topic, pids in re.findall(r"^  (\w+): (\d+) client\(s\) on '([\w.]+)': (.*)$", out, re.M):
        clients[(node, topic)] = pids.split(", ")
        assert len(clients[(node, topic)]) == int(count)
    assert {k: len(v) for k, v in clients.items()} == {
        ("alice", "user.created"): 1, ("alice", "user.updated"): 1, ("bob", "user.created"): 5,
        ("carol", "user.updated"): 2}

    created, updated = out.split("alice> publish('user.created', {'name': 'Jade'})")[1].split(
        "bob> publish('user.updated', {'id': 1, 'name': 'Jadyline'})")
    updated = updated.split("\nDone:")[0]

    def section(node: str, topic: str, message: str) -> list[str]:
        return [f"  [{node}] {pid} received: {message}" for pid in clients.get((node, topic), [])]

    jade = "{'name': 'Jade'}"
    jadyline = "{'id': 1, 'name': 'Jadyline'}"
    assert created.strip("\n").splitlines() == [
        *section("alice", "user.created", jade), *section("bob", "user.created", jade),
        "  [carol] ** nothing new **"]
    assert updated.strip("\n").splitlines() == [
        *section("alice", "user.updated", jadyline), "  [bob] ** nothing new **",
        *section("carol", "user.updated", jadyline)]
    assert "Done: every client got exactly what it subscribed to; all nodes stopped." in out
    no_marked_process_left(mark)


# -- scripts/cluster.py -----------------------------------------------------------------


class Launched:
    """A cluster started by ``scripts/cluster.py up`` in a tmp state folder."""

    def __init__(self, tmp: Path, mark: str, names: list[str]) -> None:
        self.state = tmp / "state"
        self.port = free_port()
        self.mark = mark
        self.env = marked_env(mark, HERMES_COOKIE=secrets.token_urlsafe(16), PYTHONUNBUFFERED="1")
        self.names = [full_name(n) for n in names]

    def script(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "cluster.py"), "--state", str(self.state),
                               *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def shell(self, lines: list[str], *options: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hermes", "shell", *options,
                               "--cluster", f"127.0.0.1:{self.port}"], input="\n".join(lines) + "\n",
                              env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def pids(self) -> list[int]:
        path = self.state / "cluster.json"
        if not path.exists():
            return []
        data = json.loads(path.read_text())
        return [*data["pids"].values(), *([data["service_pid"]] if data.get("service_pid") else [])]

    def kill_all(self) -> None:
        for pid in self.pids():
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        kill_marked(self.mark)


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    cluster = Launched(tmp_path_factory.mktemp("launched"), secrets.token_hex(8), ["a", "b"])
    try:
        up = cluster.script("up", "a", "b", "--port", str(cluster.port))
        assert up.returncode == 0, up.stdout + up.stderr
        yield cluster
    finally:
        try:
            cluster.script("down")
        finally:
            cluster.kill_all()


@pytest.mark.timeout(60)
def test_cluster_status_lists_nodes_and_the_pubsub_group(launched):
    a, b = launched.names
    pids = launched.pids()
    assert len(pids) == 3 and all(running(p) for p in pids)  # two nodes and the service
    result = launched.script("status", timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    node_pids = json.loads((launched.state / "cluster.json").read_text())["pids"]
    assert result.stdout.splitlines() == [
        f"pg service 127.0.0.1:{launched.port}: running",
        f"{a}: running (pid {node_pids[a]})", f"  connected to: {b}", "  group ('hermes', 'hermes.pubsub'): 2 member(s)",
        f"{b}: running (pid {node_pids[b]})", f"  connected to: {a}", "  group ('hermes', 'hermes.pubsub'): 2 member(s)"]


@pytest.mark.timeout(60)
def test_shell_joins_the_cluster_and_pubsub_works_there(launched):
    a, b = launched.names
    me = full_name("shelltest")
    group = "('hermes', 'hermes.pubsub')"
    result = launched.shell([
        "pid = self()",
        "print(pid.node)",
        'subscribe("t")',
        'publish("t", 42)',
        "flush()",
        'publish("t", {"n": 1})',
        "await receive(timeout=1)",
        "flush()",
        "import asyncio",
        "for _ in range(1000):",  # until a's PGServer is known here and ours there
        f"    if len(hermes.pg.get_members({group})) == 3 and "
        f"len(await rpc({a!r}, hermes.pg.get_members, {group})) == 3: break",
        "    await asyncio.sleep(0.01)",
        "",
        f"await rpc({a!r}, publish, 't', 'from a')",
        "await receive(timeout=5)",
        "sorted(nodes())",
        "1/0",
        "print('still here')",
    ], "--name", "shelltest")
    assert result.returncode == 0, result.stdout + result.stderr
    assert strip_prompts(result.stdout) == [
        me, "Shell got 42", "{'n': 1}", "'from a'", repr(sorted([a, b])), "still here"]
    assert "ZeroDivisionError" in result.stderr  # shown as a console does; the shell lives on


@pytest.mark.timeout(60)
def test_remote_shell_attaches_to_a_running_node(launched):
    a, _ = launched.names
    result = launched.shell([
        "node()",
        "self().node",
        'subscribe("r")',
        'publish("r", "hello")',
        "flush()",
        'len(subscribers("r"))',
    ], "--remote", a)
    assert result.returncode == 0, result.stdout + result.stderr
    assert strip_prompts(result.stdout) == [repr(a), repr(a), "Shell got 'hello'", "1"]
    # the shell's actor on a went with the shell, and its subscription with it
    poll(lambda: "topic 'r'" not in launched.script("status", timeout=30).stdout, timeout=15)


@pytest.mark.timeout(90)
def test_cluster_up_status_down_leaves_nothing(tmp_path, mark):
    cluster = Launched(tmp_path, mark, ["c", "d"])
    try:
        up = cluster.script("up", "c", "d", "--port", str(cluster.port))
        assert up.returncode == 0, up.stdout + up.stderr
        assert up.stdout.startswith(f"cluster up: {', '.join(cluster.names)}")
        again = cluster.script("up", "c", "--port", str(cluster.port))
        assert again.returncode == 0 and f"{cluster.names[0]} is already running" in again.stdout
        status = cluster.script("status")
        assert status.returncode == 0 and cluster.names[0] in status.stdout and cluster.names[1] in status.stdout
        pids = cluster.pids()
        assert len(pids) == 3 and all(running(p) for p in pids)
        down = cluster.script("down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert down.stdout.strip() == "cluster down: 3 process(es) stopped"
        assert [p for p in pids if running(p)] == []
        no_marked_process_left(mark)
        assert not (cluster.state / "cluster.json").exists()
        after = cluster.script("status")
        assert after.returncode == 1 and "the cluster is down" in after.stdout
        assert cluster.script("down").stdout.strip() == "no cluster state: nothing to stop"
    finally:
        cluster.kill_all()

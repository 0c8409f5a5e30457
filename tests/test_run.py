"""``hermes.run``: the node's first actor, its result, its name, clean shutdown on SIGTERM;
and the error types of the contract."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import hermes
from conftest import run_node

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent


def test_run_returns_what_main_returns():
    async def main():
        return {"answer": 42}

    assert hermes.run(main, name="ret") == {"answer": 42}


def test_run_passes_args_to_main():
    async def main(a, b):
        return a + b

    assert hermes.run(main, 2, 3, name="args") == 5


def test_run_reraises_the_exception_of_main():
    error = LookupError("main failed")

    async def main():
        raise error

    with pytest.raises(LookupError) as info:
        hermes.run(main, name="raises")
    assert info.value is error


def test_run_can_run_nodes_one_after_another():
    async def main(i):
        return i, hermes.node()

    assert [run_node(main, i, name=f"seq{i}")[0] for i in range(3)] == [0, 1, 2]


def test_node_is_name_at_host_and_pids_carry_it():
    async def main():
        return hermes.node(), hermes.self().node

    name, pid_node = run_node(main, name="alpha")
    node_name, at, host = name.partition("@")
    assert (node_name, at) == ("alpha", "@")
    assert host and "@" not in host
    assert pid_node == name


def test_main_is_an_actor():
    async def main():
        hermes.send(hermes.self(), "to myself")
        return await hermes.receive(timeout=5)

    assert run_node(main) == "to myself"


class Recorder(hermes.Actor):
    """Appends ``(pid, reason)`` to a shared list from ``terminate``."""

    def __init__(self, record: list):
        self.record = record

    def terminate(self, reason):
        self.record.append((hermes.self(), reason))


def test_when_main_returns_live_actors_are_stopped_with_terminate():
    record: list = []

    async def main():
        return [hermes.spawn(Recorder, record) for _ in range(5)]

    pids = run_node(main)
    assert sorted(record) == sorted((pid, "shutdown") for pid in pids)


@pytest.mark.timeout(60)
def test_node_shutdown_runs_terminate_of_many_actors_promptly():
    n = 5_000
    record: list = []

    async def main():
        for _ in range(n):
            hermes.spawn(Recorder, record)

    start = time.monotonic()
    run_node(main)
    elapsed = time.monotonic() - start
    assert len(record) == n
    assert elapsed < 5


# -- errors -----------------------------------------------------------------------------


def test_error_types_are_importable_and_related():
    assert issubclass(hermes.ActorExited, hermes.HermesError)
    assert issubclass(hermes.SerializationError, hermes.HermesError)
    assert issubclass(hermes.SerializationError, TypeError)
    assert issubclass(hermes.HermesError, Exception)


def test_actor_exited_carries_pid_and_reason():
    async def main():
        return hermes.self()

    pid = run_node(main)
    error = hermes.ActorExited(pid, "noproc")
    assert (error.pid, error.reason) == (pid, "noproc")


# -- SIGTERM / SIGINT ----------------------------------------------------------------------------

NODE_SCRIPT = textwrap.dedent(
    """
    import hermes

    class Worker(hermes.Actor):
        def __init__(self, name, report):
            self.name = name
            hermes.send(report, ("up", name))

        def terminate(self, reason):
            print("terminate", self.name, flush=True)

    async def main():
        me = hermes.self()
        hermes.spawn(Worker, "solo", me)
        hermes.spawn(hermes.Supervisor, [(Worker, "child1", me), (Worker, "child2", me), (Worker, "child3", me)])
        for _ in range(4):
            await hermes.receive(match=lambda m: m[0] == "up", timeout=10)
        print("ready", flush=True)
        await hermes.receive()  # until the node is stopped

    try:
        hermes.run(main, name="sigterm")
    finally:
        print("run returned", flush=True)
    """
)


def read_line(proc: subprocess.Popen, deadline: float) -> str:
    """One line of the child's stdout, or ``AssertionError`` at the deadline."""
    remaining = deadline - time.monotonic()
    ready, _, _ = select.select([proc.stdout], [], [], max(remaining, 0))
    if not ready:
        raise AssertionError("no output from the node process before the deadline")
    return proc.stdout.readline()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_node_cleanly(tmp_path, signum):
    script = tmp_path / "node.py"
    script.write_text(NODE_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    try:
        line = read_line(proc, time.monotonic() + 15)
        if line != "ready\n":
            proc.kill()
            _, stderr = proc.communicate()
            pytest.fail(f"the node did not get ready: {line!r}\n{stderr}")
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    lines = stdout.splitlines()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert lines[-1] == "run returned"
    terminated = [line.split()[1] for line in lines if line.startswith("terminate ")]
    assert sorted(terminated) == ["child1", "child2", "child3", "solo"]
    children = [name for name in terminated if name.startswith("child")]
    assert children == ["child3", "child2", "child1"]  # the supervisor stops them in reverse order


def test_run_raises_actor_exited_when_main_is_ended_by_an_exit_signal():
    async def main():
        hermes.exit(hermes.self(), "boom")
        await hermes.receive()

    with pytest.raises(hermes.ActorExited) as info:
        hermes.run(main, name="exited")
    assert info.value.reason == "boom"

"""LocalCluster nodes forked from a zygote (``hermes.cluster._zygote``): the same
contract as spawned nodes — own session, own log, the driver's sys.path and
environment, kill/start/stop, nothing left behind — and the spawn fallback."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import hermes
from hermes.cluster import _local, _zygote

HERE = str(Path(__file__).resolve().parent)
pytestmark = pytest.mark.skipif(not _zygote.available(), reason="the zygote needs Linux (fork, pidfd)")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def poll(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _identity() -> tuple[int, int, int, str | None]:
    print("hello from the node's stdout", flush=True)
    return os.getpid(), os.getsid(0), os.getppid(), os.environ.get("HERMES_ZYGOTE_TEST")


def test_nodes_are_forked_with_their_own_session_log_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HERMES_ZYGOTE_TEST", "from-the-driver")
    with hermes.LocalCluster(["za", "zb"], log_dir=str(tmp_path)) as c:
        assert c._zygote is not None
        zygote_pid = c._zygote.proc.pid
        for name in ("za", "zb"):
            proc = c._nodes[_local.full_name(name)].proc
            assert isinstance(proc, _zygote.ForkedProcess)
            pid, sid, ppid, env = c.rpc(name, _identity)
            assert (pid, sid, ppid, env) == (proc.pid, proc.pid, zygote_pid, "from-the-driver")
            assert "hello from the node's stdout" in c.output(name)
        # the cookie reached the nodes by the environment, never by argv
        assert c.cookie.encode() not in Path(f"/proc/{c._nodes[_local.full_name('za')].proc.pid}/cmdline").read_bytes()


def test_the_drivers_sys_path_reaches_a_forked_node(tmp_path):
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    (module_dir / "zygote_probe_mod.py").write_text("def answer():\n    return 42\n")
    sys.path.insert(0, str(module_dir))
    try:
        import zygote_probe_mod

        with hermes.LocalCluster(["zp"], log_dir=str(tmp_path / "logs")) as c:
            assert c.rpc("zp", zygote_probe_mod.answer) == 42
    finally:
        sys.path.remove(str(module_dir))
        sys.modules.pop("zygote_probe_mod", None)


def test_kill_start_and_stop_leave_nothing_behind(tmp_path):
    c = hermes.LocalCluster(["k1", "k2"], log_dir=str(tmp_path))
    try:
        zygote = c._zygote.proc
        first = c._nodes[_local.full_name("k1")].proc
        c.kill("k1")
        assert first.poll() == -signal.SIGKILL  # the zygote reported the exit status
        c.start("k1")
        second = c._nodes[_local.full_name("k1")].proc
        assert isinstance(second, _zygote.ForkedProcess) and second.pid != first.pid
        assert c.rpc("k1", os.getpid) == second.pid
        procs = [n.proc for n in c._nodes.values()]
    finally:
        c.stop()
    assert [p.poll() for p in procs] == [0, 0]  # a clean stop: EOF on the lifeline, exit code 0
    assert zygote.poll() is not None
    assert not any(alive(p.pid) for p in procs)


def test_a_changed_environment_or_no_zygote_spawns_instead(tmp_path, monkeypatch):
    with hermes.LocalCluster(["e1"], log_dir=str(tmp_path / "a")) as c:
        monkeypatch.setenv("HERMES_ZYGOTE_TEST", "set-after-the-start")
        c.start("e2")  # the zygote imported with the old environment: this one is spawned
        proc = c._nodes[_local.full_name("e2")].proc
        assert isinstance(proc, subprocess.Popen)
        assert c.rpc("e2", _identity)[3] == "set-after-the-start"
        assert c.rpc("e1", _identity)[3] is None
    monkeypatch.setattr(_zygote, "available", lambda: False)
    with hermes.LocalCluster(["s1", "s2"], log_dir=str(tmp_path / "b")) as c:
        assert c._zygote is None
        assert all(isinstance(n.proc, subprocess.Popen) for n in c._nodes.values())
        assert sorted(c.rpc("s1", hermes.nodes)) == [_local.full_name("s2")]


DRIVER = textwrap.dedent("""
    import os, signal, sys
    import hermes
    c = hermes.LocalCluster(["d1", "d2"], log_dir=sys.argv[1])
    pids = [n.proc.pid for n in c._nodes.values()] + [c._zygote.proc.pid, c._service.pid]
    print(" ".join(map(str, pids)), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # a crash: no stop(), no atexit
""")


@pytest.mark.timeout(90)
def test_a_killed_driver_leaves_no_node_and_no_zygote(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(Path(HERE).parent), HERE))}
    driver = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path)], env=env, capture_output=True,
                            timeout=60)
    assert driver.returncode == -signal.SIGKILL, driver.stderr.decode()[-2000:]
    pids = [int(p) for p in driver.stdout.split()]
    assert len(pids) == 4
    try:
        assert poll(lambda: not any(alive(pid) for pid in pids), timeout=20), [p for p in pids if alive(p)]
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

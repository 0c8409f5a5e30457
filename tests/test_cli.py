"""The command line's error boundary: one line naming cause and fix, exit code 1,
the traceback only under ``-v``; and the reasons behind a failed connect.

Every command runs as a real process with its own HOME (so ~/.hermes is private)
and on a private port: no test touches a real ~/.hermes or port 4370.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

import hermes
from hermes._app import full_name
from hermes.pg.service import free_port

TIMEOUT = 90


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def hermes_cli(home: Path, *args: str, cookie: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HERMES_COOKIE"}
    env["HOME"] = str(home)
    if cookie is not None:
        env["HERMES_COOKIE"] = cookie
    return subprocess.run([sys.executable, "-m", "hermes", *args], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def assert_one_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[0] == expected, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # that line only
    assert "Traceback" not in result.stderr


@pytest.fixture
def service(home: Path) -> Iterator[tuple[int, Path]]:
    """A pg service (cookie "right") on a private port; yields (port, its log)."""
    port = free_port()
    log = home / "service.log"
    env = {**os.environ, "HOME": str(home), "HERMES_COOKIE": "right"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hermes", "service", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "listening" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield port, log
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.timeout(120)
def test_a_wrong_cookie_is_one_line_and_the_service_logs_the_failure(home: Path, service: tuple[int, Path]) -> None:
    port, log = service
    result = hermes_cli(home, "node", "--name", "n1", "--cluster", f"127.0.0.1:{port}", cookie="wrong")
    assert_one_line(result, f"hermes: the pg service at 127.0.0.1:{port} rejected this node's cookie: "
                            "use the same HERMES_COOKIE or ~/.hermes/cookie as the cluster")
    deadline = time.monotonic() + 10
    while "authentication failed" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    lines = [line for line in log.read_text().splitlines() if "authentication failed" in line]
    assert len(lines) == 1
    assert "WARNING" in lines[0] and "refused a client at 127.0.0.1:" in lines[0]
    assert "cookie authentication failed" in lines[0]


@pytest.mark.timeout(120)
def test_verbose_adds_the_traceback(home: Path, service: tuple[int, Path]) -> None:
    port, _ = service
    result = hermes_cli(home, "-v", "node", "--name", "n1", "--cluster", f"127.0.0.1:{port}", cookie="wrong")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "CookieRejected" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("hermes: the pg service at")


@pytest.mark.timeout(120)
def test_a_port_in_use_is_one_line(home: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = hermes_cli(home, "node", "--name", "n1", "--port", str(port), cookie="c")
        assert_one_line(result, f"hermes: cannot listen on 127.0.0.1:{port}: address already in use: "
                                "choose another port (0: any free one) or stop the process that holds it")
        result = hermes_cli(home, "service", "--port", str(port), cookie="c")
        assert_one_line(result, f"hermes: cannot serve on 127.0.0.1:{port}: address already in use: "
                                "choose another --port or stop the process that holds it")


@pytest.mark.timeout(120)
def test_a_refused_non_loopback_start_is_one_line_and_writes_no_cookie(home: Path) -> None:
    result = hermes_cli(home, "node", "--name", "n1", "--host", "0.0.0.0")
    assert_one_line(result, "hermes: refusing to listen on 0.0.0.0 with a cookie made up just now: other "
                            "machines cannot know it. Pass cookie=, set HERMES_COOKIE or write ~/.hermes/cookie.")
    result = hermes_cli(home, "service", "--host", "0.0.0.0", "--port", str(free_port()))
    assert_one_line(result, "hermes: refusing to serve on 0.0.0.0 with a cookie made up just now: "
                            "pass --cookie, set HERMES_COOKIE or write ~/.hermes/cookie")
    assert not (home / ".hermes").exists()  # running it again would not start it with a made-up cookie


# -- reasons for a failed connect, and values that cannot be sent -----------------------------


@pytest.fixture
def warnings_of(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    caplog.set_level(logging.WARNING, logger="hermes.mesh")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "hermes.mesh"]


def test_a_failed_connect_logs_its_reason(warnings_of: Callable[[], list[str]]) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused_port = closed.getsockname()[1]

    async def main() -> list[bool]:
        from hermes.mesh import of
        from hermes.runtime import lowlevel

        dist = of(lowlevel.current_node())
        return [await hermes.connect("bob@zeus"),
                await dist.connect_address(("no-such-host.invalid", 4370)),
                await dist.connect_address(("127.0.0.1", refused_port))]

    assert hermes.run(main, name="probe", cookie="c") == [False, False, False]
    assert warnings_of() == [
        "cannot connect to bob@zeus: unknown node (no address known (a standalone node: use peers))",
        "cannot connect to no-such-host.invalid:4370: unknown host 'no-such-host.invalid'",
        f"cannot connect to 127.0.0.1:{refused_port}: connection refused at 127.0.0.1:{refused_port} "
        "(no node listens there)",
    ]


async def _send_a_lock_to(node: str) -> tuple[str, str, list[str]]:
    import traceback

    peer = await hermes.rpc(node, hermes.self)
    try:
        hermes.send(peer, ("hello", threading.Lock()))
    except hermes.SerializationError as exc:
        return type(exc).__name__, str(exc), traceback.format_exception(exc)
    return "sent", "", []


def test_an_unpicklable_value_names_the_users_type_once(hermes_cluster: Callable[..., hermes.LocalCluster]) -> None:
    c = hermes_cluster(["a", "b"])
    kind, message, formatted = c.rpc("a", _send_a_lock_to, c.nodes[1])
    assert kind == "SerializationError"
    assert message.startswith("cannot serialize a value of type 'tuple': it contains a value of type "
                              "'_thread.lock'")
    text = "".join(formatted)
    assert text.count("cannot serialize") == 1, text  # not the frame's, then the message's
    assert "During handling" not in text and len(text.splitlines()) < 40, text


@pytest.mark.timeout(120)
def test_ctrl_c_during_the_demo_startup_is_one_line() -> None:
    import signal

    root = Path(__file__).resolve().parents[1]
    demo = subprocess.Popen([str(root / "scripts" / "demo")], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert demo.stdout is not None
        assert demo.stdout.readline().startswith("Starting a local cluster")  # LocalCluster starting
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 130, err
    assert err == "demo: interrupted; every node is stopped\n"


@pytest.mark.timeout(120)
def test_a_remote_shell_that_cannot_attach_says_why(home: Path, service: tuple[int, Path]) -> None:
    port, _ = service
    ghost = full_name("ghost")
    result = hermes_cli(home, "shell", "--remote", ghost, "--cluster", f"127.0.0.1:{port}", cookie="right")
    assert_one_line(result, f"shell: cannot reach {ghost}: unknown node (the pg service does not list it)")
    result = hermes_cli(home, "shell", "--remote", ghost, "--cluster", f"127.0.0.1:{port}", cookie="wrong")
    assert_one_line(result, f"hermes: the pg service at 127.0.0.1:{port} rejected this node's cookie: "
                            "use the same HERMES_COOKIE or ~/.hermes/cookie as the cluster")

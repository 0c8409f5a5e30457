"""The interactive shell driven through a real pseudo-terminal (stdlib ``pty``):
Ctrl-C cancels the running chunk and the next message goes to the next
``receive`` (locally and with ``--remote``); readline recalls the last line and
the history file keeps it.

Every process runs with its own HOME and history file; every read has a deadline.
"""
from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from hermes._app import full_name
from hermes.pg.service import free_port

ROOT = Path(__file__).resolve().parents[1]
PROMPT = b">>> "
UP = b"\x1b[A"


class Terminal:
    """A process on a pty: ``send`` keys, ``expect`` output (with a deadline)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: a session leader whose controlling terminal is the pty
            try:
                os.chdir(ROOT)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd, self.seen = pid, fd, b""
        self.exit_code: int | None = None
        self.closed = False

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def expect(self, text: bytes, timeout: float = 60) -> bytes:
        """Output up to and including ``text``; what follows stays for the next expect."""
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not seen within {timeout}s; output: {self.seen[-2000:]!r}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                assert chunk, f"the shell ended before {text!r}; output: {self.seen[-2000:]!r}"
                self.seen += chunk
        before, _, self.seen = self.seen.partition(text)
        return before + text

    def close(self) -> int | None:
        """Its exit code once it ends (within a deadline), else SIGKILL and None."""
        if self.closed:
            return self.exit_code
        self.closed = True
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                self.exit_code = os.waitstatus_to_exitcode(status)
                return self.exit_code
            try:
                os.read(self.fd, 65536) if select.select([self.fd], [], [], 0.05)[0] else None
            except OSError:
                pass
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.fd)
        return None


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {**os.environ, "HOME": str(home), "HERMES_COOKIE": "shell-test", "TERM": "xterm",
            "HERMES_SHELL_HISTORY": str(tmp_path / "history")}


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    try:
        yield opened
    finally:
        for terminal in opened:
            terminal.close()


def _interrupt_receive_then_receive_next(shell: Terminal, flag: Path) -> None:
    shell.expect(PROMPT)
    shell.send(f"open({str(flag)!r}, 'w').close(); await receive()\r".encode())
    deadline = time.monotonic() + 60
    while not flag.exists():  # the chunk is running, awaiting receive()
        assert time.monotonic() < deadline, shell.seen
        time.sleep(0.02)
    shell.send(b"\x03")  # Ctrl-C
    shell.expect(b"KeyboardInterrupt")
    shell.expect(PROMPT)
    shell.send(b'send(self(), "m1")\r')
    shell.expect(PROMPT)
    shell.send(b"await receive(timeout=10)\r")
    assert b"'m1'" in shell.expect(PROMPT)  # not swallowed by the cancelled receive
    shell.send(b"1 + 41\r")
    assert b"42" in shell.expect(PROMPT)


@pytest.mark.timeout(120)
def test_ctrl_c_cancels_the_chunk_and_history_recalls_the_last_line(env: dict[str, str], tmp_path: Path,
                                                                   terminals: list[Terminal]) -> None:
    shell = Terminal([sys.executable, "-m", "hermes", "shell", "--name", "tty"], env)
    terminals.append(shell)
    _interrupt_receive_then_receive_next(shell, tmp_path / "running")
    shell.send(b"40 + 3\r")
    assert b"43" in shell.expect(PROMPT)
    shell.send(UP + b"\r")  # readline: the last line again
    assert b"43" in shell.expect(PROMPT)
    shell.send(b"\x04")  # Ctrl-D: the shell ends and saves its history
    assert shell.close() == 0
    assert Path(env["HERMES_SHELL_HISTORY"]).read_text().splitlines()[-1] == "40 + 3"

    again = Terminal([sys.executable, "-m", "hermes", "shell", "--name", "tty2"], env)
    terminals.append(again)
    again.expect(PROMPT)
    again.send(UP + b"\r")  # recalled from the history file
    assert b"43" in again.expect(PROMPT)


def _remote_shell(argv: list[str], env: dict[str, str], terminals: list[Terminal], timeout: float = 60) -> Terminal:
    """A remote shell once the target node is registered (until then it ends, saying it cannot reach it)."""
    deadline = time.monotonic() + timeout
    while True:
        shell = Terminal(argv, env)
        terminals.append(shell)
        try:
            shell.expect(b"Hermes shell on", timeout=max(1.0, deadline - time.monotonic()))
            return shell
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
            shell.close()


@pytest.mark.timeout(180)
def test_ctrl_c_in_a_remote_shell_cancels_the_chunk_there(env: dict[str, str], tmp_path: Path,
                                                          terminals: list[Terminal]) -> None:
    port = free_port()
    cluster = f"127.0.0.1:{port}"
    service = subprocess.Popen([sys.executable, "-m", "hermes", "service", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = None
    try:
        node = subprocess.Popen([sys.executable, "-m", "hermes", "node", "--name", "target", "--cluster", cluster],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        shell = _remote_shell([sys.executable, "-m", "hermes", "shell", "--remote", full_name("target"),
                               "--cluster", cluster], env, terminals)
        _interrupt_receive_then_receive_next(shell, tmp_path / "running-remote")
        shell.send(b"node()\r")
        assert repr(full_name("target")).encode() in shell.expect(PROMPT)
    finally:
        for proc in (node, service):
            if proc is not None:
                proc.kill()
                proc.wait(10)


@pytest.mark.timeout(120)
def test_a_shell_joins_a_static_peers_cluster_with_peers(env: dict[str, str]) -> None:
    port = free_port()
    node = subprocess.Popen([sys.executable, "-m", "hermes", "node", "--name", "pa", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lines = ["import asyncio", "for _ in range(2000):", "    if nodes(): break",
                 "    await asyncio.sleep(0.02)", "", "nodes()"]
        result = subprocess.run([sys.executable, "-m", "hermes", "shell", "--name", "pb", "--peers",
                                 f"127.0.0.1:{port}"], input="\n".join(lines) + "\n", env=env, capture_output=True,
                                text=True, timeout=90, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        assert repr([full_name("pa")]) in result.stdout, result.stdout + result.stderr
    finally:
        node.kill()
        node.wait(10)


@pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
def test_the_shell_runs_on_the_loop_option_loop_names(env: dict[str, str], choice: str) -> None:
    if choice == "uvloop":
        pytest.importorskip("uvloop")
    lines = ["import asyncio", "type(asyncio.get_running_loop()).__module__.split('.')[0]"]
    result = subprocess.run([sys.executable, "-m", "hermes", "shell", "--name", f"loop-{choice}", "--loop", choice],
                            input="\n".join(lines) + "\n", env=env, capture_output=True, text=True, timeout=90,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert repr(choice) in result.stdout, result.stdout + result.stderr


def test_a_misspelt_shell_option_is_one_line_before_the_node_starts(env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "hermes", "shell", "--name", "loop-bad", "--loop", "trio"],
                            input="", env=env, capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert result.returncode != 0
    assert "loop" in result.stderr and "Traceback" not in result.stderr, result.stderr

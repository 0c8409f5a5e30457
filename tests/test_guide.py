"""docs/guide.md's shell transcripts, replayed in real shells: the guide cannot drift from the shell.

Each ``$ python -m hermes shell --name X`` line of a transcript starts a session
(a shell process on a pipe); ``# X`` lines switch to it; ``>>> ``/``... `` lines
are typed into it, and the other lines are what it must print, in order (output
of other actors, such as a client printing a published message, included).
Host names are normalised (``zeus`` in the guide); pids are compared as they
are. ``--cluster local`` becomes a private service, never the real 4370, and
every process runs with its own HOME. The section "The same cluster in the
background" (scripts/cluster.py, pids elided) is where the replay stops.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hermes._app import default_host
from hermes.pg.service import free_port

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide.md"
STOP_AT = "### The same cluster in the background"
PROMPTS = re.compile(r"^(?:(?:>>>|\.\.\.) ?)+")
HOST = default_host()
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


class Session:
    """One shell process; ``lines()`` is what it printed, prompts stripped, host as ``zeus``."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.out = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.typed = 0
        self.wait_prompt()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(65536):
            self.out += chunk

    def prompts(self) -> int:
        return self.out.count(b">>> ") + self.out.count(b"... ")

    def wait_prompt(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.prompts() < self.typed + 1:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.out.decode(errors="replace")
            time.sleep(0.01)

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.replace("@zeus", f"@{HOST}").encode() + b"\n")
        self.proc.stdin.flush()
        self.typed += 1
        self.wait_prompt()

    @property
    def name(self) -> str:
        return f"{self.argv[self.argv.index('--name') + 1]}@{HOST}"

    def text(self) -> str:
        return self.out.decode(errors="replace")

    def lines(self) -> list[str]:
        text = self.out.decode(errors="replace").replace(f"@{HOST}", "@zeus")
        lines = (PROMPTS.sub("", line) for line in text.splitlines())
        return [line for line in lines if line.strip() and not line.startswith("Hermes shell on")
                and not LOG_LINE.match(line)]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def transcripts() -> list[list[str]]:
    """The guide's shell transcripts (code blocks without a language), up to ``STOP_AT``."""
    blocks: list[list[str]] = []
    block: list[str] | None = None
    language = ""
    for line in GUIDE.read_text().split(STOP_AT)[0].splitlines():
        if not line.startswith("```"):
            if block is not None:
                block.append(line)
        elif block is None:
            block, language = [], line[3:].strip()
        else:
            if not language:
                blocks.append(block)
            block = None
    return blocks


@pytest.mark.timeout(300)
def test_the_guide_transcripts_replay_in_real_shells(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "HERMES_COOKIE": "guide", "PYTHONUNBUFFERED": "1"}
    port = free_port()
    service = subprocess.Popen([sys.executable, "-m", "hermes", "service", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sessions: dict[str, Session] = {}
    expected: dict[str, list[str]] = {}
    try:
        current = None  # a block without a "# name" line goes on in the last session
        for block in transcripts():
            for line in block:
                if line.startswith("$ python -m hermes shell"):
                    args = line.split()[5:]
                    name = args[args.index("--name") + 1]
                    if name in sessions:  # a new shell of that name: the old one ends first
                        sessions.pop(name).close()
                    args = [a if a != "local" else f"127.0.0.1:{port}" for a in args]
                    others = [s for n, s in sessions.items() if n != name and "--cluster" in s.argv]
                    before = [s.text().count(f"connected to {name}@{HOST}") for s in others]
                    sessions[name] = Session([sys.executable, "-m", "hermes", "-v", "shell", *args], env)
                    if "--cluster" in args:  # a person types slower than the mesh forms
                        _wait_meshed(sessions[name], f"{name}@{HOST}", others, before)
                    expected[name] = []
                    current = name
                elif line.startswith("# "):
                    current = line[2:].strip() if not line.startswith("# Terminal") else None
                elif line.startswith((">>> ", "... ")) or line in (">>>", "..."):
                    if line != ">>>":  # a bare prompt: nothing typed
                        assert current is not None, line
                        _check(sessions[current], expected[current])  # what came before, first
                        sessions[current].type(line[4:])
                elif line.strip() and current is not None and not line.startswith("Hermes shell on"):
                    if line.strip() != "** nothing new **":
                        expected[current].append(line)
            for name, session in sessions.items():
                _check(session, expected[name])
    finally:
        for session in sessions.values():
            session.close()
        service.kill()
        service.wait(10)


def _wait_meshed(new: Session, name: str, others: list[Session], before: list[int], timeout: float = 60) -> None:
    """Until the new shell's node and every other cluster shell's node logged their connection
    (-v: the log lines go to the output, where ``lines()`` leaves them out)."""
    deadline = time.monotonic() + timeout
    while not (all(f"connected to {o.name}" in new.text() for o in others) and
               all(o.text().count(f"connected to {name}") > count for o, count in zip(others, before))):
        assert time.monotonic() < deadline, f"{name} did not connect to every other shell: {new.text()}"
        time.sleep(0.05)


def _check(session: Session, expected: list[str], timeout: float = 30) -> None:
    """What the session printed so far becomes ``expected`` (other actors print late)."""
    deadline = time.monotonic() + timeout
    while session.lines()[: len(expected)] != expected or len(session.lines()) > len(expected):
        if time.monotonic() > deadline:
            assert session.lines() == expected
        time.sleep(0.02)

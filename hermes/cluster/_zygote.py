"""Node processes forked from one process that imported Hermes once (a zygote).

Why: a node process spent ~0.4 s of CPU starting the interpreter and importing
Hermes before doing anything; 80 of them started at once on 2 cores took most
of the 26 s an 80-node ``LocalCluster`` needed. The zygote imports once, then
forks one child per node on request (as ``multiprocessing``'s forkserver does),
so a node costs a fork.

Rules:
- the zygote forks only while it is a single thread with no event loop (it
  never starts either; checked before each fork, refused otherwise), and the
  child resets what it inherited: a new session (``killpg`` reaches the node
  and nothing else), default signals, fds 0-2 (stdin = the node's lifeline,
  stdout/stderr = its log), the environment the driver sent;
- the child runs exactly what ``python -m hermes node ARGS`` runs (``cli.main``)
  and leaves with ``os._exit``: it never returns into the zygote's loop;
- the driver gets each child's pidfd (race-free, even if the child dies at
  once) and its exit code from the zygote, which reaps its children;
- the zygote exits when the driver closes its socket or dies (EOF); its
  children do not depend on it (their lifeline is their own stdin).

Where fork, pidfd or fd passing are missing (not Linux), or the zygote fails,
``Zygote.fork`` raises ``ZygoteUnavailable`` and the driver spawns instead.

Driver <-> zygote: one ``AF_UNIX`` ``SOCK_SEQPACKET`` socket pair (a message
is a pickle; fds travel with it). Requests: ``(argv, env, log_path)`` with the
node's stdin read end and (``LocalCluster``) its control write end. Replies: ``("forked", pid)`` with
its pidfd, or ``("error", text)``; and, at any time, ``("exit", pid, code)``.
"""
from __future__ import annotations

import gc
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any

__all__ = ["ForkedProcess", "Zygote", "ZygoteUnavailable", "available"]

MESSAGE_MAX = 1 << 20
REPLY_TIMEOUT = 30.0   # bound on one fork request (the zygote may still be importing)


class ZygoteUnavailable(Exception):
    """This process cannot fork nodes through a zygote; spawn them."""


def available() -> bool:
    return (sys.platform == "linux" and hasattr(os, "fork") and hasattr(os, "pidfd_open")
            and hasattr(socket, "send_fds") and hasattr(socket, "SOCK_SEQPACKET"))


# -- the driver's side -----------------------------------------------------------------------

class Zygote:
    """A zygote process started by a driver, and the requests it answers."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        if not available():
            raise ZygoteUnavailable("no fork/pidfd on this platform")
        self.env = dict(env)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        code = f"from hermes.cluster._zygote import serve; serve({theirs.fileno()})"
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, pass_fds=(theirs.fileno(),),
                                         start_new_session=True)
        theirs.close()
        self.sock = ours
        self.lock = threading.Lock()
        self.exits: dict[int, int] = {}
        self.broken = False

    def fork(self, argv: list[str], env: dict[str, str], log_path: Path, fds: tuple[int, ...]) -> ForkedProcess:
        """Fork a node running ``python -m hermes`` ``argv`` with ``env``; ``fds``: what
        becomes its stdin and, if given, its control channel's write end (``--control-fd``)."""
        if self.broken:
            raise ZygoteUnavailable("the zygote failed earlier")
        with self.lock:
            try:
                self.sock.sendmsg([pickle.dumps((argv, env, str(log_path)))],
                                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _fd_bytes(fds))])
                reply, received = self._reply(lambda r: r[0] in ("forked", "error"), REPLY_TIMEOUT)
            except (OSError, EOFError, TimeoutError, pickle.PickleError) as exc:
                self.broken = True
                raise ZygoteUnavailable(f"zygote: {exc!r}") from exc
        if reply[0] == "error":
            for fd in received:
                os.close(fd)
            raise ZygoteUnavailable(f"zygote refused to fork: {reply[1]}")
        return ForkedProcess(self, reply[1], received[0])

    def exit_code(self, pid: int, timeout: float = 2.0) -> int:
        """The exit code of child ``pid``, which has exited (its pidfd said so)."""
        with self.lock:
            if pid not in self.exits and not self.broken:
                try:
                    self._reply(lambda r: r[0] == "exit" and r[1] == pid, timeout)
                except (OSError, EOFError, TimeoutError, pickle.PickleError):
                    pass   # the zygote is gone: the code is lost, the process is not
            return self.exits.pop(pid, -signal.SIGKILL)

    def close(self) -> None:
        self.sock.close()   # EOF: the zygote exits; its children stay as they are
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def _reply(self, wanted: Any, timeout: float) -> tuple[tuple[Any, ...], list[int]]:
        """Read messages (recording exits) until one that ``wanted`` accepts."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
                raise TimeoutError("no answer from the zygote")
            data, fds, _, _ = socket.recv_fds(self.sock, MESSAGE_MAX, 1)
            if not data:
                raise EOFError("the zygote exited")
            message = pickle.loads(data)
            if message[0] == "exit":
                self.exits[message[1]] = message[2]
            if wanted(message):
                return message, fds
            for fd in fds:
                os.close(fd)


class ForkedProcess:
    """What ``LocalCluster`` needs of a ``subprocess.Popen``, for a forked node."""

    def __init__(self, zygote: Zygote, pid: int, pidfd: int) -> None:
        self.zygote = zygote
        self.pid = pid
        self.returncode: int | None = None
        self.stdin: IO[bytes] | None = None   # set by the driver
        self._pidfd = pidfd

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._pidfd], [], [], 0)[0]:
            self._reaped()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._pidfd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"node process {self.pid}", timeout or 0.0)
            self._reaped()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _reaped(self) -> None:
        self.returncode = self.zygote.exit_code(self.pid)
        os.close(self._pidfd)
        self._pidfd = -1

    def __del__(self) -> None:
        if getattr(self, "_pidfd", -1) >= 0:
            os.close(self._pidfd)


def _fd_bytes(fds: tuple[int, ...]) -> bytes:
    import array

    return array.array("i", fds).tobytes()


# -- the zygote --------------------------------------------------------------------------------

def serve(fd: int) -> None:
    """The zygote's main: import once, then fork a node per request until EOF."""
    sock = socket.socket(fileno=fd)
    _warm_up()
    gc.freeze()   # what the children inherit stays shared: the collector never touches it

    def reap(*_: Any) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            # never blocks: a driver that stopped reading must not wedge the zygote (it then
            # reports the exit code of that child as unknown)
            _send(sock, ("exit", pid, os.waitstatus_to_exitcode(status)), wait=False)

    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the driver's Ctrl-C is the driver's
    while True:
        data, fds, _, _ = socket.recv_fds(sock, MESSAGE_MAX, 2)
        if not data:
            return   # the driver closed or died
        try:
            argv, env, log_path = pickle.loads(data)
            _fork_node(sock, argv, env, log_path, fds)   # answers ("forked", pid) + pidfd itself
        except Exception as exc:
            _send(sock, ("error", repr(exc)))
        finally:
            for received in fds:
                os.close(received)


def _warm_up() -> None:
    """Import what every node imports, so that the children need not."""
    import encodings.idna  # noqa: F401  (a node's first name lookup imports it)

    import hermes.cli  # (and with it the package: runtime, mesh, pg, pubsub, presence)
    import hermes.cluster._nodeproc  # noqa: F401

    # the command line's parser, and the regexes and translations its first use compiles and finds
    hermes.cli._parser().parse_args(["node", "--name", "zygote@127.0.0.1"])
    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass


def _send(sock: socket.socket, message: tuple[Any, ...], fds: tuple[int, ...] = (), wait: bool = True) -> None:
    try:
        if fds:
            sock.sendmsg([pickle.dumps(message)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _fd_bytes(fds))])
        else:
            sock.send(pickle.dumps(message), 0 if wait else socket.MSG_DONTWAIT)
    except OSError:
        pass   # the driver is gone (so will we be, at the next read), or not reading


def _fork_node(sock: socket.socket, argv: list[str], env: dict[str, str], log_path: str,
               fds: list[int]) -> None:
    if threading.active_count() != 1:
        raise RuntimeError("the zygote has a thread: forking it is unsafe")
    if len(fds) not in (1, 2):
        raise ValueError(f"expected 1 or 2 fds, got {len(fds)}")
    # SIGCHLD held until the pidfd exists: a child dying at once is not reaped before
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(sock, argv, env, log_path, fds, old_mask)   # never returns
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            os.kill(pid, signal.SIGKILL)   # the driver will spawn this node: no twin may live
            raise
        _send(sock, ("forked", pid), (pidfd,))
        os.close(pidfd)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _child(sock: socket.socket, argv: list[str], env: dict[str, str], log_path: str, fds: list[int],
           mask: Any) -> None:
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.setsid()
        sock.close()
        stdin_fd, control = fds[0], ["--control-fd", str(fds[1])] if len(fds) == 2 else []
        os.dup2(stdin_fd, 0)
        os.close(stdin_fd)
        out = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = [sys.executable, "-m", "hermes", *argv]
        from hermes.cli import main

        main([*argv, *control])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)

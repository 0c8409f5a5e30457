"""The pg service process: serves one ``Directory`` with ``multiprocessing.managers``.

What it owns: the manager and its server (``DirectoryManager``, which pins the
one ``Directory`` under a well-known ident), the lease reaper thread,
``serve()``, starting a service as its own OS process
(``start_service_process``) and the command line (``main``). The directory's
state and rules live in ``_directory``; the wire both sides speak in ``_wire``.

Rules:

- Accepted sockets get TCP_NODELAY (a manager call costs ~177 ms without it),
  and the listen backlog is raised so that many nodes may connect at once.
  Clients talk through ``_wire.ServiceConnection``, whose waits are bounded.
- The cookie reaches a service process through its environment, never argv
  (and so do the TLS files: ``HERMES_TLS_CERT``, ``HERMES_TLS_KEY``, ``HERMES_TLS_CA``).
- Each accepted client is authenticated in its own thread: TLS first (when
  configured: mutual, CERT_REQUIRED), then the cookie challenge. A client
  failing either is logged in one line naming its address, and dropped. A
  request that fails to unpickle (whatever it raises, ``SystemExit``
  included) drops that client's connection with one line; the service goes on.

What it must not know: pids, actors, asyncio, the mesh, and what the directory
does inside its methods. Anyone holding the cookie is trusted: requests are pickles.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import pickle
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from multiprocessing import connection, managers, util
from pathlib import Path
from traceback import format_exc
from typing import Any, Callable, cast

from hermes._config import TLSConfig
from hermes._errors import HermesError
from hermes.pg._directory import DEFAULT_LOG_SIZE, Directory
from hermes.pg._wire import (DIRECTORY_ID, ServiceConnection, ServiceUnavailable, SocketConnection, ping_service,
                             tune_socket)
from hermes.transport import server_context

__all__ = [
    "DEFAULT_PORT", "Directory", "DirectoryManager", "ServiceConnection", "ServiceUnavailable",
    "free_port", "ping_service", "serve", "start_service_process",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 4370
LISTEN_BACKLOG = 512
EXPOSED = (
    "register_node", "heartbeat", "unregister_node", "sync", "update", "report_down",
    "changes", "snapshot", "nodes", "ping",
)

Address = tuple[str, int]


# -- the manager and its server ---------------------------------------------------------------


class _DirectoryServer(managers.Server):
    """A manager server that pins one Directory under a well-known ident and sets TCP_NODELAY."""

    def __init__(self, registry: dict[str, Any], address: Address, authkey: bytes, serializer: str) -> None:
        super().__init__(registry, address, authkey, serializer)
        # managers.Server listens with backlog=16: with more simultaneous connects, the kernel
        # drops handshakes and clients stall for seconds. Listening again raises the backlog.
        # (managers.Server's attributes below are not in typeshed: hence the ignores)
        sock = getattr(getattr(self.listener, "_listener", None), "_socket", None)  # type: ignore[attr-defined]
        if sock is not None:
            sock.listen(LISTEN_BACKLOG)
        make_directory, exposed, _, _ = registry["Directory"]
        self.directory: Directory = make_directory()
        with self.mutex:  # type: ignore[attr-defined]  # our own reference: client decrefs never dispose of it
            self.id_to_obj[DIRECTORY_ID] = (self.directory, set(exposed), None)  # type: ignore[assignment]
            self.id_to_refcount[DIRECTORY_ID] = 1  # type: ignore[attr-defined]

    tls_context: ssl.SSLContext | None = None  # set by serve()
    handshake_timeout = 5.0

    def handle_request(self, conn: connection.Connection) -> None:
        # The stdlib's version authenticates without a word on failure, and reads the
        # raw fd (no TLS): take the socket over, authenticate here, then serve as it does.
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        conn.close()
        try:
            who = "%s:%s" % sock.getpeername()[:2]
        except OSError:
            sock.close()
            return
        client = self._authenticate(sock, who)
        if client is None:
            return
        try:
            self._serve_authenticated(client)
        except SystemExit:  # serve_client() calls sys.exit(0) on EOF
            pass
        finally:
            client.close()

    def _authenticate(self, sock: socket.socket, who: str) -> _ClientConnection | None:
        tune_socket(sock)
        sock.settimeout(self.handshake_timeout)
        step = "TLS"
        try:
            if self.tls_context is not None:
                sock = self.tls_context.wrap_socket(sock, server_side=True)
            client = _ClientConnection(sock, who)
            step = "cookie"
            connection.deliver_challenge(client, self.authkey)  # type: ignore[attr-defined]
            connection.answer_challenge(client, self.authkey)  # type: ignore[attr-defined]
        except Exception as exc:  # AuthenticationError, ssl.SSLError, OSError, EOFError, junk bytes...
            log.warning("pg service refused a client at %s: %s authentication failed: %s", who, step,
                        _describe(exc))
            sock.close()
            return None
        sock.settimeout(None)
        return client

    def _serve_authenticated(self, c: _ClientConnection) -> None:
        # managers.Server._handle_request after its challenge (CPython 3.11), unchanged.
        request = None
        try:
            request = c.recv()
            ignore, funcname, args, kwds = request
            assert funcname in self.public, "%r unrecognized" % funcname
            func = getattr(self, funcname)
        except Exception:
            msg: tuple[str, Any] = ("#TRACEBACK", format_exc())
        else:
            try:
                result = func(c, *args, **kwds)
            except Exception:
                msg = ("#TRACEBACK", format_exc())
            else:
                msg = ("#RETURN", result)
        try:
            c.send(msg)
        except Exception as e:
            try:
                c.send(("#TRACEBACK", format_exc()))
            except Exception:
                pass
            util.info("Failure to send message: %r ... request was %r ... exception was %r", msg, request, e)


class _ClientConnection(SocketConnection):
    """A client's connection as the service sees it: a request that fails to unpickle
    (whatever it raises, SystemExit included) ends this connection, never the service."""

    def __init__(self, sock: socket.socket, who: str) -> None:
        super().__init__(sock)
        self.who = who

    def recv(self) -> Any:
        buf = self._recv_bytes()  # type: ignore[attr-defined]
        try:
            return pickle.loads(buf.getbuffer())
        except BaseException as exc:  # a hostile pickle may raise anything; the thread serving it ends
            log.warning("pg service dropped the connection of %s: a request failed to unpickle: %s",
                        self.who, _describe(exc))
            raise EOFError from None


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except BaseException:
        text = "?"
    text = " ".join(text[:200].split())  # one line, even for a multi-line message
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class DirectoryManager(managers.BaseManager):
    """Serves the one ``Directory``; ``DirectoryManager(addr, cookie).connect()`` then
    ``.Directory()`` gives a standard proxy (handy in a REPL; nodes use ``ServiceConnection``)."""

    def __init__(self, address: Address, authkey: bytes, directory: Directory | None = None) -> None:
        super().__init__(address, authkey)
        if directory is not None:   # the serving side binds the typeid to its one instance
            self._registry = {  # (BaseManager's private table, not in typeshed)
                **self._registry,  # type: ignore[has-type]
                "Directory": (lambda: directory, EXPOSED, None, managers.AutoProxy),  # type: ignore[attr-defined]
            }

    def get_server(self) -> _DirectoryServer:
        # BaseManager.get_server() instantiates managers.Server itself, ignoring `_Server`.
        return _DirectoryServer(self._registry, self._address, self._authkey,  # type: ignore[attr-defined]
                                self._serializer)  # type: ignore[attr-defined]


DirectoryManager.register("Directory", exposed=EXPOSED)


# -- running it -------------------------------------------------------------------------------


def serve(
    host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, cookie: bytes, lease_ttl: float = 3.0,
    idle_exit: float | None = None, log_size: int = DEFAULT_LOG_SIZE, tls: TLSConfig | None = None,
) -> None:
    """Run the service in the foreground until killed (or idle for ``idle_exit`` seconds);
    with ``tls``, every client connection is mutual TLS."""
    if not isinstance(cookie, bytes) or not cookie:
        raise TypeError("the cookie must be non-empty bytes")
    directory = Directory(lease_ttl=lease_ttl, log_size=log_size)
    server = DirectoryManager((host, port), cookie, directory).get_server()
    if tls is not None:
        server.tls_context = server_context(tls)
    threading.Thread(target=_reap, args=(server, idle_exit), name="pg-reaper", daemon=True).start()
    bound = cast("tuple[str, int]", server.address)  # a TCP address here, not a socket path
    log.info("pg service listening on %s:%s%s", *bound[:2], " (TLS)" if tls is not None else "")
    server.serve_forever()   # exits the process (sys.exit) when its stop_event is set


def _reap(server: _DirectoryServer, idle_exit: float | None) -> None:
    directory = server.directory
    tick = max(0.05, min(0.5, directory.lease_ttl / 5))
    while True:
        time.sleep(tick)
        directory.expire_leases()
        stop_event = getattr(server, "stop_event", None)   # created by serve_forever()
        if idle_exit is not None and stop_event is not None and directory.idle_for() >= idle_exit:
            log.info("pg service unused by any node for %.1fs: exiting", idle_exit)
            stop_event.set()
            return


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (another process may still take it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_service_process(
    host: str, port: int, cookie: bytes, *, lease_ttl: float = 3.0, idle_exit: float | None = None,
    detached: bool = False, log_size: int = DEFAULT_LOG_SIZE, startup_timeout: float = 10.0,
    log_path: str | os.PathLike[str] | None = None, tls: TLSConfig | None = None,
) -> subprocess.Popen[bytes]:
    """Start a service as its own OS process and return once it answers ``ping``.

    ``detached=False``: the service is SIGKILLed when the *thread* that started it
    exits (Linux PR_SET_PDEATHSIG semantics), so call this from a long-lived thread.
    ``log_path``: append its output there (detached: else discarded; attached:
    else inherited).
    """
    if not port:
        raise ValueError("choose a port (see free_port()); port 0 cannot be told to nodes")
    if ping_service((host, port), cookie, tls=tls):
        raise HermesError(f"a pg service already answers at {host}:{port}")
    # the one command line of the service: `python -m hermes service` (the cookie in the environment)
    args = [sys.executable, "-m", "hermes", "service", "--host", host, "--port", str(port),
            "--lease-ttl", str(lease_ttl), "--log-size", str(log_size)]
    if idle_exit is not None:
        args += ["--idle-exit", str(idle_exit)]
    env = {**os.environ, "HERMES_COOKIE": os.fsdecode(cookie)}   # never in argv: `ps` shows argv
    for part in ("CERT", "KEY", "CA"):
        env.pop(f"HERMES_TLS_{part}", None)
    if tls is not None:
        env.update(HERMES_TLS_CERT=tls.certfile, HERMES_TLS_KEY=tls.keyfile, HERMES_TLS_CA=tls.cafile)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    with open(log_path, "ab") if log_path is not None else contextlib.nullcontext() as log_file:
        out: Any = log_file if log_file is not None else (subprocess.DEVNULL if detached else None)
        err: Any = subprocess.STDOUT if log_file is not None else out
        if detached:
            proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
        else:
            proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    preexec_fn=_die_with_parent())
    _await_ping(proc, (host, port), cookie, startup_timeout, tls)
    return proc


def _await_ping(proc: subprocess.Popen[bytes], address: Address, cookie: bytes, timeout: float,
                tls: TLSConfig | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HermesError(f"pg service at {address} exited with code {proc.returncode} while starting")
        if ping_service(address, cookie, timeout=0.5, tls=tls):
            return
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise TimeoutError(f"pg service at {address} did not answer within {timeout}s")


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGKILL, 0, 0, 0)   # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:          # race: the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec

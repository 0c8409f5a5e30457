"""The pg service: the cluster directory, served by ``multiprocessing.managers``.

What it owns: one ``Directory`` per service process, holding every node's
name, creation and address, one bucket of memberships per node incarnation
``(name, creation) -> {group: [member, ...]}``, node leases, and a versioned
change log served as a long-polled feed.

Rules:

- *Soft state.* Each node owns its bucket and alone writes it; after every
  (re)registration it re-sends the whole bucket (``sync``), so a restarted
  service (new ``epoch``) loses nothing for long.
- Every exposed method takes the one condition lock, and returns *copies*:
  the manager pickles the result after the method returned, outside the lock.
- Versions are consecutive integers, one per event; a feed client whose
  ``since`` fell off the bounded log, or whose epoch is not ours, gets a
  snapshot instead of events.
- A bigger ``creation`` is a newer incarnation of a node name: it replaces
  the stored one; an older one is refused.
- Accepted sockets get TCP_NODELAY (a manager call costs ~177 ms without it).
  Clients talk through ``_client.ServiceConnection``, whose waits are bounded.

What it must not know: pids, actors, asyncio, the mesh. Node names, groups and
members are opaque picklable values (groups and members must be hashable).
Anyone holding the cookie is trusted: requests are pickles.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from itertools import islice
from multiprocessing import connection, managers
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from hermes._errors import HermesError
from hermes.pg._client import DIRECTORY_ID, ServiceConnection, ServiceUnavailable, ping_service, tune_socket

__all__ = [
    "DEFAULT_PORT", "Directory", "DirectoryManager", "ServiceConnection", "ServiceUnavailable",
    "free_port", "ping_service", "serve", "start_service_process",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 4370
DEFAULT_LOG_SIZE = 100_000
MAX_POLL = 60.0              # longest long poll the service grants
LISTEN_BACKLOG = 512
MAX_BATCH = 20_000           # most events in one feed answer; the client simply polls again
EXPOSED = (
    "register_node", "heartbeat", "unregister_node", "sync", "update", "report_down",
    "changes", "snapshot", "nodes", "ping",
)

Address = tuple[str, int]
Event = tuple[Any, ...]
Bucket = dict[Any, list[Any]]
F = TypeVar("F", bound=Callable[..., Any])


# -- the shared object ---------------------------------------------------------------------


@dataclass(slots=True)
class _NodeEntry:
    creation: int
    address: Any
    deadline: float


def _locked(method: F) -> F:
    """Run ``method`` under the directory's lock, mark the service used, wake feeds on change."""

    @functools.wraps(method)
    def wrapper(self: Directory, *args: Any) -> Any:
        with self._cond:
            self._last_used = time.monotonic()
            before = self._version
            try:
                return method(self, *args)
            finally:
                if self._version != before:
                    self._cond.notify_all()

    return wrapper  # type: ignore[return-value]


class Directory:
    """Nodes, membership buckets, leases and the change log. Thread-safe (one lock)."""

    def __init__(self, *, lease_ttl: float = 3.0, log_size: int = DEFAULT_LOG_SIZE) -> None:
        if lease_ttl <= 0 or log_size <= 0:
            raise ValueError("lease_ttl and log_size must be positive")
        self.epoch = secrets.token_hex(8)
        self.lease_ttl = float(lease_ttl)
        self._cond = threading.Condition(threading.Lock())
        self._version = 0
        self._log: deque[tuple[int, Event]] = deque(maxlen=log_size)
        self._nodes: dict[Any, _NodeEntry] = {}
        self._buckets: dict[tuple[Any, int], Bucket] = {}
        self._last_used = time.monotonic()

    # -- nodes ---------------------------------------------------------------------------

    @_locked
    def register_node(self, name: Any, creation: int, address: Any) -> dict[str, Any]:
        entry = self._nodes.get(name)
        reply = {"epoch": self.epoch, "lease_ttl": self.lease_ttl, "refused": False}
        if entry is not None and entry.creation > creation:
            log.warning("refused %r creation %r: creation %r is registered", name, creation, entry.creation)
            return {**reply, "refused": True, "version": self._version}
        if entry is not None and entry.creation < creation:
            self._remove_node(name, "replaced by a newer creation")   # race: restarted before its lease ran out
        entry = self._nodes.get(name)
        deadline = time.monotonic() + self.lease_ttl
        if entry is None or entry.address != address:
            self._nodes[name] = _NodeEntry(creation, address, deadline)
            self._buckets.setdefault((name, creation), {})
            self._emit(("node_up", name, creation, address))
            log.debug("node up: %r creation %r at %r", name, creation, address)
        else:
            entry.deadline = deadline   # a reconnect of the registered incarnation
        return {**reply, "version": self._version}

    @_locked
    def heartbeat(self, name: Any, creation: int) -> bool:
        return self._extend_lease(name, creation) is not None

    @_locked
    def unregister_node(self, name: Any, creation: int) -> bool:
        return self._entry(name, creation) is not None and self._remove_node(name, "unregistered")

    @_locked
    def report_down(self, name: Any, creation: int) -> bool:
        # race: the node may be alive; its next heartbeat answers False and it re-registers
        return self._entry(name, creation) is not None and self._remove_node(name, "reported down")

    # -- memberships ---------------------------------------------------------------------

    @_locked
    def sync(self, name: Any, creation: int, memberships: dict[Any, list[Any]]) -> int | None:
        if self._extend_lease(name, creation) is None:
            return None
        bucket = self._buckets[(name, creation)]
        for group in list(bucket.keys() | memberships.keys()):
            old, new = Counter(bucket.get(group, ())), Counter(memberships.get(group, ()))
            if left := list((old - new).elements()):
                self._emit(("leave", name, creation, group, left))
            if joined := list((new - old).elements()):
                self._emit(("join", name, creation, group, joined))
            if memberships.get(group):
                bucket[group] = list(memberships[group])
            else:
                bucket.pop(group, None)
        return self._version

    @_locked
    def update(self, name: Any, creation: int, changes: list[tuple[str, Any, list[Any]]]) -> int | None:
        if self._extend_lease(name, creation) is None:   # a node that writes is alive
            return None
        bucket = self._buckets[(name, creation)]
        for kind, group, members in changes:
            if kind == "join":
                self._join(name, creation, bucket, group, members)
            elif kind == "leave":
                self._leave(name, creation, bucket, group, members)
            else:
                raise ValueError(f"unknown change kind {kind!r}")
        return self._version

    # -- reads and the feed ----------------------------------------------------------------

    @_locked
    def changes(self, epoch: str | None, since: int, timeout: float) -> tuple[Any, ...]:
        if epoch != self.epoch or not self._in_log(since):
            return self._snapshot()
        if since == self._version and timeout > 0:
            self._cond.wait_for(lambda: self._version != since, min(float(timeout), MAX_POLL))
            if not self._in_log(since):   # race: the log rolled past `since` while we waited
                return self._snapshot()
        count = min(self._version - since, MAX_BATCH)
        newest_first = islice(reversed(self._log), self._version - since - count, self._version - since)
        events = [event for _, event in newest_first]
        events.reverse()
        return ("events", self.epoch, since + count, events)

    @_locked
    def snapshot(self) -> tuple[Any, ...]:
        return self._snapshot()

    @_locked
    def nodes(self) -> dict[Any, tuple[int, Any]]:
        return {name: (e.creation, e.address) for name, e in self._nodes.items()}

    @_locked
    def ping(self) -> str:
        return self.epoch

    # -- housekeeping (not exposed) ----------------------------------------------------------

    def expire_leases(self) -> list[Any]:
        """Remove every node whose lease has passed; return their names."""
        with self._cond:
            now = time.monotonic()
            expired = [name for name, e in self._nodes.items() if e.deadline < now]
            for name in expired:
                self._remove_node(name, "lease expired")
            if expired:
                self._cond.notify_all()
            return expired

    def idle_for(self) -> float:
        """Seconds since the last call, or 0.0 while any node is registered."""
        with self._cond:
            return 0.0 if self._nodes else time.monotonic() - self._last_used

    # -- internals (lock held) -----------------------------------------------------------------

    def _entry(self, name: Any, creation: int) -> _NodeEntry | None:
        entry = self._nodes.get(name)
        return entry if entry is not None and entry.creation == creation else None

    def _extend_lease(self, name: Any, creation: int) -> _NodeEntry | None:
        entry = self._entry(name, creation)
        if entry is not None:
            entry.deadline = time.monotonic() + self.lease_ttl
        return entry

    def _emit(self, event: Event) -> None:
        self._version += 1
        self._log.append((self._version, event))

    def _remove_node(self, name: Any, why: str) -> bool:
        entry = self._nodes.pop(name)
        self._buckets.pop((name, entry.creation), None)
        self._emit(("node_down", name, entry.creation))
        log.info("node down: %r creation %r (%s)", name, entry.creation, why)
        return True

    def _join(self, name: Any, creation: int, bucket: Bucket, group: Any, members: list[Any]) -> None:
        if members:
            bucket.setdefault(group, []).extend(members)
            self._emit(("join", name, creation, group, list(members)))

    def _leave(self, name: Any, creation: int, bucket: Bucket, group: Any, members: list[Any]) -> None:
        current = bucket.get(group, [])
        removed = []
        for member in members:
            if member in current:
                current.remove(member)
                removed.append(member)
        if not current:
            bucket.pop(group, None)
        if removed:
            self._emit(("leave", name, creation, group, removed))

    def _in_log(self, since: int) -> bool:
        floor = self._log[0][0] - 1 if self._log else self._version
        return floor <= since <= self._version

    def _snapshot(self) -> tuple[Any, ...]:
        nodes = {name: (e.creation, e.address) for name, e in self._nodes.items()}
        buckets = {key: {g: list(ms) for g, ms in bucket.items()} for key, bucket in self._buckets.items()}
        return ("snapshot", self.epoch, self._version, nodes, buckets)


# -- the manager and its server ---------------------------------------------------------------


class _DirectoryServer(managers.Server):
    """A manager server that pins one Directory under a well-known ident and sets TCP_NODELAY."""

    def __init__(self, registry: dict[str, Any], address: Address, authkey: bytes, serializer: str) -> None:
        super().__init__(registry, address, authkey, serializer)
        # managers.Server listens with backlog=16: with more simultaneous connects, the kernel
        # drops handshakes and clients stall for seconds. Listening again raises the backlog.
        sock = getattr(getattr(self.listener, "_listener", None), "_socket", None)
        if sock is not None:
            sock.listen(LISTEN_BACKLOG)
        make_directory, exposed, _, _ = registry["Directory"]
        self.directory: Directory = make_directory()
        with self.mutex:   # the server's own reference: client decrefs never dispose of it
            self.id_to_obj[DIRECTORY_ID] = (self.directory, set(exposed), None)
            self.id_to_refcount[DIRECTORY_ID] = 1

    def handle_request(self, conn: connection.Connection) -> None:
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            tune_socket(sock)
        super().handle_request(conn)


class DirectoryManager(managers.BaseManager):
    """Serves the one ``Directory``; ``DirectoryManager(addr, cookie).connect()`` then
    ``.Directory()`` gives a standard proxy (handy in a REPL; nodes use ``ServiceConnection``)."""

    def __init__(self, address: Address, authkey: bytes, directory: Directory | None = None) -> None:
        super().__init__(address, authkey)
        if directory is not None:   # the serving side binds the typeid to its one instance
            self._registry = {**self._registry, "Directory": (lambda: directory, EXPOSED, None, managers.AutoProxy)}

    def get_server(self) -> _DirectoryServer:
        # BaseManager.get_server() instantiates managers.Server itself, ignoring `_Server`.
        return _DirectoryServer(self._registry, self._address, self._authkey, self._serializer)


DirectoryManager.register("Directory", exposed=EXPOSED)


# -- running it -------------------------------------------------------------------------------


def serve(
    host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, cookie: bytes, lease_ttl: float = 3.0,
    idle_exit: float | None = None, log_size: int = DEFAULT_LOG_SIZE,
) -> None:
    """Run the service in the foreground until killed (or idle for ``idle_exit`` seconds)."""
    if not isinstance(cookie, bytes) or not cookie:
        raise TypeError("the cookie must be non-empty bytes")
    directory = Directory(lease_ttl=lease_ttl, log_size=log_size)
    server = DirectoryManager((host, port), cookie, directory).get_server()
    threading.Thread(target=_reap, args=(server, idle_exit), name="pg-reaper", daemon=True).start()
    log.info("pg service listening on %s:%s", *server.address[:2])
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
) -> subprocess.Popen[bytes]:
    """Start a service as its own OS process and return once it answers ``ping``.

    ``detached=False``: the service is SIGKILLed when the *thread* that started it
    exits (Linux PR_SET_PDEATHSIG semantics), so call this from a long-lived thread.
    """
    if not port:
        raise ValueError("choose a port (see free_port()); port 0 cannot be told to nodes")
    if ping_service((host, port), cookie):
        raise HermesError(f"a pg service already answers at {host}:{port}")
    # Not `-m hermes.pg._service`: hermes.pg imports this module, so runpy would run a second copy
    # of it as __main__ (and warn about it on stderr).
    args = [sys.executable, "-c", "from hermes.pg._service import main; main()", "--host", host, "--port", str(port),
            "--lease-ttl", str(lease_ttl), "--log-size", str(log_size)]
    if idle_exit is not None:
        args += ["--idle-exit", str(idle_exit)]
    env = {**os.environ, "HERMES_COOKIE": os.fsdecode(cookie)}   # never in argv: `ps` shows argv
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    if detached:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    else:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent())
    _await_ping(proc, (host, port), cookie, startup_timeout)
    return proc


def _await_ping(proc: subprocess.Popen[bytes], address: Address, cookie: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HermesError(f"pg service at {address} exited with code {proc.returncode} while starting")
        if ping_service(address, cookie, timeout=0.5):
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


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hermes.pg._service", description="Run a Hermes pg service.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--lease-ttl", type=float, default=3.0)
    parser.add_argument("--idle-exit", type=float, default=None)
    parser.add_argument("--log-size", type=int, default=DEFAULT_LOG_SIZE)
    options = parser.parse_args(None if argv is None else list(argv))
    cookie = os.environb.get(b"HERMES_COOKIE")
    if not cookie:
        parser.error("set the cluster cookie in the HERMES_COOKIE environment variable")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    serve(options.host, options.port, cookie=cookie, lease_ttl=options.lease_ttl,
          idle_exit=options.idle_exit, log_size=options.log_size)


if __name__ == "__main__":
    main()

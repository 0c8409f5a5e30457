"""``LocalCluster``: a pg service and one OS process per node, on this machine.

The driver (the process using ``LocalCluster``) is not a node: it talks to
each node over the private control channel of ``_control`` (which is also the
node's lifeline), so ``nodes()`` on a cluster node lists only cluster nodes
and no group has a member in the driver. Each cluster has its own service on
its own port and its own random cookie: clusters side by side never meet.

Every wait here polls a condition with a deadline; ``stop`` (also run at
interpreter exit and by ``__exit__``) leaves no process behind.
"""
from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .._app import full_name
from .._config import NodeConfig
from .._errors import HermesError
from ..transport import dumps, loads
from ..pg.service import free_port, start_service_process
from . import _control, _zygote

log = logging.getLogger("hermes.cluster")
ROOT = str(Path(__file__).resolve().parents[2])
SYS_PATH_ENV = "HERMES_SYS_PATH"  # the driver's sys.path, which a node process adopts


def driver_sys_path() -> list[str]:
    """This process's ``sys.path`` for a node process, as ``multiprocessing``'s
    spawn start method passes it: what the driver can import (a test module
    pytest put on the path, a folder added at run time), the node can too.
    ``''`` (the current folder) becomes the folder it names here."""
    return [os.getcwd() if entry == "" else entry for entry in sys.path]


class _NodeProcess:
    def __init__(self, name: str, proc: subprocess.Popen[bytes] | _zygote.ForkedProcess, answers: int,
                 log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.answers = answers
        self.log_path = log_path
        self.lock = threading.Lock()
        self.ids = itertools.count(1)


class LocalCluster:
    """Start a service and nodes ``names``; returns once all see each other."""

    def __init__(self, names: list[str], *, cookie: str | None = None, startup_timeout: float = 30.0,
                 log_dir: str | None = None, **options: Any) -> None:
        """``options``: node options, as ``run`` takes them (checked here, once,
        and given to every node); not ``name``, ``cluster``, ``host``, ``port``,
        which the cluster sets."""
        for own in ("name", "cluster", "host", "port"):
            if own in options:
                raise TypeError(f"LocalCluster sets option {own!r} itself")
        self.config = NodeConfig.build(cookie=cookie, **options)
        self.cookie = cookie or secrets.token_urlsafe(24)
        self.tick_interval = self.config.tick_interval
        self.lease_ttl = self.config.lease_ttl
        self.startup_timeout = startup_timeout
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="hermes-cluster-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.service_address = ("127.0.0.1", free_port())
        self._service: subprocess.Popen[bytes] | None = None
        self._nodes: dict[str, _NodeProcess] = {}
        self._order = [full_name(n) for n in names]
        self._stopped = False
        self._zygote: _zygote.Zygote | None = None
        atexit.register(self.stop)
        try:
            self._start_zygote()   # it imports Hermes while the service starts
            self.start_service()
            # all processes at once, then their "ready" frames: start-up (interpreter,
            # imports, connections) overlaps instead of adding up node by node
            launched = [self._launch(full_name(name)) for name in names]
            deadline = time.monotonic() + self.startup_timeout
            for node in launched:
                self._await_ready(node, deadline)
            self.wait_connected()
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def nodes(self) -> list[str]:
        return list(self._order)

    # -- processes ------------------------------------------------------------

    def start_service(self) -> None:
        host, port = self.service_address
        # not detached: the service is SIGKILLed when the thread that started it dies
        # (PR_SET_PDEATHSIG), so even a SIGKILLed driver leaves no service behind
        self._service = start_service_process(host, port, self.cookie.encode(), lease_ttl=self.lease_ttl,
                                              log_path=self.log_dir / "service.log", tls=self.config.tls)

    def kill_service(self) -> None:
        if self._service is not None:
            _kill(self._service)
            self._service = None

    def start(self, name: str) -> None:
        """Start (or restart) node ``name`` and wait until the cluster is whole."""
        full = full_name(name)
        old = self._nodes.get(full)
        if old is not None and old.proc.poll() is None:
            raise HermesError(f"node {full} is already running")
        if full not in self._order:
            self._order.append(full)
        self._await_ready(self._launch(full), time.monotonic() + self.startup_timeout)
        self.wait_connected()

    def kill(self, name: str) -> None:
        """SIGKILL the node: a crash, not a stop."""
        node = self._node(name)
        _kill(node.proc)
        os.close(node.answers)
        del self._nodes[node.name]

    def address(self, name: str) -> tuple[str, int]:
        return tuple(self.rpc(name, _own_address))

    def output(self, name: str) -> str:
        """What the node wrote to stdout and stderr so far."""
        path = self.log_dir / f"{full_name(name)}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _node_env(self) -> dict[str, str]:
        env = {**os.environ, "HERMES_COOKIE": self.cookie, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        return env

    def _start_zygote(self) -> None:
        """Node processes are forked from a zygote that imported Hermes once
        (``_zygote``), where the platform allows; else each is spawned."""
        if _zygote.available():
            try:
                self._zygote = _zygote.Zygote(self._node_env(), self.log_dir / "zygote.log")
            except OSError as exc:
                log.warning("no zygote (%s): node processes are spawned", exc)

    def _launch(self, full: str) -> _NodeProcess:
        """Start node ``full``'s process (not waiting for it)."""
        log_path = self.log_dir / f"{full}.log"
        answers_r, answers_w = os.pipe()
        env = self._node_env()
        args = ["node", "--name", full, "--cluster", f"{self.service_address[0]}:{self.service_address[1]}",
                *node_flags(self.config)]
        proc: _zygote.ForkedProcess | subprocess.Popen[bytes]
        try:
            proc = self._fork(args, env, log_path, answers_w)
        except _zygote.ZygoteUnavailable as exc:
            log.debug("spawning node %s: %s", full, exc)
            env[SYS_PATH_ENV] = json.dumps(driver_sys_path())
            with open(log_path, "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "hermes", *args, "--control-fd", str(answers_w)],
                                        env=env, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                        pass_fds=(answers_w,), start_new_session=True)
        finally:
            os.close(answers_w)
        node = _NodeProcess(full, proc, answers_r, log_path)
        self._nodes[full] = node
        return node

    def _fork(self, args: list[str], env: dict[str, str], log_path: Path, answers_w: int) -> _zygote.ForkedProcess:
        """Fork the node from the zygote; ``ZygoteUnavailable`` if there is none, it
        failed, or the environment changed since it started (it imported with that one)."""
        if self._zygote is None or self._zygote.env != env:
            raise _zygote.ZygoteUnavailable("no zygote with this environment")
        stdin_r, stdin_w = os.pipe()
        try:
            proc = self._zygote.fork(args, {**env, SYS_PATH_ENV: json.dumps(driver_sys_path())}, log_path,
                                     (stdin_r, answers_w))
        except BaseException:
            os.close(stdin_w)
            raise
        finally:
            os.close(stdin_r)
        proc.stdin = os.fdopen(stdin_w, "wb")
        return proc

    def _await_ready(self, node: _NodeProcess, deadline: float) -> None:
        try:
            _control.read_frame(node.answers, deadline)  # the "ready" frame
        except (TimeoutError, EOFError) as exc:
            short = node.name.split("@")[0]
            raise HermesError(f"node {short} did not start:\n{self.output(node.name)[-3000:]}") from exc

    def _node(self, name: str) -> _NodeProcess:
        try:
            return self._nodes[full_name(name)]
        except KeyError:
            raise HermesError(f"no running node {name!r} in this cluster") from None

    # -- talking to nodes -----------------------------------------------------

    def rpc(self, name: str, fn: Callable[..., Any], /, *args: Any, timeout: float = 10.0, **kwargs: Any) -> Any:
        """Run ``fn`` on that node as ``rpc`` does; return its result or raise its exception."""
        node = self._node(name)
        with node.lock:
            request_id = next(node.ids)
            kwargs["_hermes_timeout"] = timeout
            try:
                # the call is pickled apart, so a node that cannot unpickle it answers with the error
                body = dumps((fn, args, kwargs))
                _control.write_frame(node.proc.stdin.fileno(), dumps((request_id, body)))  # type: ignore[union-attr]
            except OSError as exc:
                raise HermesError(f"node {node.name} is not running") from exc
            deadline = time.monotonic() + timeout + 1.0
            while True:
                try:
                    answer_id, kind, value = loads(_control.read_frame(node.answers, deadline))
                except EOFError as exc:
                    raise HermesError(f"node {node.name} went down during rpc") from exc
                if answer_id == request_id:
                    break  # earlier answers belong to requests that timed out
        if kind == "error":
            raise value
        return value

    def wait_connected(self, timeout: float | None = None) -> None:
        """Until every node sees every other and is in every PubSub group."""
        expected = sorted(self._nodes)
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        while True:
            try:
                if all(self.rpc(n, _mesh_view, timeout=5.0) == expected for n in expected):
                    return
            except HermesError:
                pass
            if time.monotonic() > deadline:
                views = {n: self._safe_view(n) for n in expected}
                raise HermesError(f"cluster did not connect within the timeout: {views}")
            time.sleep(0.02)

    def _safe_view(self, name: str) -> Any:
        try:
            return self.rpc(name, _mesh_view, timeout=2.0)
        except Exception as exc:
            return repr(exc)

    # -- stopping -------------------------------------------------------------

    def stop(self) -> None:
        """Stop every node (EOF on its lifeline, then SIGKILL) and the service."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        for node in self._nodes.values():
            try:
                node.proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
        deadline = time.monotonic() + 5.0
        for node in self._nodes.values():
            try:
                node.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill(node.proc)
            os.close(node.answers)
        self._nodes.clear()
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None
        self.kill_service()


def _kill(proc: subprocess.Popen[bytes] | _zygote.ForkedProcess) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait(10)


def _mesh_view() -> list[str]:
    """On a node: the names of nodes it is connected to *and* whose PGServer it
    knows, itself included — the cluster is whole when these agree everywhere."""
    from .. import pg, pubsub
    from ..runtime import node, nodes

    members = {pid.node for pid in pg.get_members(pubsub.group_of(pubsub.DEFAULT))}
    return sorted(members & (set(nodes()) | {node()}))


def _own_address() -> tuple[str, int]:
    from ..mesh import of as dist_of
    from ..runtime import lowlevel

    dist = dist_of(lowlevel.current_node())
    if dist is None:
        raise HermesError("this node is not distributed")
    return dist.local.address


def node_flags(config: NodeConfig) -> list[str]:
    """The ``python -m hermes node`` flags that give a node process ``config``'s
    options (the cookie travels in the environment, never on a command line)."""
    flags: list[str] = []
    for name, value in config.non_defaults().items():
        if name in ("cookie", "name", "cluster", "host", "port", "hidden", "listen"):
            continue
        if name == "tls":
            flags += ["--tls-cert", value.certfile, "--tls-key", value.keyfile, "--tls-ca", value.cafile]
        elif name == "peers":
            flags += ["--peers", ",".join(f"{host}:{port}" for host, port in value)]
        else:
            flags += ["--" + name.replace("_", "-"), str(value)]
    return flags

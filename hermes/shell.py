"""``python -m hermes shell``: an interactive node, like ``iex --sname alice``.

The node runs on a background thread; the console reads lines on the main
thread and hands each compiled chunk to the *shell actor*, a function actor
that executes it, so inside the shell ``self()`` is the shell's pid,
``subscribe`` and ``receive`` work, and top-level ``await`` is allowed.
The shell actor never reads its own mailbox: messages stay there for
``receive()`` or ``flush()``, as in iex.

``--remote NAME@HOST`` starts a hidden node, spawns a shell actor on the
running node and sends each chunk there; its output comes back.

Ctrl-C cancels the running chunk, as ``python -m asyncio`` does: the shell
actor's task is cancelled where the chunk awaits (``receive`` leaves the
mailbox as it was), the chunk ends with ``KeyboardInterrupt`` and the actor
goes on with the next one. With a terminal, lines are edited with readline
and kept in ``~/.hermes/shell_history`` (``HERMES_SHELL_HISTORY``).
"""
from __future__ import annotations

import ast
import asyncio
import code
import concurrent.futures
import contextlib
import io
import os
import sys
import threading
import traceback
import types
from typing import Any

import hermes

from ._app import full_name, run_async, run_on_loop
from ._config import NodeConfig
from . import mesh
from .runtime import lowlevel
from .runtime.lowlevel import current

BANNER = ("Hermes shell on {node} (Python {version}). Top-level await works; "
          "flush() prints and empties this shell's mailbox. Ctrl-D quits.")
_shells: dict[Any, Shell] = {}
INTERRUPT_WAIT = 5.0  # seconds Ctrl-C waits for the cancelled chunk to end
HISTORY_ENV = "HERMES_SHELL_HISTORY"


class Shell:
    """A shell actor's state on its node: namespace and the queue of chunks to run."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future[Any], bool]] = asyncio.Queue()
        self.task = asyncio.current_task()
        self.running = False      # a chunk is executing (so a cancel lands inside it)
        self.interrupted = False  # Ctrl-C asked to cancel that chunk
        self.namespace: dict[str, Any] = {"__name__": "__console__", "hermes": hermes, "flush": flush}
        exec("from hermes import *", self.namespace)  # noqa: S102 - the shell's own namespace


def flush() -> None:
    """Print and remove every message in the shell's mailbox (iex's ``flush``)."""
    proc = current.get()
    if proc is None:
        raise hermes.NotInActor("flush() is for the shell")
    while proc.mailbox:
        print(f"Shell got {proc.mailbox.popleft()!r}")


async def shell_actor(ready: concurrent.futures.Future[Any] | None = None) -> None:
    """The shell actor: run chunks in order, inside this actor."""
    shell = Shell()
    pid = hermes.self()
    _shells[pid] = shell
    if ready is not None:
        ready.set_result(pid)
    try:
        while True:
            chunk, done, capture = await shell.queue.get()
            done.set_result(await _execute(shell, chunk, capture))
    finally:
        _shells.pop(pid, None)


async def _execute(shell: Shell, chunk: Any, capture: bool) -> tuple[str, str]:
    """Run one chunk; returns (captured output, error text)."""
    out = io.StringIO()
    redirect = contextlib.redirect_stdout(out) if capture else contextlib.nullcontext()
    with redirect:
        shell.running = True
        try:
            if isinstance(chunk, str):
                chunk = compile(chunk, "<shell>", "single", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = types.FunctionType(chunk, shell.namespace)()
            if asyncio.iscoroutine(result):
                await result
        except SystemExit:
            raise
        except asyncio.CancelledError:
            if not shell.interrupted:
                raise  # the actor itself is being stopped
            return out.getvalue(), "KeyboardInterrupt\n"
        except BaseException:  # show it, as a console does; the shell lives on
            return out.getvalue(), traceback.format_exc()
        finally:
            shell.running = False
            if shell.interrupted:  # the cancel was for this chunk only
                shell.interrupted = False
                if shell.task is not None:
                    shell.task.uncancel()
    return out.getvalue(), ""


def interrupt(shell_pid: Any) -> bool:
    """Cancel the chunk that ``shell_pid`` is running (on its node's loop); False if none."""
    shell = _shells.get(shell_pid)
    if shell is None or not shell.running or shell.interrupted or shell.task is None:
        return False
    shell.interrupted = True
    shell.task.cancel()
    return True


async def remote_eval(shell_pid: Any, source: str) -> tuple[str, str]:
    """Run on the attached node (by ``rpc``): queue ``source`` for its shell actor."""
    shell = _shells.get(shell_pid)
    if shell is None:
        return "", f"the shell actor {shell_pid} is gone\n"
    done = asyncio.get_running_loop().create_future()
    shell.queue.put_nowait((source, done, True))
    return await done


class _Console(code.InteractiveConsole):
    def __init__(self, loop: asyncio.AbstractEventLoop, run_chunk: Any, interrupt_chunk: Any) -> None:
        super().__init__()
        self.compile.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        self.loop = loop
        self.run_chunk = run_chunk
        self.interrupt_chunk = interrupt_chunk

    def runsource(self, source: str, filename: str = "<input>", symbol: str = "single") -> bool:
        try:
            compiled = self.compile(source, filename, symbol)
        except (OverflowError, SyntaxError, ValueError):
            self.showsyntaxerror(filename)
            return False
        if compiled is None:
            return True
        running = asyncio.run_coroutine_threadsafe(self.run_chunk(source, compiled), self.loop)
        try:
            output, error = running.result()
        except KeyboardInterrupt:  # cancel the chunk where it awaits, then show how it ended
            asyncio.run_coroutine_threadsafe(self.interrupt_chunk(), self.loop)
            try:
                output, error = running.result(timeout=INTERRUPT_WAIT)
            except (KeyboardInterrupt, concurrent.futures.TimeoutError):
                output, error = "", "KeyboardInterrupt (the chunk still holds the loop)\n"
        if output:  # what a remote chunk printed: stdout, as a local chunk's print (write() is stderr)
            sys.stdout.write(output)
            sys.stdout.flush()
        if error:
            self.write(error)
        return False


def run_shell(*, name: str | None, remote: str | None = None, cluster: str | None = None,
              **options: Any) -> None:
    """An interactive node (``options`` as for ``run``), or with ``remote`` a
    hidden node whose console runs its chunks on that node."""
    if remote is None and name is None:
        raise SystemExit("shell: give --name NAME (or --remote NAME@HOST)")
    hidden = remote is not None
    node_name = name or f"remsh-{threading.get_ident() % 100000}"
    started: concurrent.futures.Future[Any] = concurrent.futures.Future()  # the shell actor's pid
    started_node: concurrent.futures.Future[Any] = concurrent.futures.Future()
    stopped = threading.Event()

    async def main() -> None:
        node = lowlevel.current_node()
        if remote is None:
            hermes.spawn(shell_actor, started)  # it sets ``started`` to its pid
            await asyncio.wrap_future(started)
        else:
            if not await hermes.connect(remote):
                dist = mesh.of(node)
                reason = dist.failures.get(remote, "no reason known") if dist is not None else "not distributed"
                started.set_exception(SystemExit(f"shell: cannot reach {remote}: {reason}"))
                return
            # linked: when this shell goes (EOF, crash, lost connection), so does its actor
            # there, with its subscriptions; iex's remote shell is linked the same way
            started.set_result(hermes.spawn(shell_actor, None, node=remote, link=True))
        started_node.set_result(node)
        await asyncio.Event().wait()

    # checked here, before the thread: a bad option is one line, and option ``loop`` is honoured
    config = NodeConfig.build(name=node_name, cluster=cluster or ("local" if hidden else None), hidden=hidden,
                              **options)

    def node_thread() -> None:
        try:
            run_on_loop(run_async(main, config=config), config.loop)
        except BaseException as exc:  # report start failures to the console thread
            if not started.done():
                started.set_exception(exc)
        finally:
            stopped.set()

    thread = threading.Thread(target=node_thread, name="hermes-node", daemon=True)
    thread.start()
    shell_pid = started.result(timeout=30)
    node = started_node.result(timeout=30)

    async def run_chunk(source: str, compiled: Any) -> tuple[str, str]:
        if remote is not None:
            return await hermes.rpc(remote, remote_eval, shell_pid, source, timeout=None)
        done = node.loop.create_future()
        _shells[shell_pid].queue.put_nowait((compiled, done, False))
        return await done

    async def interrupt_chunk() -> bool:
        if remote is not None:
            return bool(await hermes.rpc(remote, interrupt, shell_pid, timeout=INTERRUPT_WAIT))
        return interrupt(shell_pid)

    console = _Console(node.loop, run_chunk, interrupt_chunk)
    where = remote or full_name(node_name)
    history = _history()
    try:
        console.interact(banner=BANNER.format(node=where, version=sys.version.split()[0]), exitmsg="")
    finally:
        if history is not None:
            history()
        node.loop.call_soon_threadsafe(node.request_stop)
        stopped.wait(10)


def _history() -> Any:
    """With a terminal: readline line editing and the history file; returns
    what saves the history at exit (None without a terminal or readline)."""
    if not sys.stdin.isatty():
        return None
    try:
        import readline
    except ImportError:  # not on every platform; the shell works without it
        return None
    path = os.environ.get(HISTORY_ENV) or os.path.join(os.path.expanduser("~"), ".hermes", "shell_history")
    readline.set_history_length(1000)
    try:
        readline.read_history_file(path)
    except OSError:  # no history yet
        pass

    def save() -> None:
        try:
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            readline.write_history_file(path)
        except OSError as exc:
            print(f"shell: could not save the history to {path}: {exc}", file=sys.stderr)

    return save

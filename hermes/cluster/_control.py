"""The control channel between a ``LocalCluster`` driver and a node process it started.

Two private pipes: requests on the node's stdin, answers on a pipe whose fd
the node is told (``--control-fd``). Both ends belong to parent and child
only, so the frames are trusted pickles; nothing here is reachable from the
network. The channel doubles as the node's lifeline: when the driver dies
or closes it, the node sees EOF on stdin and shuts down, so no node outlives
its driver.

Frame: 4-byte big-endian length + pickle of ``(request_id, body)`` one way
and ``(request_id, "ok" | "error", value)`` the other. ``body`` is the pickle
of ``(fn, args, kwargs)``, unpickled apart on the node's loop: a call the node
cannot load (a module it lacks) is answered with that error, not fatal.
"""
from __future__ import annotations

import logging
import os
import select
import struct
import threading
import time
from typing import Any, Callable

from .._errors import RemoteError, SerializationError
from ..transport import dumps, loads

log = logging.getLogger("hermes.cluster")
HEADER = struct.Struct(">I")


def write_frame(fd: int, payload: bytes) -> None:
    data = HEADER.pack(len(payload)) + payload
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, need = [], size
    while need:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError("no answer on the control channel")
        chunk = os.read(fd, need)
        if not chunk:
            raise EOFError("control channel closed")
        chunks.append(chunk)
        need -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, deadline: float | None = None) -> bytes:
    (size,) = HEADER.unpack(read_exact(fd, HEADER.size, deadline))
    return read_exact(fd, size, deadline)


def encode_answer(request_id: int, kind: str, value: Any) -> bytes:
    try:
        return dumps((request_id, kind, value))
    except SerializationError as exc:
        if kind == "error":
            return dumps((request_id, "error", RemoteError.from_exception(value)))
        return dumps((request_id, "error", RemoteError(f"the result could not be sent back: {exc}")))


def serve_requests(run_request: Callable[[int, bytes], None],
                   on_eof: Callable[[], None]) -> threading.Thread:
    """In the node: read requests from stdin on a daemon thread; EOF -> ``on_eof``."""

    def reader() -> None:
        try:
            while True:
                request_id, body = loads(read_frame(0))
                run_request(request_id, body)
        except (EOFError, OSError):
            pass
        except Exception:
            log.exception("control channel broken")
        on_eof()

    thread = threading.Thread(target=reader, name="hermes-control", daemon=True)
    thread.start()
    return thread

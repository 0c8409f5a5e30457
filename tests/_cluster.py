"""Helpers for tests that start real node processes (through ``LocalCluster``).

Every wait polls a condition with a deadline; nothing sleeps and hopes.
"""
from __future__ import annotations

import time
from typing import Any, Callable


def poll(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Call ``predicate`` until it returns something truthy (returned); ``AssertionError`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except Exception as exc:  # a node restarting, say: keep polling until the deadline
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
        time.sleep(interval)


def stays(predicate: Callable[[], Any], window: float) -> bool:
    """True if ``predicate`` holds at every check for ``window`` seconds (a non-event needs a window)."""
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.01)
    return True


def alive(pid: int) -> bool:
    """An OS process that exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

"""Backpressure on the mesh: how full each link is, ``drain``, and reading
paused while this node's mailboxes hold too much (see ``Backpressure._backlog``).

A mixin of ``Distribution``: it uses its ``node``, ``conns``,
``max_link_buffer``, ``_frames_seen`` and ``_paused_links``.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..transport import Connection

log = logging.getLogger("hermes.mesh")


class Backpressure:
    node: Any
    conns: dict[str, Connection]
    max_link_buffer: int
    _frames_seen: dict[Connection, int]
    _paused_links: set[Connection]

    def link_statistics(self) -> dict[str, dict[str, Any]]:
        """Per peer: bytes queued on the link (ours + the transport's), whether
        the transport asked us to stop writing, whether we stopped reading."""
        return {name: {"queued_bytes": conn.queued_bytes(), "paused": conn.statistics().paused,
                       "reading_paused": conn.reading_paused, "max_link_buffer": self.max_link_buffer}
                for name, conn in self.conns.items()}

    async def drain(self, name: str | None = None) -> None:
        """Until the link to ``name`` (each link if None) is below its low-water mark."""
        if name is not None:
            conn = self.conns.get(name)
            if conn is not None:
                await conn.drain()
            return
        for conn in list(self.conns.values()):
            await conn.drain()

    def _backlog(self, queued: int) -> None:
        """The node's mailboxes hold ``queued`` messages (told by its periodic scan).
        Above the high-water mark (the node's ``mailbox_warning``: what it already
        calls too many queued), stop reading the links that fed a quarter or more
        of what arrived since the last scan, so the senders' link buffers take the
        pressure instead of our memory; calls and replies on the other links keep
        flowing. Reading resumes below half the mark. The proxy (a link's frames
        since the last scan) stands for "the mailboxes it fed", which the runtime
        cannot track without a cost on every delivery.

        Far below the mark (under an eighth) with no link paused, a scan costs
        O(1), not O(links): it was most of an idle node's cost in an 80-node
        cluster. Counting starts again at the first scan above an eighth; if the
        mailboxes jump past the mark within one scan, a link's "since the last
        scan" is then its whole life, as for a link that is new."""
        high = self.node.config.mailbox_warning if self.node.config is not None else 100_000
        if queued < high // 8 and not self._paused_links:
            if self._frames_seen:
                self._frames_seen = {}
            return
        seen, self._frames_seen = self._frames_seen, {}
        fed: dict[Connection, int] = {}
        for conn in self.conns.values():
            frames = conn.statistics().frames_in
            self._frames_seen[conn] = frames
            fed[conn] = frames - seen.get(conn, 0)
        if queued < high // 2:
            paused, self._paused_links = self._paused_links, set()
            for conn in paused:
                if conn.reading_paused and not conn.closed:
                    log.info("node %s resumes reading %s: %d messages queued", self.node.name, conn.peer.name,
                             queued)
                    conn.resume_reading()
            return
        if queued <= high:
            return
        total = sum(fed.values())
        for conn, frames in fed.items():
            if total and frames * 4 >= total and not conn.reading_paused:
                log.warning("node %s stops reading %s: %d messages queued in its mailboxes (high-water %d)",
                            self.node.name, conn.peer.name, queued, high)
                conn.pause_reading()
                self._paused_links.add(conn)


async def drain(node: str | None = None, *, timeout: float | None = None) -> None:
    """Wait until the link to ``node`` (every link if None) is below its low-water
    mark: cooperative backpressure for a fast publisher, like ``StreamWriter.drain``.
    ``TimeoutError`` after ``timeout`` seconds. Returns at once for an unknown or
    unconnected node, or on a node without distribution."""
    from ..runtime.lowlevel import current_node
    from ._manager import of

    if node is not None and not isinstance(node, str):
        raise TypeError(f"drain(node=) takes a node name or None, not {type(node).__name__}")
    dist = of(current_node())
    if dist is None:
        return
    if timeout is None:
        await dist.drain(node)
    else:
        await asyncio.wait_for(dist.drain(node), timeout)


def statistics() -> dict[str, Any]:
    """This node's statistics: ``Node.statistics()`` (processes, queued messages,
    the deepest mailboxes and dropped counts) plus ``"links"``, per peer: the
    bytes queued on the link and whether it is paused either way."""
    from ..runtime.lowlevel import current_node
    from ._manager import of

    node = current_node()
    stats = node.statistics()
    dist = of(node)
    stats["links"] = dist.link_statistics() if dist is not None else {}
    return stats

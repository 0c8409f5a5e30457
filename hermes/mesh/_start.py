"""Starting a node's mesh: the cookie rule for non-loopback interfaces, the
listener, static peers."""
from __future__ import annotations

import ipaddress

from .._config import NodeConfig
from .._errors import HermesError
from ..runtime.lowlevel import Node
from ..transport import PeerInfo, resolve_cookie
from ._connecting import _strerror
from ._manager import Distribution


async def start(node: Node, config: NodeConfig) -> Distribution:
    """Start distribution for ``node``: resolve the cookie and listen on ``host:port``.

    ``config.peers``: the static discovery strategy, addresses that this node
    connects to and keeps reconnecting to."""
    host, port, hidden, listen, peers = config.host, config.port, config.hidden, config.listen, config.peers
    if listen and not is_loopback(host):
        resolved = resolve_cookie(config.cookie, create=False)
    else:
        resolved = resolve_cookie(config.cookie)
    if listen and not is_loopback(host) and resolved.source == "generated":
        raise HermesError(f"refusing to listen on {host} with a cookie made up just now: other machines "
                          "cannot know it. Pass cookie=, set HERMES_COOKIE or write ~/.hermes/cookie.")
    dist = Distribution(node, resolved.value, hidden=hidden, tick_interval=config.tick_interval,
                        max_frame=config.max_frame, connect_timeout=config.connect_timeout,
                        max_link_buffer=config.max_link_buffer, tls=config.tls)
    node.dist = dist
    if listen:
        try:
            await dist.listen(host, port)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {_strerror(exc)}: choose another "
                          "port (0: any free one) or stop the process that holds it") from exc
    else:
        dist.local = PeerInfo(node.name, node.creation, (host, 0), hidden)
    if peers:
        dist.keep_connected(list(peers))
    return dist


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

"""The mesh: this node's connections to the other nodes, between the runtime and the transport.

It owns the listener, one authenticated ``Connection`` per peer name, and
turns the runtime's remote operations into frames and frames back into
runtime operations (the frame table). For the layers above it offers:

- ``of(node)``: the node's ``Distribution`` (``None`` on a node that is not
  distributed);
- ``Distribution.register_frame(tag, handler)``: a layer's own frames;
- ``Distribution.multicast(nodes, frame)``: pickle once, one frame per node;
- ``Distribution.on_node_up`` / ``on_node_down``: the one path by which a
  node's arrival or loss reaches pg, pubsub, presence and discovery.

It knows nothing of registries, process groups or pubsub.
"""
from __future__ import annotations

from .._config import parse_address
from ._backpressure import drain, statistics
from ._manager import Distribution, of, portable_reason
from ._start import is_loopback, start
from ..transport import aligned_delay  # periodic work of the layers, woken with the ticks

__all__ = ["Distribution", "drain", "is_loopback", "of", "parse_address", "portable_reason", "start", "statistics"]
__all__ += ["aligned_delay"]

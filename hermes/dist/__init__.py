"""Distribution: node identity, cookie, handshake, framing, codec, connections and the mesh.

The transport (``_codec``, ``_cookie``, ``_handshake``, ``_connection``,
``_endpoints``) knows nothing of actors; ``_manager`` owns this node's side of
the mesh and ``_frames`` maps arriving frames onto the runtime's routing.
"""

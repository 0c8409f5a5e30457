"""Distribution: node identity, cookie, handshake, framing, codec, connections and the mesh.

The transport (``_connection``, ``_handshake``, ``_codec``) knows nothing of
actors; ``_manager`` maps frames onto the runtime's routing.
"""

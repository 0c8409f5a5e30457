"""TLS for node-to-node links and the pg service: the ``ssl`` contexts, built once per node.

What it owns: ``server_context`` and ``client_context`` from a ``TLSConfig``
(standard-library ``ssl``), and ``describe``, the one line that says why a TLS
handshake failed.

Rules:

- Mutual: ``CERT_REQUIRED`` on both sides, so a peer without a certificate
  that chains to ``cafile`` never gets a byte through; TLS 1.2 is the minimum.
- ``check_hostname`` is off, deliberately. A Hermes cluster's CA is private to
  the cluster (``python -m hermes certs``, or the operator's own): *any*
  certificate it signed is a member. Nodes are dialled by whatever address
  discovery or a peer's list gave (an IP, a NAT address, a container name),
  which need not match the certificate's names, and a node's identity is its
  node name, proven by the cookie handshake that still runs inside the TLS
  session. What TLS adds is: nobody without a CA-signed key may talk at all,
  and nobody on the path can read or change a frame.

What it must not know: sockets, asyncio, frames, actors.
"""
from __future__ import annotations

import ssl

from hermes._config import TLSConfig

__all__ = ["client_context", "describe", "server_context"]


def _context(purpose: ssl._SSLMethod, tls: TLSConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(tls.certfile, tls.keyfile)
        context.load_verify_locations(cafile=tls.cafile)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"TLSConfig: cannot load {tls.certfile}, {tls.keyfile} or {tls.cafile}: {exc}") from exc
    return context


def server_context(tls: TLSConfig) -> ssl.SSLContext:
    """For the accepting side: presents our certificate, requires the peer's."""
    return _context(ssl.PROTOCOL_TLS_SERVER, tls)


def client_context(tls: TLSConfig) -> ssl.SSLContext:
    """For the connecting side: presents our certificate, requires the peer's (no hostname check: see above)."""
    context = _context(ssl.PROTOCOL_TLS_CLIENT, tls)
    context.check_hostname = False  # set before verify_mode could be relaxed; CERT_REQUIRED stays
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def describe(exc: BaseException) -> str:
    """Why a TLS handshake failed, in a few words (``ssl`` messages carry the OpenSSL reason)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate rejected: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"TLS error: {exc.reason}"
    if isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

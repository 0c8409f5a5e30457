"""The pg service as a program: start it, find it, ping it (for the CLI, LocalCluster, scripts).

The service itself (``_service``, ``_directory``, ``_wire``) is pg's own
business; this is what the layers above and the tools may use of it.
"""
from __future__ import annotations

from ._service import DEFAULT_PORT, free_port, serve, start_service_process
from ._wire import ServiceConnection, ServiceUnavailable, ping_service

__all__ = ["DEFAULT_PORT", "ServiceConnection", "ServiceUnavailable", "free_port", "ping_service", "serve",
           "start_service_process"]

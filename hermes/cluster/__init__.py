"""Running clusters: ``LocalCluster`` and the node process entry point."""
from __future__ import annotations

from ._local import LocalCluster

__all__ = ["LocalCluster"]

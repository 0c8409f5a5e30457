"""Running clusters: ``LocalCluster`` and the node process entry point."""
from __future__ import annotations

from ._local import LocalCluster
from ._nodeproc import run_node

__all__ = ["LocalCluster", "run_node"]

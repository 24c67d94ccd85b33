"""The drop-in name: ``from mlbench_metrics.api import ApiClient`` as ``mlbench_core.api``.

Code written for the upstream client works after changing only the import; the client
itself lives in :mod:`mlbench_metrics.client` (the wire layer), and this module only
gives it the upstream module's name.
"""

from __future__ import annotations

from .client.api import MLBENCH_BACKENDS, MLBENCH_IMAGES, ApiClient, BatchResult

__all__ = ["MLBENCH_BACKENDS", "MLBENCH_IMAGES", "ApiClient", "BatchResult"]

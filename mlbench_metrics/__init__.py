"""mlbench-metrics: record training metrics to an MLBench dashboard."""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]

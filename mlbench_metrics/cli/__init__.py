"""The command line, ``mlbench-metrics`` (also ``python -m mlbench_metrics.cli``).

``main`` parses and dispatches; one module per group of commands: ``runs`` (runs
list/show/delete/...), ``points`` (metrics show/export), ``sync`` (a spool to a
server), ``demo``; ``common`` holds what they share (exit codes, the client, progress)
and ``text`` the tables. Commands import the client and the server when they run, so
``--help`` stays fast.
"""

from __future__ import annotations

from .main import main

__all__ = ["main"]

"""Process delivery: an agent process delivers what the training process writes.

With ``MetricsLogger(delivery="process")`` the training process only writes each record
into the durable log (``spool/durable``); a delivery agent, ``python -m
mlbench_metrics.agent``, tails that log and delivers it with the same dispatcher and
client a logger uses in its own process, marking deliveries in the log. It outlives
the training process: what ``log()`` returned from is delivered even after a SIGKILL.

* ``settings.py``: :class:`AgentSettings`, what the agent is told;
* ``core.py``: :class:`AgentCore`, the agent's work (tail, deliver, publish, stop);
* ``link.py``: :class:`AgentLink`, the training process's side (start, watch, restart,
  read the status area; deliver from the process itself when no agent can start);
* ``adopt.py``: delivering what dead processes of the same run left in the spool;
* ``__main__.py``: the agent process.
"""

from __future__ import annotations

from .adopt import adopt, orphans
from .core import AgentCore
from .link import AgentLink
from .settings import AgentSettings

__all__ = ["AgentCore", "AgentLink", "AgentSettings", "adopt", "orphans"]

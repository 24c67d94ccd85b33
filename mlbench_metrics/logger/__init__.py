"""The logger and its assembly, in one place.

``metrics_logger.MetricsLogger`` is what a training script holds (the hot path and the
lifecycle), built on ``stamping`` (what every record carries: final name, rank, epoch,
step) and ``wiring`` (its parts, and ``inlet``, the one way records go in);
``settings`` resolves and checks its arguments and the environment once
(``LoggerConfig``); ``parts`` builds
the store, the dispatcher and the agent link it delivers through; ``current`` is the
module-level ``init()``/``log()``; ``own_run`` creates the run a logger was asked to
create and marks it; ``liveness`` makes the logger a writer of its run (signs of life,
its end) for run states; ``run_config`` checks and sends a run's hyperparameters (the
``config=`` of ``init()``, not the logger's settings).
"""

from __future__ import annotations

from .metrics_logger import MetricsLogger

__all__ = ["MetricsLogger"]

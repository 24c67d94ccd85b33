"""Lightning: :class:`MLBenchLogger`, a ``lightning.pytorch`` logger.

Example::

    from lightning.pytorch import Trainer
    from mlbench_metrics.integrations.lightning import MLBenchLogger

    trainer = Trainer(logger=MLBenchLogger(new_run="resnet20", url="127.0.0.1:8080"))
    trainer.fit(model)          # self.log("train_loss", loss) in the module is recorded

Lightning's rules for loggers hold, as for ``CSVLogger`` and ``WandbLogger``: only global
rank 0 logs (the metrics Lightning hands a logger are already reduced across ranks where
``sync_dist=True`` asked for it); other ranks get a do-nothing ``experiment``. Importing
this module imports Lightning (``lightning``, else the older ``pytorch_lightning``).
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any, Mapping

try:
    from lightning.fabric.utilities.logger import _add_prefix, _convert_params, _sanitize_callable_params
    from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
    from lightning.pytorch.utilities.rank_zero import rank_zero_only
except ImportError:  # the package's older name
    from lightning_fabric.utilities.logger import _add_prefix, _convert_params, _sanitize_callable_params
    from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

from ..logger import MetricsLogger
from ._run import RunLink, default_run_name

__all__ = ["MLBenchLogger"]


class MLBenchLogger(Logger):
    """Record a Lightning run's metrics and hyperparameters to an MLBench dashboard.

    ``self.log(...)`` in a ``LightningModule`` is recorded with Lightning's step (the
    global step), and the epoch goes in each record's metadata (not in a series of its
    own, as Lightning's ``epoch`` entry would be); ``save_hyperparameters()``
    (or :meth:`log_hyperparams`) becomes the run's configuration; at the end of ``fit``
    the run is marked finished, or failed when training raised (for a run this logger
    created). Metrics logged afterwards (``trainer.test``) go to the same run.

    Args:
        run_id: an existing run to log to (else ``MLBENCH_METRICS_RUN_ID``, else a new run).
        new_run: the name of the run to create (default ``lightning-<date>-<time>``).
        prefix: put in front of every metric name (joined with ``-``).
        experiment: a :class:`~mlbench_metrics.MetricsLogger` the program made itself; it
            is flushed at the end, not closed.
        **kwargs: more :class:`~mlbench_metrics.MetricsLogger` arguments: ``url``,
            ``client``, ``token``, ``config``, ``durable``, ...
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        run_id: int | str | None = None,
        *,
        new_run: str | None = None,
        prefix: str = "",
        experiment: MetricsLogger | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self._prefix = prefix
        self._link = RunLink(run_id, new_run or default_run_name("lightning"), experiment, **kwargs)

    @property
    def name(self) -> str:
        """The run's name as Lightning shows it: ``mlbench``."""
        return "mlbench"

    @property
    def version(self) -> int | str | None:
        """The run's id (None until the run is opened on rank 0)."""
        return self._link.run_id

    @property
    @rank_zero_experiment
    def experiment(self) -> MetricsLogger:
        """The :class:`~mlbench_metrics.MetricsLogger` (a do-nothing stand-in off rank 0)::

        self.logger.experiment.log("grad_norm", norm, step=self.global_step)
        """
        return self._link.logger()

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record ``metrics`` at ``step``.

        The ``epoch`` entry Lightning adds to every call is not a series of its own: it is
        the epoch in each record's metadata (charts draw against it from there), which
        halves what a step costs to deliver.
        """
        epoch = metrics.get("epoch")
        if epoch is not None:
            metrics = {name: value for name, value in metrics.items() if name != "epoch"}
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        self._link.log(metrics, step=step, epoch=None if epoch is None else float(epoch))

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Add ``params`` to the run's configuration (shown on the run's page)."""
        converted: dict[str, Any] = _sanitize_callable_params(_convert_params(params))
        self._link.update_config(converted)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """End the run: ``"failed"`` marks it failed, anything else finished."""
        self._link.close(failed=status == "failed")

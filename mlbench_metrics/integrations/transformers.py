"""Hugging Face Transformers: :class:`MLBenchCallback`, a ``TrainerCallback``.

Example::

    from transformers import Trainer
    from mlbench_metrics.integrations.transformers import MLBenchCallback

    trainer = Trainer(model, args, train_dataset=ds, callbacks=[MLBenchCallback(url="127.0.0.1:8080")])
    trainer.train()

Everything the Trainer logs (``loss``, ``grad_norm``, ``learning_rate``, ``eval_*``, the
fractional ``epoch``, the final ``train_runtime``...) is recorded under the Trainer's own
name at ``state.global_step``, as in ``trainer.state.log_history``. Only the main process
records (``state.is_world_process_zero``), as the Trainer's own integrations do.

``report_to="mlbench"`` is not offered: the Trainer accepts only the names in its own
table (``transformers.integrations.integration_utils.INTEGRATION_TO_CALLBACK``), which
has no public way to add one, and ``report_to="all"`` looks only for the integrations it
knows. Importing this module imports ``transformers``.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from ._run import RunLink, default_run_name

__all__ = ["MLBenchCallback"]


class MLBenchCallback(TrainerCallback):
    """Record a ``Trainer``'s logs, arguments and model configuration to an MLBench dashboard.

    At the start of training the run's configuration becomes the model's configuration
    with the ``TrainingArguments`` over it (as the W&B integration merges them); each
    ``on_log`` is recorded at ``state.global_step`` with the whole epoch in the metadata;
    the end of training closes the logger, marking a run it created finished. Logs after
    that (``trainer.evaluate()``) go to the same run, delivered at :meth:`close` or exit.

    Args:
        run_id: an existing run to log to (else ``MLBENCH_METRICS_RUN_ID``, else a new run).
        new_run: the name of the run to create (default ``transformers-<date>-<time>``).
        **kwargs: more :class:`~mlbench_metrics.MetricsLogger` arguments: ``url``,
            ``client``, ``token``, ``config``, ``durable``, ...
    """

    def __init__(self, run_id: int | str | None = None, *, new_run: str | None = None, **kwargs: Any) -> None:
        self._link = RunLink(run_id, new_run or default_run_name("transformers"), **kwargs)

    @property
    def run_id(self) -> int | None:
        """The run's id, once training started (or when given)."""
        return self._link.run_id

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Open the run and store the model's configuration and the arguments as its config."""
        if not state.is_world_process_zero:
            return
        config: dict[str, Any] = {}
        model_config = getattr(model, "config", None)
        if model_config is not None and hasattr(model_config, "to_dict"):
            config.update(model_config.to_dict())
        config.update(args.to_dict())
        self._link.logger()
        self._link.update_config(config)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Record ``logs`` at ``state.global_step``."""
        if not state.is_world_process_zero or not logs:
            return
        self._link.log(logs, step=state.global_step, epoch=state.epoch)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Deliver everything and close: a run this callback created is marked finished."""
        if state.is_world_process_zero:
            self._link.close()

    def close(self) -> None:
        """Deliver and close what was logged after training (``trainer.evaluate()``)."""
        self._link.close()

"""Keras 3: :class:`MLBenchCallback`, a ``keras.callbacks.Callback``.

Example::

    from mlbench_metrics.integrations.keras import MLBenchCallback

    model.fit(x, y, epochs=5, callbacks=[MLBenchCallback(new_run="mnist-mlp", url="127.0.0.1:8080")])

Names follow ``keras.callbacks.TensorBoard``: each batch's logs as ``batch_<name>``
(``batch_loss``), each epoch's as ``epoch_<name>`` (``epoch_loss``, ``epoch_val_loss``),
all at the step counted in batches since the callback's first ``fit`` (1 after the first
batch), with the epoch in the metadata. Any backend (JAX, TensorFlow, torch); importing
this module imports ``keras``.
"""

from __future__ import annotations

from typing import Any, Mapping, Union

import keras

from ._run import RunLink, default_run_name

__all__ = ["MLBenchCallback"]

UpdateFreq = Union[str, int]


class MLBenchCallback(keras.callbacks.Callback):
    """Record ``model.fit``'s logs and settings to an MLBench dashboard.

    At the start of training the run's configuration becomes ``fit``'s parameters
    (``epochs``, ``steps``) and the optimizer's configuration (``optimizer``); the end of
    training closes the logger, marking a run it created finished.

    Args:
        run_id: an existing run to log to (else ``MLBENCH_METRICS_RUN_ID``, else a new run).
        new_run: the name of the run to create (default ``keras-<date>-<time>``).
        update_freq: ``"batch"`` (the default: every batch), ``"epoch"`` (epochs only) or
            N: every N-th batch, as ``keras.callbacks.TensorBoard`` takes it.
        **kwargs: more :class:`~mlbench_metrics.MetricsLogger` arguments: ``url``,
            ``client``, ``token``, ``config``, ``durable``, ...

    Raises:
        ValueError: ``update_freq`` is none of those.
    """

    def __init__(
        self,
        run_id: int | str | None = None,
        *,
        new_run: str | None = None,
        update_freq: UpdateFreq = "batch",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if update_freq == "batch":
            update_freq = 1
        if not (update_freq == "epoch" or (isinstance(update_freq, int) and update_freq >= 1)):
            raise ValueError(
                f"update_freq must be 'batch', 'epoch' or a positive number of batches, not {update_freq!r}"
            )
        self._every = 0 if update_freq == "epoch" else int(update_freq)
        self._link = RunLink(run_id, new_run or default_run_name("keras"), **kwargs)
        self._step = 0
        self._epoch = 0

    @property
    def run_id(self) -> int | None:
        """The run's id, once training started (or when given)."""
        return self._link.run_id

    @property
    def step(self) -> int:
        """Batches trained since the first ``fit`` with this callback."""
        return self._step

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        """Open the run; ``fit``'s parameters and the optimizer's settings become its config."""
        self._link.logger()
        config: dict[str, Any] = dict(self.params or {})
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and hasattr(optimizer, "get_config"):
            config["optimizer"] = optimizer.get_config()
        self._link.update_config(config)

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Remember the epoch for the batches' metadata."""
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Count the step; record the batch's logs as ``batch_<name>`` when due."""
        self._step += 1
        if logs and self._every and self._step % self._every == 0:
            self._link.log({"batch_" + k: v for k, v in logs.items()}, step=self._step, epoch=self._epoch)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Record the epoch's logs (validation included) as ``epoch_<name>``."""
        if logs:
            self._link.log({"epoch_" + k: v for k, v in logs.items()}, step=self._step, epoch=epoch)

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        """Deliver everything and close: a run this callback created is marked finished."""
        self._link.close()

    def close(self) -> None:
        """Deliver and close what was logged after training; nothing to do otherwise."""
        self._link.close()

"""PyTorch helpers for a hand-written training loop, as MLBench's benchmarks are.

Example::

    from mlbench_metrics.integrations import torch as mt

    with mt.timer(log, "fwd_pass"):          # waits for the GPU's kernels when CUDA is in use
        loss = criterion(model(x), y)
    loss.backward()
    mt.log_grad_norm(log, model, step=step)  # "grad_norm": the total 2-norm of the gradients
    mt.log_learning_rates(log, optimizer, step=step)  # "lr" (or "lr_0", "lr_1"... per group)

:class:`Tracker` is ``mlbench_metrics.compat.Tracker`` (upstream's phases, stats and goal,
unchanged) with each phase mark taken after the GPU finished, and, given a ``logger``,
its records sent through that logger. Ranks need nothing here: a
:class:`~mlbench_metrics.MetricsLogger` takes them from an initialised process group.
Importing this module imports ``torch``.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Union

import torch

from ..compat.tracker import Tracker as _CompatTracker
from ..logger import MetricsLogger
from ..timing import Timer

__all__ = ["SyncedTimer", "Tracker", "cuda_in_use", "grad_norm", "log_grad_norm", "log_learning_rates", "timer"]

_log = logging.getLogger("mlbench_metrics.integrations")

Parameters = Union[torch.nn.Module, Iterable[torch.Tensor], torch.Tensor]


def cuda_in_use() -> bool:
    """Whether this process has started CUDA (without starting it to find out)."""
    return bool(torch.cuda.is_available() and torch.cuda.is_initialized())


class SyncedTimer:
    """A :class:`~mlbench_metrics.Timer` that waits for the GPU at both ends.

    CUDA kernels run asynchronously: without a synchronisation a timer measures their
    launch. Entering waits for work queued before (so it is not counted); leaving waits
    for the block's own work, then records.
    """

    __slots__ = ("_device", "timer")

    def __init__(self, timer: Timer, device: torch.device | int | None = None) -> None:
        self.timer = timer
        self._device = device

    def __enter__(self) -> Timer:
        torch.cuda.synchronize(self._device)
        return self.timer.__enter__()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        torch.cuda.synchronize(self._device)
        self.timer.__exit__(exc_type, exc, tb)


def timer(
    logger: MetricsLogger,
    name: str,
    cumulative: bool = False,
    *,
    sync: bool | None = None,
    device: torch.device | int | None = None,
) -> Timer | SyncedTimer:
    """A timer for ``with``: the logger's own, synchronised with CUDA when it is in use.

    Args:
        logger: where the duration is recorded.
        name: the metric's name (``"fwd_pass"``).
        cumulative: record the running total of time spent.
        sync: synchronise (default: when this process uses CUDA).
        device: the CUDA device to wait for (default: the current one).
    """
    plain = logger.timer(name, cumulative)
    if sync is None:
        sync = cuda_in_use()
    return SyncedTimer(plain, device) if sync else plain


def _tensors(parameters: Parameters) -> list[torch.Tensor]:
    if isinstance(parameters, torch.nn.Module):
        return list(parameters.parameters())
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    return list(parameters)


def grad_norm(parameters: Parameters, norm_type: float = 2.0) -> float:
    """The total norm of the gradients of ``parameters`` (a model, or its parameters), as
    ``torch.nn.utils.clip_grad_norm_`` computes it; 0.0 when none has a gradient."""
    grads = [p.grad.detach() for p in _tensors(parameters) if p.grad is not None]
    if not grads:
        return 0.0
    norms = [torch.linalg.vector_norm(g, norm_type) for g in grads]
    if len({n.device for n in norms}) > 1:
        norms = [n.to(norms[0].device) for n in norms]
    return float(torch.linalg.vector_norm(torch.stack(norms), norm_type).item())


def log_grad_norm(
    logger: MetricsLogger,
    parameters: Parameters,
    name: str = "grad_norm",
    step: int | None = None,
    norm_type: float = 2.0,
) -> float:
    """Record :func:`grad_norm` under ``name`` (after ``backward()``, before ``zero_grad()``).

    An infinite or NaN norm is recorded as it is: a diverging run must show.

    Returns:
        The norm.
    """
    value = grad_norm(parameters, norm_type)
    logger.log(name, value, step=step)
    return value


def log_learning_rates(
    logger: MetricsLogger, optimizer: torch.optim.Optimizer, name: str = "lr", step: int | None = None
) -> list[float]:
    """Record each parameter group's learning rate: ``name`` for one group, ``name_<i>`` for several.

    Returns:
        The learning rates, one per group.
    """
    rates = [float(group["lr"]) for group in optimizer.param_groups]
    if len(rates) == 1:
        logger.log(name, rates[0], step=step)
    else:
        logger.log_many({f"{name}_{i}": lr for i, lr in enumerate(rates)}, step=step)
    return rates


class Tracker(_CompatTracker):
    """``mlbench_metrics.compat.Tracker``, with phase marks taken after the GPU finished.

    The constructor, phases (``batch_start``, ``record_batch_fwd_pass``, ...,
    ``batch_end``), ``epoch_end`` and stats are upstream's, so code written for
    ``compat.Tracker`` (or ``mlbench_core``'s) moves over by changing the import. What
    each epoch records is the same: each phase's seconds in it (``fwd_pass``,
    ``comp_loss``, ``backprop``, ``agg``, ``opt_step``, ...), ``CumulativeTrainTimeEpoch``,
    the stats given with ``log_to_api=True``, and once the goal is reached
    ``TaskResult``, ``TotalCumulativeTrainTime`` and ``global_cum_<phase>``.

    Args:
        *args: ``compat.Tracker``'s: ``metrics, run_id, rank, goal, ...``.
        logger: send through this :class:`~mlbench_metrics.MetricsLogger` (its rank names
            the series) instead of ``LogMetrics`` (a logger per run and rank).
        sync_cuda: synchronise before each mark (default: when this process uses CUDA).
        **kwargs: ``compat.Tracker``'s keyword arguments.
    """

    def __init__(
        self, *args: Any, logger: MetricsLogger | None = None, sync_cuda: bool | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.logger = logger
        self._sync_cuda = sync_cuda
        self._refused: set[str] = set()

    def record_batch_step(self, name: str) -> None:
        """Mark the end of phase ``name``, once the GPU finished the phase's work."""
        if self._sync_cuda or (self._sync_cuda is None and cuda_in_use()):
            torch.cuda.synchronize()
        super().record_batch_step(name)

    def _send(self, name: str, value: Any) -> None:
        logger = self.logger
        if logger is None:
            super()._send(name, value)
            return
        if logger.epoch != self.current_epoch:
            logger.epoch = self.current_epoch
        if isinstance(value, torch.Tensor):
            value = value.item()
        try:
            logger.log(name, value if isinstance(value, (int, float)) else str(value))
        except (TypeError, ValueError) as exc:  # a long TaskResult: say so, and go on training
            if name not in self._refused:
                self._refused.add(name)
                _log.warning("Tracker: %r is not recorded: %s", name, exc)

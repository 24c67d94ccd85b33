"""The torch helpers in a hand-written loop, as MLBench's benchmarks write theirs."""

from __future__ import annotations

import pytest
import torch
from readback import epochs, points

from mlbench_metrics import MetricsLogger, Timer
from mlbench_metrics.integrations import torch as mt
from mlbench_metrics.server import ServerHandle

from helpers import create_run


def _model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.1}, {"params": model[2].parameters(), "lr": 0.01}]
    )
    return model, optimizer


def test_grad_norm_and_learning_rates_are_recorded_as_torch_computes_them(server: ServerHandle) -> None:
    run = create_run(server.url)
    model, optimizer = _model()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    norms: list[float] = []
    with MetricsLogger(run["id"], url=server.address, rank=0) as log:
        for step in range(3):
            x = torch.randn(8, 4)
            loss = torch.nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
            optimizer.zero_grad()
            loss.backward()
            norm = mt.log_grad_norm(log, model, step=step)
            assert norm == pytest.approx(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)))
            norms.append(norm)
            assert mt.log_learning_rates(log, optimizer, step=step) == [0.1 * 0.5**step, 0.01 * 0.5**step]
            optimizer.step()
            scheduler.step()
    stored = points(server, run["id"])
    assert stored["grad_norm @ 0"] == [(i, pytest.approx(n)) for i, n in enumerate(norms)]
    assert stored["lr_0 @ 0"] == [(i, pytest.approx(0.1 * 0.5**i)) for i in range(3)]
    assert stored["lr_1 @ 0"] == [(i, pytest.approx(0.01 * 0.5**i)) for i in range(3)]
    assert mt.grad_norm(torch.nn.Linear(2, 2)) == 0.0


def test_the_timer_waits_for_cuda_only_when_cuda_is_in_use(
    server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = create_run(server.url)
    with MetricsLogger(run["id"], url=server.address) as log:
        assert not mt.cuda_in_use()  # a CPU build: the logger's own timer, nothing added
        assert isinstance(mt.timer(log, "fwd_pass"), Timer)
        # No GPU here: what the synchronised timer does around its block is checked in order.
        calls: list[str] = []
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))
        synced = mt.timer(log, "fwd_pass", sync=True)
        assert isinstance(synced, mt.SyncedTimer)
        with synced as t:
            calls.append("block")
        assert calls == ["sync", "block", "sync"]
        assert t.last >= 0
    assert len(points(server, run["id"])["fwd_pass"]) == 1


def test_tracker_code_moves_over_unchanged_and_records_each_phase_per_epoch(server: ServerHandle) -> None:
    class Accuracy:
        name = "Prec@1"

    run = create_run(server.url)
    model, optimizer = _model()
    with MetricsLogger(run["id"], url=server.address, rank=0) as log:
        tracker = mt.Tracker([Accuracy()], run["id"], 0, logger=log)
        tracker.start()
        for _epoch in range(2):
            tracker.train()
            for _ in range(3):
                tracker.batch_start()
                x = torch.randn(8, 4)
                tracker.record_batch_load()
                out = model(x)
                tracker.record_batch_fwd_pass()
                loss = torch.nn.functional.mse_loss(out, x.sum(dim=1, keepdim=True))
                tracker.record_batch_comp_loss()
                optimizer.zero_grad()
                loss.backward()
                tracker.record_batch_backprop()
                optimizer.step()
                tracker.record_batch_opt_step()
                tracker.batch_end()
                tracker.record_loss(loss, 8, log_to_api=True)
            tracker.epoch_end()
    stored = points(server, run["id"])
    phases = ["batch_load", "fwd_pass", "comp_loss", "backprop", "opt_step", "end", "CumulativeTrainTimeEpoch"]
    assert sorted(stored) == sorted([f"{p} @ 0" for p in [*phases, "train_loss"]])
    for phase in phases:
        values = [v for _, v in stored[f"{phase} @ 0"]]
        assert values == pytest.approx(tracker.epoch_metrics[phase]), phase
        assert epochs(server, run["id"], f"{phase} @ 0") == [0, 1]
    assert epochs(server, run["id"], "train_loss @ 0") == [0] * 3 + [1] * 3
    assert len(tracker.cumulative_train_time) == 6

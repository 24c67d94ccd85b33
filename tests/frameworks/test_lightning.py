"""A real ``Trainer.fit`` with MLBenchLogger beside Lightning's own CSVLogger: the same metrics."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from readback import epochs, points, run
from torch.utils.data import DataLoader, TensorDataset

from mlbench_metrics.integrations.lightning import MLBenchLogger
from mlbench_metrics.server import ServerHandle

logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


class TinyRegression(pl.LightningModule):
    def __init__(self, lr: float = 0.05, hidden: int = 8, fail_at: int = -1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step == self.hparams.fail_at:
            raise RuntimeError("diverged")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _loader() -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8)


def _trainer(tmp_path: Path, *loggers: Any) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=2,
        log_every_n_steps=1,
        logger=list(loggers),
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )


def _csv_metrics(path: str) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[int]]]:
    """What Lightning handed its own logger: name -> [(step, value), ...], and name -> [epoch, ...]."""
    out: dict[str, list[tuple[int, float]]] = {}
    epochs: dict[str, list[int]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for name, value in row.items():
                if name not in ("step", "epoch") and value != "":
                    out.setdefault(name, []).append((int(row["step"]), float(value)))
                    epochs.setdefault(name, []).append(int(float(row["epoch"])))
    return out, epochs


def test_fit_records_every_metric_with_its_step_the_hyperparameters_and_the_end(
    server: ServerHandle, tmp_path: Path
) -> None:
    ours = MLBenchLogger(new_run="lightning-fit", url=server.address, prefix="")
    theirs = CSVLogger(str(tmp_path), name="csv")
    trainer = _trainer(tmp_path, ours, theirs)
    trainer.fit(TinyRegression(), _loader(), _loader())

    run_id = ours.version
    assert isinstance(run_id, int)
    expected, expected_epochs = _csv_metrics(str(Path(theirs.log_dir) / "metrics.csv"))
    assert {"train_loss_step", "train_loss_epoch", "val_loss"} <= set(expected)
    stored = points(server, run_id)
    assert sorted(stored) == sorted(expected)
    for name, rows in expected.items():
        got = stored[name]
        assert [step for step, _ in got] == [step for step, _ in rows], name
        assert all(math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(got, rows)), name
        assert epochs(server, run_id, name) == expected_epochs[name], name  # Lightning's epoch: in the metadata
    assert epochs(server, run_id, "train_loss_epoch") == [0, 1]
    assert run(server, run_id).config() == {"lr": 0.05, "hidden": 8, "fail_at": -1}
    assert run(server, run_id).state == "finished"


def test_an_exception_in_training_marks_the_run_failed(server: ServerHandle, tmp_path: Path) -> None:
    ours = MLBenchLogger(new_run="lightning-fails", url=server.address)
    with pytest.raises(RuntimeError, match="diverged"):
        _trainer(tmp_path, ours).fit(TinyRegression(fail_at=3), _loader())
    run_id = ours.version
    assert isinstance(run_id, int)
    assert [step for step, _ in points(server, run_id)["train_loss_step"]] == [0, 1, 2]
    assert run(server, run_id).state == "failed"


def test_an_existing_run_and_testing_after_fit(server: ServerHandle, tmp_path: Path) -> None:
    created = MLBenchLogger(new_run="lightning-existing", url=server.address)
    run_id = created.experiment.run_id
    created.finalize("success")

    class WithTest(TinyRegression):
        def test_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("test_loss", torch.nn.functional.mse_loss(self.net(x), y))

    ours = MLBenchLogger(run_id, url=server.address, prefix="b")
    trainer = _trainer(tmp_path, ours)
    model = WithTest()
    trainer.fit(model, _loader())
    trainer.test(model, _loader(), verbose=False)
    assert ours.version == run_id
    names = set(points(server, run_id))
    assert {"b-train_loss_step", "b-test_loss"} <= names

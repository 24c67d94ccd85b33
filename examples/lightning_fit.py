"""Lightning: ``Trainer(logger=MLBenchLogger(...))``, and ``self.log`` in the module is recorded.

pip install -e '.[frameworks]'
python examples/lightning_fit.py                      # starts an embedded server for itself
python examples/lightning_fit.py --url 127.0.0.1:8080 # or logs to a running one
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from mlbench_metrics.integrations.lightning import MLBenchLogger

from _common import arguments, server_url, summary


class Regression(pl.LightningModule):
    def __init__(self, lr: float = 0.05, hidden: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()  # becomes the run's configuration
        self.net = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def loader(n: int) -> DataLoader[Any]:
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=32)


def main() -> None:
    args = arguments(__doc__, epochs=3)
    with server_url(args.url) as url:
        logger = MLBenchLogger(new_run="example-lightning", url=url)
        trainer = pl.Trainer(
            max_epochs=args.epochs,
            logger=logger,
            log_every_n_steps=1,
            accelerator="cpu",
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(Regression(), loader(512), loader(128))  # the run is marked finished at the end
        summary(int(str(logger.version)), url, lambda run: f": config {run.config()}")


if __name__ == "__main__":
    main()

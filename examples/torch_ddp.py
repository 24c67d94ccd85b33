"""PyTorch distributed, as MLBench's benchmarks run: 2 gloo workers, ranks found by the logger.

Each worker initialises its process group and opens a logger without ``rank=``: the
logger takes the rank and world size from the group. The torch helpers time phases
(synchronised with CUDA when it is in use), and log the gradient norm and learning rate.

    pip install -e '.[frameworks]'
    python examples/torch_ddp.py                      # starts an embedded server for itself
    python examples/torch_ddp.py --url 127.0.0.1:8080 # or logs to a running one
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from mlbench_metrics import MetricsLogger, Run
from mlbench_metrics.integrations import torch as mt

from _common import arguments, server_url, summary


def worker(rank: int, world_size: int, init_method: str, url: str, run_id: int, steps: int) -> None:
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    torch.manual_seed(rank)
    model = DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with MetricsLogger(run_id, url=url) as log:  # "train_loss @ <rank>", world_size in the metadata
        for step in range(steps):
            x = torch.randn(32, 8)
            with mt.timer(log, "fwd_pass"):
                loss = torch.nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
            optimizer.zero_grad()
            with mt.timer(log, "backprop"):
                loss.backward()  # DDP all-reduces the gradients
            mt.log_grad_norm(log, model, step=step)
            mt.log_learning_rates(log, optimizer, step=step)
            optimizer.step()
            log.log("train_loss", loss.item(), step=step)
    dist.destroy_process_group()


def main() -> None:
    args = arguments(__doc__, steps=20)
    with server_url(args.url) as url:
        train(url, args.steps)


def train(url: str, steps: int) -> None:
    given = os.environ.get("MLBENCH_METRICS_RUN_ID")  # under serve --exec: that run, marked by our exit
    run = (
        Run.get(int(given), url=url)
        if given
        else Run.create(
            "example-torch-ddp",
            2,
            custom_image_name="local",
            custom_image_command="python examples/torch_ddp.py",
            backend="gloo",
            url=url,
        )
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        init_method = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    mp.spawn(worker, args=(2, init_method, url, run.id, steps), nprocs=2, join=True)
    if not given:
        run.mark_finished()  # mp.spawn raised, had a worker failed
    summary(run.id, url)


if __name__ == "__main__":
    main()

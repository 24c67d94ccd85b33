"""A 2-process gloo job, as MLBench's benchmarks run: ranks come from the process group."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import requests
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from mlbench_metrics import MetricsLogger
from mlbench_metrics.server import ServerHandle

from helpers import create_run

STEPS = 5
_LAUNCHERS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID")


def _train(rank: int, world_size: int, init_method: str, address: str, run_id: int) -> None:
    """One worker: a tiny model under DDP; the logger finds its rank in the process group."""
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(torch.nn.Linear(4, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with MetricsLogger(run_id, url=address) as log:
            assert (log.rank, log.world_size) == (rank, world_size)
            for step in range(STEPS):
                x = torch.randn(8, 4)
                loss = torch.nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
                optimizer.zero_grad()
                loss.backward()  # DDP all-reduces the gradients here
                optimizer.step()
                log.log("loss", loss.item(), step=step)
            assert log.flush(60)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_gloo_workers_log_under_their_ranks(server: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*_LAUNCHERS, "MLBENCH_METRICS_RANK"):
        monkeypatch.delenv(name, raising=False)
    run = create_run(server.url)
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(_train, args=(2, init_method, server.address, run["id"]), nprocs=2, join=True)

    answer: dict[str, Any] = requests.get(f"{server.url}/api/runs/{run['id']}/points/", timeout=30).json()
    series = {s["name"]: s["points"] for s in answer["series"]}
    assert sorted(series) == ["loss @ 0", "loss @ 1"]
    for rank in (0, 1):
        points = series[f"loss @ {rank}"]
        assert points["step"] == list(range(STEPS))  # every record once, in order
        assert {json.loads(m)["world_size"] for m in points["metadata"]} == {2}
        assert set(points["rank"]) == {rank}

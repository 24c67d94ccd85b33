"""The official MLBench benchmark images and communication backends.

The same contents and tuple format as ``mlbench_core.api`` (mlbench-core 3.0.0), so code
that looks images up there finds them here. Importing this module costs nothing: the
embedded server uses it to validate ``image_name`` without loading the HTTP client.
"""

from __future__ import annotations

from typing import Dict, Final, List, Tuple

__all__ = ["MLBENCH_BACKENDS", "MLBENCH_IMAGES", "official_image_names"]

MLBENCH_BACKENDS: Final[List[str]] = ["MPI", "GLOO", "NCCL"]
"""The communication backends the dashboard knows (upstream compares case-sensitively)."""

_COMMAND: Final = "/conda/bin/python /codes/main.py --run_id {run_id} --rank {rank} --hosts {hosts} --backend {backend}"

MLBENCH_IMAGES: Final[Dict[str, Tuple[str, str, bool]]] = {
    "PyTorch Cifar-10 ResNet-20": ("mlbench/pytorch-cifar10-resnet20-all-reduce:latest", _COMMAND, True),
    "PyTorch Cifar-10 ResNet-20 (DDP)": ("mlbench/pytorch-cifar10-resnet20-ddp:latest", _COMMAND, True),
    "PyTorch Linear Logistic Regression": (
        "mlbench/pytorch-epsilon-logistic-regression-all-reduce:latest",
        _COMMAND,
        True,
    ),
    "PyTorch Language Modeling (AWD-LSTM)": ("mlbench/pytorch-wikitext2-lstm-all-reduce:latest", _COMMAND, True),
    "PyTorch Machine Translation GNMT": ("mlbench/pytorch-wmt16-gnmt-all-reduce:latest", _COMMAND, True),
    "PyTorch Machine Translation Transformer": (
        "mlbench/pytorch-wmt17-transformer-all-reduce:latest",
        _COMMAND,
        True,
    ),
    "Tensorflow Cifar-10 ResNet-20 Open-MPI": ("mlbench/tensorflow-cifar10-resnet:latest", _COMMAND, False),
    "PyTorch Distributed Backend benchmarking": ("mlbench/pytorch-backend-benchmark:latest", _COMMAND, True),
}
"""Official benchmark images: ``{name: (image_name, command, GPU_supported)}``."""


def official_image_names() -> dict[str, tuple[str, str, bool]]:
    """Map each official image string (what ``create_run`` sends) to its entry."""
    return {entry[0]: (name, entry[1], entry[2]) for name, entry in MLBENCH_IMAGES.items()}

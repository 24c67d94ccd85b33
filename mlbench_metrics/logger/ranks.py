"""This process's rank and the job's world size, found where launchers leave them.

In order: ``MLBENCH_METRICS_RANK`` (set by hand, it wins), an initialised
``torch.distributed`` process group, then the variables launchers set: ``RANK`` and
``WORLD_SIZE`` (torchrun, ``torch.distributed.launch``), ``OMPI_COMM_WORLD_RANK`` and
``OMPI_COMM_WORLD_SIZE`` (Open MPI's mpirun), ``PMI_RANK`` and ``PMI_SIZE`` (MPICH, Intel
MPI), ``SLURM_PROCID`` and ``SLURM_NTASKS`` (srun), and last ``LOCAL_RANK`` (the rank on
this machine, the job's rank only on one machine). The world size comes from the same
place as the rank.

torch is never imported here: the process group is asked only when the program has
imported ``torch.distributed`` itself. A bad value is warned about and skipped. No threads.
"""

from __future__ import annotations

import logging
import sys
from typing import Final, Mapping, NamedTuple, Optional

from ..env import ENV_RANK

__all__ = ["LAUNCHER_VARIABLES", "Placement", "find_placement"]

_log = logging.getLogger("mlbench_metrics")

LAUNCHER_VARIABLES: Final = (
    ("RANK", "WORLD_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
    ("SLURM_PROCID", "SLURM_NTASKS"),
    ("LOCAL_RANK", "LOCAL_WORLD_SIZE"),
)
"""``(rank variable, world size variable)`` pairs, read in this order."""


class Placement(NamedTuple):
    """Where this process sits in its job: its rank and the number of processes."""

    rank: Optional[int]
    world_size: Optional[int]


def find_placement(environ: Mapping[str, str]) -> Placement:
    """The rank and world size of this process (either None where nothing says).

    Args:
        environ: the environment to read (``os.environ`` in a logger).
    """
    own = _number(ENV_RANK, environ)
    group = _process_group()
    if own is not None:
        return Placement(own, group.world_size if group is not None else _launcher(environ).world_size)
    if group is not None:
        return group
    return _launcher(environ)


def _launcher(environ: Mapping[str, str]) -> Placement:
    for rank_name, size_name in LAUNCHER_VARIABLES:
        rank = _number(rank_name, environ)
        if rank is not None:
            return Placement(rank, _number(size_name, environ, minimum=1))
    return Placement(None, None)


def _process_group() -> Placement | None:
    """The default process group's rank and size, when the program initialised one."""
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return None
    try:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        return Placement(int(dist.get_rank()), int(dist.get_world_size()))
    except Exception as exc:  # a group being torn down, a stub module: the environment still says
        _log.debug("torch.distributed did not give a rank: %s", exc)
        return None


def _number(name: str, environ: Mapping[str, str], minimum: int = 0) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < minimum:
        _log.warning("ignoring %s=%r: not an integer of at least %d", name, raw, minimum)
        return None
    return value

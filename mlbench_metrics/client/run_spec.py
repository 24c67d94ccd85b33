"""What a new run is: the one spelling of the run specification and of its form.

:meth:`ApiClient.create_run` (upstream's signature) and :meth:`Run.create
<mlbench_metrics.Run.create>` both build a :class:`RunSpec` and send it through
:meth:`ApiClient.create_run_from`, so the defaults, the checks and the form the
dashboard reads live here once. No threads, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .dropin import REFUSED, RUN_REFUSED, run_name_text, sent
from .images import MLBENCH_BACKENDS, MLBENCH_IMAGES

__all__ = ["RunSpec"]


@dataclass(frozen=True)
class RunSpec:
    """A run to create, as the dashboard's "new run" form has it.

    Attributes:
        name: the run's name (a Kubernetes name: letters, digits and ``-``).
        num_workers: the number of worker nodes.
        num_cpus: CPU cores per worker.
        max_bandwidth: bandwidth between workers in Mbit/s (the dashboard ignores it).
        image: an official benchmark, a key of :data:`MLBENCH_IMAGES`.
        backend: one of :data:`MLBENCH_BACKENDS` (any case).
        custom_image_name: a Docker image to run instead of an official one.
        custom_image_command: the command to run in it.
        custom_backend: a backend outside :data:`MLBENCH_BACKENDS`.
        run_all_nodes: run the custom command on every worker, not only rank 0.
        gpu_enabled: use GPUs.
        light_target: use the light target goal.
    """

    name: str
    num_workers: int = 1
    num_cpus: float = 2.0
    max_bandwidth: int = 1000
    image: str | None = None
    backend: str | None = None
    custom_image_name: str | None = None
    custom_image_command: str | None = None
    custom_backend: str | None = None
    run_all_nodes: bool = False
    gpu_enabled: bool = False
    light_target: bool = False

    def form(self, problems: list[str]) -> dict[str, Any]:
        """The form fields upstream sends for this run; what the dashboard would refuse
        or store differently is added to ``problems``.

        Raises:
            ValueError: the image is not one of :data:`MLBENCH_IMAGES` (and no custom
                image is given), or both ``backend`` and ``custom_backend`` are given, as
                upstream refuses them.
        """
        data: dict[str, Any] = {
            "name": sent(run_name_text, self.name, problems, RUN_REFUSED),
            "num_workers": self.num_workers,
            "num_cpus": self.num_cpus,
            "max_bandwidth": self.max_bandwidth,
            "gpu_enabled": "true" if self.gpu_enabled else "false",
            "light_target": "true" if self.light_target else "false",
            "run_all_nodes": "true" if self.run_all_nodes else "false",
        }
        if self.custom_image_name is not None:
            data["image_name"] = "custom_image"
            data["custom_image_name"] = self.custom_image_name
            data["custom_image_command"] = self.custom_image_command
        elif self.image in MLBENCH_IMAGES:
            data["image_name"] = MLBENCH_IMAGES[self.image][0]
        else:
            known = ", ".join(repr(k) for k in MLBENCH_IMAGES)
            raise ValueError(f"image {self.image!r} not found; use custom_image_name or one of {known}")
        if self.custom_backend is not None and self.backend is not None:
            raise ValueError("custom_backend and backend are mutually exclusive")
        if self.custom_backend is not None:
            data["backend"] = "custom_backend"
            data["custom_backend"] = self.custom_backend
        elif isinstance(self.backend, str) and self.backend.upper() in MLBENCH_BACKENDS:
            data["backend"] = self.backend.upper()
        else:  # upstream leaves it out
            problems.append(
                f"backend {self.backend!r} is not one of {MLBENCH_BACKENDS} (for another, pass custom_backend): "
                f"it is left out, and {REFUSED}"
            )
        return data

"""The public surface: a sorted ``__all__`` that names exactly the public names, all typed."""

from __future__ import annotations

import importlib
from pathlib import Path

import mlbench_metrics

MODULES = [
    "mlbench_metrics",
    "mlbench_metrics.api",
    "mlbench_metrics.client",
    "mlbench_metrics.compat",
    "mlbench_metrics.delivery",
    "mlbench_metrics.errors",
    "mlbench_metrics.records",
    "mlbench_metrics.spool",
]


def _isort_key(name: str) -> tuple[int, str]:
    """The order ruff keeps ``__all__`` in: CONSTANTS, then Classes, then the rest."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def test_all_is_sorted_and_complete() -> None:
    names = mlbench_metrics.__all__
    assert names == sorted(names, key=_isort_key)
    public = {n for n in dir(mlbench_metrics) if not n.startswith("_")} - {"annotations"}
    modules = {n for n in public if type(getattr(mlbench_metrics, n)).__name__ == "module"}
    assert set(names) - {"__version__"} == public - modules


def test_every_exported_name_exists_and_is_documented() -> None:
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj):
                assert obj.__doc__, f"{module_name}.{name} has no docstring"


def test_package_ships_py_typed() -> None:
    assert (Path(mlbench_metrics.__file__).parent / "py.typed").exists()

"""The layers' direction: what each package may import, read from the source (no imports run)."""

from __future__ import annotations

import ast
from pathlib import Path

import mlbench_metrics

PACKAGE = Path(mlbench_metrics.__file__).parent

# package -> the package-level modules and packages it must never import (data flows
# from the logger through delivery to the client; the client knows none of them)
FORBIDDEN = {
    "client": {"delivery", "spool", "logger", "agent", "cli", "server", "compat", "runs", "points", "system"},
    "delivery": {"spool", "logger", "agent", "cli", "server", "compat"},
    "records": {"client", "delivery", "spool", "logger", "agent", "cli", "server", "compat"},
}


def _imported(path: Path) -> set[str]:
    """The first component under ``mlbench_metrics`` of every import in ``path``."""
    package = path.relative_to(PACKAGE).parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [])
                if parts:
                    found.add(parts[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("mlbench_metrics."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("mlbench_metrics."))
    return found


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / package).rglob("*.py")):
            bad = _imported(path) & forbidden
            if bad:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {sorted(bad)}")
    assert not wrong, "\n".join(wrong)


def test_the_top_of_the_package_stays_small() -> None:
    modules = [p.name for p in PACKAGE.glob("*.py")]
    assert len(modules) <= 12, sorted(modules)

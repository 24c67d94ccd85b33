"""The integrations against the real frameworks, on the CPU (``pip install -e '.[frameworks]'``).

Without the frameworks the whole directory is skipped with one line, however pytest is
pointed at it; under CI (``CI`` set) that is a failure instead, since ``.ci/run``
installs them. Nothing here downloads anything: models are built from configs, and the
hubs are told to stay offline.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

FRAMEWORKS = ("torch", "lightning", "transformers", "accelerate", "keras")

MISSING = [name for name in FRAMEWORKS if importlib.util.find_spec(name) is None]
WHY = f"frameworks not installed ({', '.join(MISSING)}): pip install -e '.[frameworks]'"

if MISSING:
    if os.environ.get("CI"):
        pytest.fail(f"framework tests cannot run in CI: {WHY}", pytrace=False)
    collect_ignore_glob = ["test_*.py"]  # their imports would fail; one item says why instead

    class _Missing(pytest.Item):
        def runtest(self) -> None:
            pytest.skip(WHY)

        def reportinfo(self) -> tuple[Path, int, str]:
            return self.path, 0, "tests/frameworks"

    def pytest_collection_modifyitems(session: pytest.Session, config: Any, items: list[pytest.Item]) -> None:
        if not any(isinstance(item, _Missing) for item in items):
            items.append(_Missing.from_parent(session, name="frameworks", path=Path(__file__).parent))


# Before any framework is imported: no hub, no telemetry, Keras on torch.
os.environ.setdefault("KERAS_BACKEND", "torch")
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

"""What the framework examples share: their command line, a server to log to, a summary."""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Callable, Iterator

from mlbench_metrics import Run


def arguments(doc: str | None, **defaults: int) -> argparse.Namespace:
    """``--url`` and an integer option per default (``epochs=3`` gives ``--epochs``)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start an embedded one)")
    for name, default in defaults.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    return parser.parse_args()


@contextlib.contextmanager
def server_url(given: str | None) -> Iterator[str]:
    """The server to log to: ``given``, else ``MLBENCH_METRICS_URL`` (set by ``serve --exec``),
    else an embedded one started here (127.0.0.1, a free port, a temporary database)."""
    url = given or os.environ.get("MLBENCH_METRICS_URL")
    if url:
        yield url
        return
    from mlbench_metrics.server import serve

    server = serve()
    try:
        yield server.address
    finally:
        server.stop()


def summary(run_id: int, url: str, about: Callable[[Run], str] = lambda run: "") -> None:
    """Print the run's state and how many points each of its series holds."""
    run = Run.get(run_id, url=url)
    print(f"run {run.id} {run.state}{about(run)}")
    for name, points in sorted(run.metrics().items()):
        print(f"  {name}: {len(points)} points")

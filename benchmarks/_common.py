"""Shared helpers for the benchmarks: results files, statistics, machine facts.

Every benchmark prints ratios against a baseline measured in the same run (the
machines are shared and noisy) and writes its figures to ``benchmarks/out/`` (ignored by
git, so a run never dirties the tree). ``benchmarks/results/`` holds the figures the
README quotes, copied there by hand when the README's table is updated.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import requests

OUT = Path(__file__).parent / "out"
# Headless Chromium as it must run here: no sandbox as root, no GPU, no background traffic.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(name: str, figures: dict[str, Any]) -> Path:
    """Write ``figures`` (plus machine facts) to ``out/<name>.json`` and return the path."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), **figures}
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    print(f"\nresults written to {path}")
    return path


def proc_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of process ``pid`` from ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def verdict(value: float, target: float, *, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "meets target" if ok else "MISSES target"


def create_run(url: str, name: str = "bench") -> int:
    """Create a custom-image run on the server at ``url`` (``http://host:port``); its id."""
    r = requests.post(
        f"{url}/api/runs/",
        data={
            "name": name,
            "num_workers": 1,
            "image_name": "custom_image",
            "custom_image_name": "x",
            "custom_image_command": "true",
            "backend": "GLOO",
        },
    )
    r.raise_for_status()
    return int(r.json()["id"])


def upstream_rate(url: str, run_id: int, n: int) -> float:
    """Metrics/s of the upstream client's pattern (``mlbench_core.api.ApiClient.post_metric``):
    ``executor.submit(requests.post, url, data=..., timeout=180)`` per metric, 5 workers,
    a new connection per call."""
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=5)
    endpoint = f"{url}/api/metrics/"
    start = time.perf_counter()
    futures = [
        executor.submit(
            requests.post,
            endpoint,
            data={
                "run_id": run_id,
                "name": "loss @ 0",
                "cumulative": False,
                "date": str(datetime.datetime.utcnow()),
                "value": str(i * 0.5),
                "metadata": "",
            },
            timeout=180,
        )
        for i in range(n)
    ]
    assert all(f.result().status_code == 201 for f in futures)
    elapsed = time.perf_counter() - start
    executor.shutdown()
    return n / elapsed

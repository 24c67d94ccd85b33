"""Helpers shared by the tests: upstream request bodies, runs, raw HTTP."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from typing import Any, Callable

import requests

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
DASHBOARD_RUN_KEYS = ["id", "name", "created_at", "finished_at", "state", "job_id", "job_metadata", "num_workers"]

# The exact bodies the upstream client sends (PROTOCOL.md, "Runs" and "Metrics").
OFFICIAL_RUN_BODY = (
    "name=run-official&num_workers=2&num_cpus=1.5&max_bandwidth=1000&gpu_enabled=true&light_target=false"
    "&run_all_nodes=false&image_name=mlbench%2Fpytorch-cifar10-resnet20-all-reduce%3Alatest&backend=MPI"
)
CUSTOM_RUN_BODY = (
    "name=run-custom&num_workers=1&num_cpus=2.0&max_bandwidth=1000&gpu_enabled=false&light_target=true"
    "&run_all_nodes=true&image_name=custom_image&custom_image_name=me%2Fimg%3A1&custom_image_command=sleep+1"
    "&backend=custom_backend&custom_backend=mybackend"
)
METRIC_BODY_1 = (
    "run_id={run_id}&name=loss+%40+0&cumulative=False&date=2026-11-27+01%3A00%3A27.108829&value=0.5&metadata="
)
METRIC_BODY_2 = (
    "run_id={run_id}&name=acc+%40+0&cumulative=True&date=2021-01-02+03%3A04%3A05&value=12"
    "&metadata=%7Brank%3A+0%2C+epoch%3A1.5%7D"
)

_names = itertools.count()


def unique_name(prefix: str = "run") -> str:
    """A run name no other test uses."""
    return f"{prefix}-{next(_names)}"


def wait_until(condition: Callable[[], bool], timeout: float = 60.0, what: str = "the condition") -> None:
    """Poll ``condition`` (every 20 ms, on an Event's wait) until true; fail after ``timeout``."""
    tick = threading.Event()  # never set: its wait() is the pause between polls
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        tick.wait(0.02)


def closed_port() -> str:
    """An address on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def port_8080_free() -> bool:
    """Nothing listens on 127.0.0.1:8080, the address the CLI falls back to."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8080))
        except OSError:
            return False
    return True


def create_run(base_url: str, name: str | None = None, session: Any = requests, **fields: Any) -> dict[str, Any]:
    """Create a custom-image run and return its JSON."""
    data = {
        "name": name or unique_name(),
        "num_workers": 1,
        "num_cpus": 1.0,
        "max_bandwidth": 1000,
        "gpu_enabled": "false",
        "light_target": "false",
        "run_all_nodes": "false",
        "image_name": "custom_image",
        "custom_image_name": "me/img:1",
        "custom_image_command": "true",
        "backend": "GLOO",
    }
    data.update(fields)
    response = session.post(f"{base_url}/api/runs/", data=data)
    assert response.status_code == 201, response.text
    return dict(response.json())


def raw_exchange(
    host: str, port: int, payload: bytes, *, read_until_close: bool = True, timeout: float = 10.0
) -> bytes:
    """Send raw bytes over one TCP connection and return everything read back."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload)
        if not read_until_close:
            return sock.recv(65536)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def values_stored(db_path: str, run_id: int, name: str = "x") -> list[int]:
    """The integer values the server holds for metric ``name`` of a run, sorted (a value
    stored twice shows twice)."""
    from mlbench_metrics.server.store import Store

    store = Store(db_path)
    try:
        series = dict(store.series(run_id=run_id))
    finally:
        store.close()
    return sorted(int(float(p[1])) for p in series.get(name, []))


def spool_batches(root: Any, run_id: int, endpoint: str, first: int, batches: int, size: int = 5) -> Any:
    """A dead writer's directory under ``root`` holding ``batches`` ordinary batches of
    ``size`` records "x" valued ``first``, ``first + 1``, ...; its path."""
    from mlbench_metrics.records import MetricBatch
    from mlbench_metrics.spool import BatchSpool, SpoolDir

    directory = SpoolDir(root, run_id, {"endpoint": endpoint})
    spool = BatchSpool(directory, 1 << 30)
    values = list(range(first, first + batches * size))
    spool.put(
        [
            MetricBatch(
                ["x"] * size,
                values[b * size : (b + 1) * size],
                [1] * size,
                [""] * size,
                [False] * size,
                batch_id=f"{first}-{b}",
            )
            for b in range(batches)
        ]
    )
    spool.close()
    directory.release(remove=False)
    return directory.path


def answered_within_a_second(url: str, headers: dict[str, str] | None = None, times: int = 1) -> None:
    """GET ``url`` ``times`` times; each must answer 200 within a second (a client that waits
    behind others gets a generous 30 s to answer, so a failure says how long it took)."""
    for _ in range(times):
        started = time.monotonic()
        r = requests.get(url, headers=headers, timeout=30)
        elapsed = time.monotonic() - started
        assert r.status_code == 200 and elapsed < 1.0, (r.status_code, elapsed)

"""The server against clients that do not read, bodies without a token, and whole-run exports.

Each case runs against a server process of this tree and, with ``--baseline DIR``, one of
another checkout (``/work/main``) on the same database in the same run, so the figures
are side by side (issue 20, items 2, 3 and 4):

* ``slow_readers``: the time of an authenticated ``GET /api/`` alone, then while 40
  connections pipeline requests for a static file and never read the answers;
* ``bodies``: the server's RSS before, at its highest while 8 connections without a token
  each send 59 MiB, and after they close;
* ``export``: one ``points?format=csv`` download (what the page's CSV button sends: no
  ``max_points``, gzip accepted) of a run of ``--points`` points: seconds, bytes, the
  server's peak RSS; then four at once (this tree only, unless ``--concurrent-baseline``:
  the baseline needed 5.7 GB).

    python benchmarks/server_hostile.py [--baseline /work/main] [--points 2000000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from mlbench_metrics.server import ServerProcess, spawn
from mlbench_metrics.server.store import Store

from _common import proc_mib, write_results

TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def server(db: str, tree: str | None) -> Iterator[ServerProcess]:
    """A server process on ``db``, importing the package from ``tree`` (None: this one)."""
    saved = os.environ.get("PYTHONPATH")
    if tree is not None:
        os.environ["PYTHONPATH"] = tree
    try:
        process = spawn(db, args=["--token", TOKEN])
    finally:
        if tree is not None:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
    try:
        yield process
    finally:
        process.close()


def _timed_get(url: str, timeout: float = 120.0) -> float:
    started = time.monotonic()
    try:
        requests.get(url, headers=AUTH, timeout=timeout).raise_for_status()
    except requests.Timeout:
        return timeout
    return time.monotonic() - started


def slow_readers(proc: ServerProcess) -> dict[str, Any]:
    alone = min(_timed_get(f"{proc.url}/api/") for _ in range(5))
    request = f"GET /static/js/charts.js HTTP/1.1\r\nHost: {proc.address}\r\n\r\n".encode()
    socks = []
    for _ in range(40):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", proc.port))
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.send(request * 400)
        socks.append(sock)
    try:
        time.sleep(1.0)  # a benchmark, not a test: let the workers fill the sockets
        during = [_timed_get(f"{proc.url}/api/") for _ in range(3)]
    finally:
        for sock in socks:
            sock.close()
    print(f"  slow readers: GET /api/ alone {alone * 1000:.1f} ms; behind 40 non-readers {max(during):.2f} s")
    return {"alone_s": alone, "behind_non_readers_s": during}


def bodies(proc: ServerProcess, connections: int = 8, mib: int = 59) -> dict[str, Any]:
    assert proc.pid is not None
    pid = proc.pid
    before = proc_mib(pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.05):
            peak = max(peak, proc_mib(pid))

    def send() -> None:
        head = f"POST /api/metrics/batch/ HTTP/1.1\r\nHost: {proc.address}\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {mib * 2**20}\r\n\r\n"
        piece = b"x" * 2**20
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", proc.port), timeout=60) as sock:
            sock.sendall(head.encode())
            for _ in range(mib):
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass

    sampler = threading.Thread(target=sample)
    sampler.start()
    senders = [threading.Thread(target=send) for _ in range(connections)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    done.set()
    sampler.join()
    time.sleep(1.0)
    after = proc_mib(pid)
    print(f"  bodies without a token: RSS {before:.0f} -> peak {peak:.0f} -> after {after:.0f} MiB")
    return {"rss_before_mib": before, "rss_peak_mib": peak, "rss_after_mib": after, "connections": connections}


def _export(url: str, out: dict[str, Any]) -> None:
    started = time.monotonic()
    with requests.get(url, headers=AUTH, timeout=600, stream=True) as r:
        r.raise_for_status()
        size = sum(len(piece) for piece in r.raw.stream(1 << 20, decode_content=False))
    out["seconds"] = time.monotonic() - started
    out["bytes_on_wire"] = size


def export(proc: ServerProcess, run_id: int, concurrent: bool) -> dict[str, Any]:
    assert proc.pid is not None
    url = f"{proc.url}/api/runs/{run_id}/points/?format=csv"
    requests.get(f"{proc.url}/api/runs/{run_id}/series/", headers=AUTH, timeout=60)
    base = proc_mib(proc.pid)
    one: dict[str, Any] = {}
    _export(url, one)
    one["peak_rss_mib"] = proc_mib(proc.pid, "VmHWM")
    one["rss_before_mib"] = base
    print(
        f"  export: {one['seconds']:.1f} s, {one['bytes_on_wire'] / 1e6:.0f} MB on the wire, "
        f"peak RSS {one['peak_rss_mib']:.0f} MiB"
    )
    result = {"one": one}
    if concurrent:
        outs: list[dict[str, Any]] = [{} for _ in range(4)]
        threads = [threading.Thread(target=_export, args=(url, o)) for o in outs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        four = {"seconds": [o.get("seconds") for o in outs], "peak_rss_mib": proc_mib(proc.pid, "VmHWM")}
        print(f"  four at once: {max(four['seconds']):.1f} s, peak RSS {four['peak_rss_mib']:.0f} MiB")
        result["four"] = four
    return result


def populate(db: str, points: int) -> int:
    """A run of ``points`` points over 4 series, stored as a logger's 1,000-metric batches would be."""
    store = Store(db)
    try:
        run = store.create_run(1_600_000_000_000_000, name="big", num_workers=1)
        names = [f"loss @ {r}" for r in range(4)]
        start = 1_600_000_000_000_000
        for b in range(points // 1000):
            n = [names[i % 4] for i in range(1000)]
            d = [start + (b * 1000 + i) * 1000 for i in range(1000)]
            v = [1.0 / (1 + b * 1000 + i) for i in range(1000)]
            meta = [f'{{"rank": {i % 4}, "epoch": 0, "step": {b * 250 + i // 4}}}' for i in range(1000)]
            store.add_batch(run["id"], None, (n, d, v, meta, [False] * 1000), 1000, 0)
        return int(run["id"])
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="another checkout to measure beside this one (e.g. /work/main)")
    parser.add_argument("--points", type=int, default=2_000_000)
    parser.add_argument("--concurrent-baseline", action="store_true")
    parser.add_argument("--cases", default="slow_readers,bodies,export")
    args = parser.parse_args()
    cases = args.cases.split(",")
    figures: dict[str, Any] = {"points": args.points}
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.db")
        run_id = populate(db, args.points) if "export" in cases else 0
        trees = [("baseline", args.baseline)] if args.baseline else []
        trees.append(("this", None))
        for label, tree in trees:
            print(f"{label}: {tree or 'this tree'}")
            out: dict[str, Any] = {"tree": tree or "this"}
            for case in cases:
                with server(db, tree) as proc:  # a fresh process per case: its peak RSS is the case's
                    if case == "slow_readers":
                        out[case] = slow_readers(proc)
                    elif case == "bodies":
                        out[case] = bodies(proc)
                    elif case == "export":
                        out[case] = export(proc, run_id, label == "this" or args.concurrent_baseline)
            figures[label] = out
    write_results("server_hostile", figures)


if __name__ == "__main__":
    main()

"""``mlbench-metrics serve`` in its own process: starts, serves, stops on SIGTERM, keeps data."""

from __future__ import annotations

import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import requests

from mlbench_metrics.server import spawn

from helpers import create_run


def test_serve_in_a_child_process_survives_kill_and_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    with spawn(db_path=db) as server:
        run = create_run(server.url, name="crashy")
        r = requests.post(
            f"{server.url}/api/metrics/",
            data={
                "run_id": run["id"],
                "name": "x",
                "value": 1,
                "date": "2026-01-01 00:00:00",
                "metadata": "",
                "cumulative": False,
            },
        )
        assert r.status_code == 201
        port = server.port
        server.kill()  # SIGKILL: everything answered must still be there
        server.restart()
        assert server.port == port
        body = requests.get(f"{server.url}/api/metrics/{run['id']}", params={"metric_type": "run"}).json()
        assert body["x"][0]["value"] == "1"


def test_cli_serve_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlbench_metrics.cli", "serve", "--port", "0", "--db", str(tmp_path / "db.sqlite")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("mlbench-metrics server listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1].strip()
        assert requests.get(f"{url}/api/runs/").json() == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_a_port_in_use() -> None:
    with spawn() as server:
        result = subprocess.run(
            [sys.executable, "-m", "mlbench_metrics.cli", "serve", "--port", str(server.port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert result.stderr.startswith("mlbench-metrics: error: ")  # one line, as every command
        assert "Traceback" not in result.stderr
        # which address, and what to do: the default port 8080 is a common one
        assert f"cannot listen on 127.0.0.1:{server.port}: Address already in use" in result.stderr
        assert "--port 0" in result.stderr


def test_out_of_file_descriptors_the_server_pauses_logs_once_and_recovers(tmp_path: Path) -> None:
    """Before: accept() failed in a tight loop, 706k traceback lines in 8 s at 40% CPU."""

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    proc = subprocess.Popen(
        [sys.executable, "-m", "mlbench_metrics.cli", "serve", "--port", "0", "--db", str(tmp_path / "db.sqlite")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=low_limit,
    )
    socks: list[socket.socket] = []
    try:
        assert proc.stdout is not None and proc.stderr is not None
        url = proc.stdout.readline().rsplit(" ", 1)[1].strip()
        lines: list[str] = []
        logged = threading.Event()

        def read_stderr() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.append(line)
                if "cannot accept connections" in line:
                    logged.set()

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        port = int(url.rsplit(":", 1)[1])
        for _ in range(100):  # more than the server has descriptors for
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /api/runs/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            socks.append(sock)
        assert logged.wait(30), "".join(lines[-20:])
        server = psutil.Process(proc.pid)
        cpu_before = sum(server.cpu_times()[:2])
        threading.Event().wait(1.0)  # a window to watch it in: no spinning, no flood of lines
        cpu = sum(server.cpu_times()[:2]) - cpu_before
        assert len(lines) <= 5, "".join(lines[:20])
        assert "Traceback" not in "".join(lines)
        assert cpu < 0.3, f"{cpu:.2f} s of CPU in 1 s while out of descriptors"
        for sock in socks:
            sock.close()
        socks.clear()
        # Some descriptors are free again: within the pause (1 s at most), it serves.
        answered = False
        deadline = time.monotonic() + 30
        while not answered and time.monotonic() < deadline:
            try:
                answered = requests.get(f"{url}/api/runs/", timeout=5).status_code == 200
            except requests.RequestException:
                threading.Event().wait(0.1)
        assert answered
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        for sock in socks:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()

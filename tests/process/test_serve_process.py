"""``mlbench-metrics serve`` in its own process: starts, serves, stops on SIGTERM, keeps data."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

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

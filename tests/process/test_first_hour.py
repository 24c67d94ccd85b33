"""A new user's first hour: the README's commands without --url, init() against a server
that is not running, a run that does not exist, a run name with a dot."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

import mlbench_metrics
from mlbench_metrics import ApiConnectionError, ConfigError
from mlbench_metrics.runs import Run
from mlbench_metrics.server import ServerHandle, serve

from helpers import closed_port, create_run, port_8080_free


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "MLBENCH_METRICS_URL")}
    env["HOME"] = str(home)  # no ~/.kube/config: nothing points to Kubernetes
    return subprocess.run(
        [sys.executable, "-m", "mlbench_metrics.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_without_url_the_cli_talks_to_serves_default_address(tmp_path: Path) -> None:
    # Before: exit 3 with a message about kubeconfig, although `serve` listens on 127.0.0.1:8080.
    if not port_8080_free():
        pytest.skip("something else listens on 127.0.0.1:8080 on this machine")
    try:
        handle = serve(port=8080, db_path=str(tmp_path / "m.db"))
    except OSError:
        pytest.skip("127.0.0.1:8080 was taken meanwhile")
    try:
        run = create_run(handle.url, "first-hour")
        listed = cli("runs", "list", "--json", home=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert run["id"] in [r["id"] for r in __import__("json").loads(listed.stdout)]
    finally:
        handle.stop()
    if not port_8080_free():
        return  # someone took the port at once: the message below cannot be checked
    down = cli("runs", "list", home=tmp_path)
    assert down.returncode == 3, down.stderr
    assert "nothing answers at 127.0.0.1:8080 (connection refused)" in down.stderr
    assert "no --url, $MLBENCH_METRICS_URL or Kubernetes configuration was given" in down.stderr
    assert "Traceback" not in down.stderr and len(down.stderr.strip().splitlines()) == 1


def test_init_with_a_new_run_and_no_server_raises_one_clear_error(tmp_path: Path) -> None:
    # Before: after 3.8 s, a 126-line chained traceback through urllib3 and requests.
    address = closed_port()
    with pytest.raises(ApiConnectionError) as info:
        mlbench_metrics.init(new_run="toy", url=address, spool_dir=tmp_path)
    message = str(info.value)
    assert message == (
        f"new_run: cannot create run 'toy': nothing answers at {address} (connection refused); "
        "is `mlbench-metrics serve` running there?"
    )
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert len(traceback.format_exception(info.value)) < 10


def test_init_with_a_run_that_does_not_exist_says_so(server: ServerHandle, tmp_path: Path) -> None:
    # Before: it logged on, the server refused every record as `rejected`, exit 0.
    with pytest.raises(ConfigError, match=rf"^run 999999 does not exist on {server.url}: create it first"):
        mlbench_metrics.init(999999, url=server.address, spool_dir=tmp_path)
    run = create_run(server.url)
    log = mlbench_metrics.init(run["id"], url=server.address, spool_dir=tmp_path)  # one that exists
    log.log("x", 1)
    assert mlbench_metrics.finish() == 0


def test_init_with_a_run_id_and_the_server_down_keeps_records_for_later(tmp_path: Path) -> None:
    log = mlbench_metrics.init(5, url=closed_port(), spool_dir=tmp_path)  # nothing to ask: not refused
    log.log("x", 1)
    assert mlbench_metrics.finish(timeout=2.0) == 1
    assert log.stats.spooled == 1 and list(tmp_path.glob("run-5/*/spool-*.log"))


def test_a_new_run_name_with_a_dot_is_made_valid_and_said_in_one_line(
    server: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: refused with a long ConfigError.
    caplog.set_level(logging.WARNING, "mlbench_metrics")
    log = mlbench_metrics.init(new_run="toy-lr0.1", url=server.address, spool_dir=tmp_path)
    try:
        assert Run.get(log.run_id, url=server.address).name == "toy-lr0-1"
    finally:
        mlbench_metrics.finish()
    said = [r.getMessage() for r in caplog.records if "new_run" in r.getMessage()]
    assert said == [
        "mlbench-metrics: new_run 'toy-lr0.1' is not a valid run name (letters, digits and '-', starting and ending "
        "with a letter or digit, at most 100 characters): creating 'toy-lr0-1'"
    ]

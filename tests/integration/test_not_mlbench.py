"""A URL that leads to some other program (``python -m http.server``, a web app's 404
page): its answers say nothing about the records, so nothing is dropped as "rejected",
nothing is taken as "the run exists", and one warning says what answered."""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

import mlbench_metrics
from mlbench_metrics import ApiClient, MetricsLogger
from mlbench_metrics.errors import TransientApiError
from mlbench_metrics.server import ServerHandle

from helpers import create_run

NOT_MLBENCH = "does not look like an MLBench server"


class Quiet(SimpleHTTPRequestHandler):
    """http.server as it is: a directory listing (200 HTML) or a 404 page for GET, 501 for POST."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class WebApp(Quiet):
    """Another web application: an HTML 404 page for every POST."""

    def do_POST(self) -> None:
        self.send_error(404, "Not Found")


def other_program(handler: type[Quiet], root: Path) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, name="other-program", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(30)


@pytest.fixture(params=["listing", "404 page", "web app"])
def other(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "www"
    if request.param == "listing":  # /api/ and /api/runs/7/ are directories: 200 HTML listings
        (root / "api" / "runs" / "7").mkdir(parents=True)
    else:
        root.mkdir()
    yield from other_program(WebApp if request.param == "web app" else Quiet, root)


def test_records_sent_to_another_program_are_kept_not_dropped_as_rejected(
    other: str, tmp_path: Path, fresh_server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: its 501 to POST (or its HTML 404) was taken as the server refusing the
    records: all of them went to ``dropped["rejected"]``, nothing to the spool."""
    spool = tmp_path / "spool"
    with caplog.at_level(logging.WARNING, logger="mlbench_metrics"):
        log = MetricsLogger(7, url=other, batch_size=10, spool_dir=spool)
        for i in range(50):
            log.log("loss", i)
        log.close(timeout=2.0)
    stats = log.stats
    assert stats.dropped == {}, stats
    assert (stats.logged, stats.stored, stats.spooled) == (50, 0, 50)
    said = [r.getMessage() for r in caplog.records if NOT_MLBENCH in r.getMessage()]
    assert len(said) == 1, said
    assert other in said[0] and ("501" in said[0] or "404" in said[0] or "200" in said[0]), said[0]
    # every record is there for sync, and lands once on a real server
    run = create_run(fresh_server.url)
    meta = next(spool.glob("run-7/*/meta.json"))
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "run_id": run["id"]}))
    result = subprocess.run(
        [sys.executable, "-m", "mlbench_metrics.cli", "sync", str(spool), "--url", fresh_server.address],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    points = fresh_server.store.series(run_id=run["id"])
    assert sorted(int(float(p[1])) for _, series in points for p in series) == list(range(50))


def test_post_metrics_to_another_program_fails_transiently(other: str) -> None:
    with ApiClient(url=other) as client:
        result = client.post_metrics(7, [mlbench_metrics.Metric("loss", 1.0)], retry=False).result(60)
    assert result.stored == 0 and result.rejected() == [] and result.retryable() == [0]
    assert isinstance(result.error, TransientApiError) and result.error.status_code in (404, 501)


def test_run_exists_needs_the_runs_json(other: str, server: ServerHandle, caplog: pytest.LogCaptureFixture) -> None:
    """Before: a directory listing (200) meant "the run exists", and an HTML 404 page meant
    "no such run" (init() refused to start)."""
    with caplog.at_level(logging.WARNING, logger="mlbench_metrics"), ApiClient(url=other) as client:
        assert client.run_exists(7) is None
        assert client.run_exists(7) is None
    said = [r.getMessage() for r in caplog.records if NOT_MLBENCH in r.getMessage()]
    assert len(said) == 1 and "cannot tell whether run 7 exists" in said[0], said
    run = create_run(server.url)
    with ApiClient(url=server.address) as client:
        assert client.run_exists(run["id"]) is True
        assert client.run_exists(run["id"] + 10_000) is False


def test_init_against_another_program_starts_and_says_so(
    other: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mlbench_metrics"):
        log = mlbench_metrics.init(7, url=other, spool_dir=tmp_path)
        try:
            log.log("loss", 1.0)
        finally:
            mlbench_metrics.finish(timeout=2.0)
    assert log.stats.dropped == {} and log.stats.spooled == 1
    assert any(NOT_MLBENCH in r.getMessage() for r in caplog.records)

"""Shared fixtures: the embedded server on a real socket, and helpers to talk to it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from mlbench_metrics.server import ServerHandle, serve

sys.path.insert(0, str(Path(__file__).parent))

# Nothing in the test suite may leave this machine: make sure no proxy setting
# routes our 127.0.0.1 traffic elsewhere.
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_var, None)
os.environ["NO_PROXY"] = "127.0.0.1,localhost"


@pytest.fixture(scope="session")
def server() -> Iterator[ServerHandle]:
    """One embedded server for the whole session (tests create their own runs)."""
    handle = serve()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def fresh_server() -> Iterator[ServerHandle]:
    """An embedded server with an empty database, for tests that count everything."""
    handle = serve()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def exec_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerHandle]:
    """A server that runs runs' commands on this machine (``serve --exec``), in ``tmp_path``.

    ``--exec`` always needs a token; clients in the test (and CLI subprocesses) find the
    generated one in ``MLBENCH_METRICS_TOKEN``.
    """
    handle = serve(exec_runs=True, exec_workdir=str(tmp_path))
    assert handle.token
    monkeypatch.setenv("MLBENCH_METRICS_TOKEN", handle.token)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A requests session closed after the test."""
    with requests.Session() as session:
        yield session


@pytest.fixture(autouse=True)
def _spool_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test spools under its own temporary directory, never in ~/.cache."""
    monkeypatch.setenv("MLBENCH_METRICS_SPOOL_DIR", str(tmp_path_factory.mktemp("spool")))

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
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for the session, dropped at its end (skips without one; see postgres.py)."""
    from postgres import session_database

    with session_database() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_database: str) -> Iterator[str]:
    """An empty PostgreSQL schema for one test: a ``postgresql://`` URL whose connections use it."""
    from postgres import fresh_schema

    with fresh_schema(postgres_database) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind: a SQLite file's path, or a PostgreSQL URL (what ``Store`` and ``serve`` take)."""
    if request.param == "sqlite":
        return str(tmp_path / "m.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


def _default_db(request: pytest.FixtureRequest) -> str | None:
    """``MLBENCH_METRICS_TEST_DB=postgresql`` runs the server fixtures on PostgreSQL (to check it by hand)."""
    if os.environ.get("MLBENCH_METRICS_TEST_DB") == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return None


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest) -> Iterator[ServerHandle]:
    """One embedded server for the whole session (tests create their own runs)."""
    on_postgres = os.environ.get("MLBENCH_METRICS_TEST_DB") == "postgresql"
    handle = serve(db_path=request.getfixturevalue("postgres_database") if on_postgres else None)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def fresh_server(request: pytest.FixtureRequest) -> Iterator[ServerHandle]:
    """An embedded server with an empty database, for tests that count everything."""
    handle = serve(db_path=_default_db(request))
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

"""PostgreSQL for the tests: a fresh database per session, a fresh schema per test.

The tests that need PostgreSQL skip, with one line saying why, where none can be had:
no psycopg (``pip install -e '.[test,postgres]'``) or no server answering at
``MLBENCH_METRICS_TEST_POSTGRES`` (default ``postgresql://mlbench:mlbench@127.0.0.1:5432/mlbench``,
a role allowed to create databases). Under CI (``CI`` set) that is a failure instead,
since ``.ci/run`` installs psycopg and starts PostgreSQL.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

ADMIN_URL = os.environ.get("MLBENCH_METRICS_TEST_POSTGRES", "postgresql://mlbench:mlbench@127.0.0.1:5432/mlbench")


def unavailable(reason: str) -> None:
    """Skip the test, or fail it under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason} (.ci/run installs psycopg and starts PostgreSQL)")
    pytest.skip(reason)


def with_database(url: str, name: str) -> str:
    """``url`` naming the database ``name`` instead."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def with_schema(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (its tables) first."""
    parts = urlsplit(url)
    query = (parts.query + "&" if parts.query else "") + "options=" + quote(f"-csearch_path={schema}")
    return urlunsplit(parts._replace(query=query))


def admin(url: str = ADMIN_URL) -> Any:
    """An autocommit connection to the admin database (skips when there is none)."""
    try:
        import psycopg
    except ImportError:
        unavailable("no psycopg: pip install -e '.[test,postgres]'")
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        unavailable(f"no PostgreSQL at {url.split('@')[-1]}: {str(exc).strip().splitlines()[0]}")


@contextmanager
def session_database(admin_url: str = ADMIN_URL, prefix: str = "mlbench_test") -> Iterator[str]:
    """A fresh database (for a test session, a benchmark), dropped at its end: its URL."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    with admin(admin_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_url, name)
    finally:
        with admin(admin_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_schema(database_url: str) -> Iterator[str]:
    """An empty schema in the session's database, dropped afterwards: a URL that uses it."""
    import psycopg

    schema = f"t_{secrets.token_hex(4)}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_schema(database_url, schema)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

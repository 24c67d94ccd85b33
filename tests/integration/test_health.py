"""/healthz and /readyz: what probes (Kubernetes') ask, with no token, by the pod's address."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from mlbench_metrics.server import ServerHandle, serve


@pytest.fixture
def guarded(db_target: str) -> Iterator[ServerHandle]:
    """A server with a token, on each kind of database."""
    handle = serve(db_path=db_target, token="s3cret")
    try:
        yield handle
    finally:
        handle.stop()


def test_probes_answer_without_a_token_by_any_host_name(guarded: ServerHandle) -> None:
    probe = {"Host": "10.1.2.3:8080"}  # a kubelet addresses the pod by its IP
    live = requests.get(guarded.url + "/healthz", headers=probe, timeout=10)
    ready = requests.get(guarded.url + "/readyz", headers=probe, timeout=10)
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["database"] == guarded.store.db.kind
    # Only the probes pass: the API still wants the token and a known host.
    assert requests.get(guarded.url + "/api/runs/", timeout=10).status_code == 401
    assert requests.get(guarded.url + "/api/runs/", headers=probe, timeout=10).status_code == 403


def test_readiness_fails_with_503_while_the_database_cannot_answer(guarded: ServerHandle) -> None:
    guarded.store.close()  # the database gone, as far as this process can tell
    ready = requests.get(guarded.url + "/readyz", timeout=10)
    assert ready.status_code == 503 and ready.headers["Retry-After"]
    assert requests.get(guarded.url + "/healthz", timeout=10).status_code == 200  # alive: no restart for it


def test_a_failing_readiness_tells_no_one_without_a_token_where_the_database_is(postgres_url: str) -> None:
    import psycopg

    from postgres import ADMIN_URL

    name = urlsplit(postgres_url).path.lstrip("/")
    with serve(db_path=postgres_url, token="s3cret") as server, psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" CONNECTION LIMIT 0')  # no new connection (not superuser)
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            ready = requests.get(server.url + "/readyz", headers={"Host": "10.1.2.3:8080"}, timeout=30)
        finally:
            admin.execute(f'ALTER DATABASE "{name}" CONNECTION LIMIT -1')
        assert ready.status_code == 503 and ready.headers["Retry-After"]
        told = ready.text
        for secret in (name, "127.0.0.1", "5432", "mlbench", "postgresql"):
            assert secret not in told, told
        assert ready.json()["message"].startswith("not ready")

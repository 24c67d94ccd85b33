"""Answers the client must read right: redirects on GET, the dashboard's 304 on DELETE."""

from __future__ import annotations

import subprocess
import sys
from urllib.parse import urlencode

import pytest

from fakes import ScriptedServer, Seen, forward, http_response
from mlbench_metrics import ApiClient, ClientApiError, Metric, Run
from mlbench_metrics.server import ServerHandle

from helpers import create_run, values_stored

# What the dashboard answers when a run cannot be deleted (PROTOCOL.md, "Runs"): a 304,
# with a JSON body on the wire although a 304 has none.
COULD_NOT_DELETE = http_response(
    304, '{"status":"ERROR","message":"Could not delete run"}', {"Content-Length": "52"}, reason="Not Modified"
)


def test_a_redirected_get_is_followed(server: ServerHandle) -> None:
    run = create_run(server.url)

    def script(seen: Seen, index: int) -> bytes:
        query = "?" + urlencode(seen.query, doseq=True) if seen.query else ""  # kept, as the dashboard does
        if seen.path.startswith("/moved/"):  # a relative Location on the same server, then elsewhere
            return http_response(302, "", {"Location": f"{server.url}/api/{seen.path[len('/moved/') :]}{query}"})
        return http_response(301, "", {"Location": f"/moved/{seen.path[len('/api/') :]}{query}"})

    with ScriptedServer(script) as proxy:
        assert run["id"] in [r.id for r in Run.list(url=proxy.address)]
        assert Run.get(run["id"], url=proxy.address).name == run["name"]
        with ApiClient(url=proxy.address) as client:
            assert client.get_run_metrics(run["id"]).result().json() == {}


def test_the_dashboards_304_makes_delete_fail() -> None:
    with ScriptedServer(lambda seen, index: COULD_NOT_DELETE) as dashboard:
        with pytest.raises(ClientApiError, match="could not delete run 39") as info:
            Run({"id": 39}, url=dashboard.address).delete()
        assert info.value.status_code == 304
        result = subprocess.run(
            [sys.executable, "-m", "mlbench_metrics.cli", "runs", "delete", "39", "--url", dashboard.address],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1, result  # before: "deleted run 39", exit 0, and the run stayed
    assert "deleted" not in result.stdout
    assert "could not delete run 39" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("answer", ["{}", '{"stored": 1}', "not json", '{"stored": "2"}'])
def test_a_batch_answered_2xx_without_its_stored_count_is_not_counted_as_stored(
    server: ServerHandle, answer: str
) -> None:
    """Before: ``200 {}`` counted both metrics as stored; now they fail (transient), are
    kept, and sending the same batch again stores them once."""
    run = create_run(server.url)
    lies = [True]

    def script(seen: Seen, index: int) -> bytes:
        if seen.path.rstrip("/").endswith("/metrics/batch") and lies[0]:
            return http_response(200, answer)
        return forward(server.url, seen)

    batch = [Metric("x", 1), Metric("x", 2)]
    with ScriptedServer(script) as proxy, ApiClient(url=proxy.address) as client:
        result = client.post_metrics(run["id"], batch, batch_id=f"b-21-6-{run['id']}").result()
        assert not result.ok and result.stored == 0
        assert result.retryable() == [0, 1]
        assert "without saying the batch of 2 was stored" in str(result.error)
        lies[0] = False
        again = client.post_metrics(run["id"], batch, batch_id=f"b-21-6-{run['id']}").result()
        assert again.ok and again.stored == 2
    assert values_stored(server.db_path, run["id"]) == [1, 2]

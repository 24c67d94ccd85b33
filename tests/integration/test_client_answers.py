"""Answers the client must read right: redirects on GET, the dashboard's 304 on DELETE."""

from __future__ import annotations

import subprocess
import sys
from urllib.parse import urlencode

import pytest

from fakes import ScriptedServer, Seen, http_response
from mlbench_metrics import ApiClient, ClientApiError, Run
from mlbench_metrics.server import ServerHandle

from helpers import create_run

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

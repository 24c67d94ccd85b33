"""Cross-site requests, DNS rebinding and tokens: who may talk to the embedded server."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from mlbench_metrics.server import ServerHandle, serve
from mlbench_metrics.server._http import Request, Response

from helpers import CUSTOM_RUN_BODY, FORM, create_run, raw_exchange, wait_until

EVIL = "http://evil.example"


def assert_refused(r: requests.Response, status: int = 403) -> None:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert set(r.json()) >= {"status", "message"}


@pytest.fixture(scope="module")
def guarded() -> Iterator[ServerHandle]:
    """A server that runs commands: what an attacker's page wants to reach."""
    with serve(exec_runs=True) as handle:
        yield handle


def _every_route(base: str, run_id: int) -> list[tuple[str, str, dict[str, str], bytes]]:
    """(method, url, headers, body) for each route a page could try."""
    metric = f"run_id={run_id}&name=x&value=1&date=2021-01-01&metadata=&cumulative=False".encode()
    batch = json.dumps({"run_id": run_id, "metrics": []}).encode()
    js = {"Content-Type": "application/json"}
    return [
        ("POST", f"{base}/api/runs/", FORM, CUSTOM_RUN_BODY.encode()),
        ("GET", f"{base}/api/runs/", {}, b""),
        ("GET", f"{base}/api/runs/{run_id}/", {}, b""),
        ("PATCH", f"{base}/api/runs/{run_id}/", js, b'{"state": "failed"}'),
        ("DELETE", f"{base}/api/runs/{run_id}/", {}, b""),
        ("POST", f"{base}/api/metrics/", FORM, metric),
        ("GET", f"{base}/api/metrics/", {}, b""),
        ("GET", f"{base}/api/metrics/{run_id}/?metric_type=run&format=zip", {}, b""),
        ("POST", f"{base}/api/metrics/batch/", js, batch),
        ("POST", f"{base}/api/pods/", FORM, b"name=p"),
        ("GET", f"{base}/api/", {}, b""),
        ("OPTIONS", f"{base}/api/runs/", {}, b""),
        ("GET", f"{base}/no/such/page", {}, b""),
    ]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": EVIL},
        {"Origin": "null"},  # sandboxed frames and file:// pages
        {"Origin": "http://127.0.0.1:1"},  # another local web app is another origin
        {"Host": "evil.example"},  # DNS rebinding: the page's own name, pointed at 127.0.0.1
        {"Host": "evil.example", "Origin": EVIL},
        {"Host": "127.0.0.1.evil.example"},
    ],
    ids=["origin", "null-origin", "other-port", "rebinding", "rebinding-origin", "lookalike"],
)
def test_a_foreign_page_is_refused_on_every_route(fresh_server: ServerHandle, headers: dict[str, str]) -> None:
    run = create_run(fresh_server.url)
    runs_before = fresh_server.store.list_runs()
    for method, url, extra, body in _every_route(fresh_server.url, run["id"]):
        r = requests.request(method, url, headers={**extra, **headers}, data=body)
        assert_refused(r)
        assert "Traceback" not in r.text
    assert fresh_server.store.list_runs() == runs_before  # nothing created, changed or deleted
    assert fresh_server.store.count_metrics(run["id"]) == 0


def test_a_cross_site_form_post_runs_nothing(guarded: ServerHandle, tmp_path: Path) -> None:
    """The attack the review found: a page's form POST to /api/runs/ ran its command."""
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w')"
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"
    form = {
        "name": "pwn",
        "num_workers": "1",
        "image_name": "custom_image",
        "custom_image_name": "x",
        "custom_image_command": command,
        "backend": "gloo",
    }
    assert_refused(requests.post(f"{guarded.url}/api/runs/", data=form, headers={"Origin": EVIL}))
    assert_refused(
        requests.post(
            f"{guarded.url}/api/runs/", files={k: (None, v) for k, v in form.items()}, headers={"Origin": EVIL}
        )
    )  # multipart too
    # Even from a page on an allowed origin, no token, no run: --exec always has one.
    own = {"Origin": guarded.url}
    assert_refused(requests.post(f"{guarded.url}/api/runs/", data=form, headers=own), 401)
    assert guarded.store.list_runs() == [] and not marker.exists()


def test_exec_always_has_a_token(guarded: ServerHandle) -> None:
    assert guarded.token and len(guarded.token) >= 24
    r = requests.get(f"{guarded.url}/api/runs/")
    assert_refused(r, 401)
    assert "MLBENCH_METRICS_TOKEN" in r.json()["message"]
    ok = requests.get(f"{guarded.url}/api/runs/", headers={"Authorization": f"Bearer {guarded.token}"})
    assert ok.status_code == 200
    with serve(exec_runs=True) as other:
        assert other.token != guarded.token  # one per server, generated at start


def test_the_servers_own_pages_and_plain_clients_pass(fresh_server: ServerHandle) -> None:
    port = fresh_server.port
    form = CUSTOM_RUN_BODY.replace("run-custom", "own-origin")
    own = requests.post(f"{fresh_server.url}/api/runs/", data=form, headers={**FORM, "Origin": fresh_server.url})
    assert own.status_code == 201, own.text
    for host in ("localhost", "127.0.0.1", "127.0.0.2", "[::1]", "LOCALHOST.", "app.localhost"):
        r = requests.get(f"{fresh_server.url}/api/runs/", headers={"Host": f"{host}:{port}"})
        assert r.status_code == 200, (host, r.text)
        same = {"Host": f"{host}:{port}", "Origin": f"http://{host}:{port}"}
        assert requests.delete(f"{fresh_server.url}/api/runs/999999/", headers=same).status_code == 404
    # HTTP/1.0 clients may send no Host at all; they are not browsers.
    answer = raw_exchange("127.0.0.1", port, b"GET /api/runs/ HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_allow_host_admits_a_name_and_its_origin() -> None:
    with serve(allow_hosts=["ml-box", "10.1.2.3", "Named-Box.:8080"]) as server:
        url = f"{server.url}/api/runs/"
        assert requests.get(url, headers={"Host": f"ml-box:{server.port}"}).status_code == 200
        assert requests.get(url, headers={"Host": "named-box"}).status_code == 200  # the name counts, not the port
        assert requests.get(url, headers={"Host": "10.1.2.3"}).status_code == 200
        same = {"Host": f"ml-box:{server.port}", "Origin": f"http://ml-box:{server.port}"}
        assert requests.get(url, headers=same).status_code == 200
        assert_refused(requests.get(url, headers={"Host": "ml-box.evil.example"}))
        r = requests.get(url, headers={"Host": "other-box:80"})
        assert_refused(r)
        assert "--allow-host other-box" in r.json()["message"]  # says how to admit it
    with serve(allow_hosts=["*"]) as anyhost:
        assert requests.get(f"{anyhost.url}/api/runs/", headers={"Host": "whatever"}).status_code == 200
        r = requests.get(f"{anyhost.url}/api/runs/", headers={"Host": "whatever", "Origin": EVIL})
        assert_refused(r)  # any Host, still only its own origin


def test_pages_need_no_token_but_pass_host_and_origin() -> None:
    """The web page carries no data; its script sends the token. Routes added later alike."""

    def extra(request: Request) -> Response:
        return Response(200, b"<html></html>", "text/html")

    with serve(token="s3cret") as server:
        server.app.add_route(r"/extra/", {"GET": extra}, public=True)
        for path in ("/?token=s3cret", "/extra/"):
            page = requests.get(f"{server.url}{path}")
            assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html"), path
            assert_refused(requests.get(f"{server.url}{path}", headers={"Host": "evil.example"}))
            assert_refused(requests.get(f"{server.url}{path}", headers={"Origin": EVIL}))
        assert_refused(requests.get(f"{server.url}/api/runs/?token=s3cret"), 401)  # the API wants the header
        ok = requests.get(f"{server.url}/api/runs/", headers={"Authorization": "Bearer s3cret", "Origin": server.url})
        assert ok.status_code == 200


def test_processes_started_by_exec_get_the_token(guarded: ServerHandle) -> None:
    code = "import os, sys; sys.exit(0 if os.environ.get('MLBENCH_METRICS_TOKEN') == sys.argv[1] else 5)"
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(code)} {guarded.token}"
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {guarded.token}"
        run = create_run(guarded.url, custom_image_command=command, session=session)
        url = f"{guarded.url}/api/runs/{run['id']}/"
        wait_until(lambda: session.get(url).json()["state"] in ("finished", "failed"), what="the run to end")
        assert session.get(url).json()["job_metadata"]["exit_codes"] == [0]

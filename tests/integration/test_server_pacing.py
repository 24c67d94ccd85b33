"""``serve(pace=N)`` / ``serve --pace N``: a server as slow as the dashboard for single posts."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest
import requests

from mlbench_metrics import ApiClient
from mlbench_metrics.cli import main
from mlbench_metrics.server import serve, spawn

from helpers import FORM, METRIC_BODY_1, create_run, wait_until


def test_a_paced_server_stores_every_concurrent_post() -> None:
    with serve(extensions=False, pace=2000) as server, ApiClient(url=server.address, strict=True) as client:
        run = create_run(server.url)
        futures = [client.post_metric(run["id"], "loss @ 0", i) for i in range(20)]
        assert [f.result().status_code for f in concurrent.futures.as_completed(futures)] == [201] * 20
        assert server.store.count_metrics(run["id"]) == 20
        assert client.get_run_metrics(run["id"]).result().status_code == 200


def test_stopping_does_not_wait_for_a_post_to_finish_its_turn() -> None:
    server = serve(pace=0.001)  # a turn of 1000 s: stop() must cut it short
    run = create_run(server.url)
    answers: list[object] = []

    def post() -> None:
        try:
            answers.append(
                requests.post(f"{server.url}/api/metrics/", data=METRIC_BODY_1.format(run_id=run["id"]), headers=FORM)
            )
        except requests.RequestException as exc:  # the server may close the connection instead
            answers.append(exc)

    poster = threading.Thread(target=post)
    poster.start()
    wait_until(lambda: server.store.count_metrics(run["id"]) == 1, what="the post to be stored")
    server.stop()
    poster.join(60)
    assert not poster.is_alive() and len(answers) == 1


def test_serve_pace_from_the_command_line() -> None:
    """``serve --pace 0.001``: a post is stored, and its answer waits out its 1000 s turn."""
    with spawn(args=["--no-extensions", "--pace", "0.001"]) as server:
        run = create_run(server.url)
        body = METRIC_BODY_1.format(run_id=run["id"])
        with pytest.raises(requests.Timeout):
            requests.post(f"{server.url}/api/metrics/", data=body, headers=FORM, timeout=(10, 1))
        points = f"{server.url}/api/metrics/{run['id']}/?metric_type=run"
        wait_until(lambda: len(requests.get(points, timeout=10).json().get("loss @ 0", [])) == 1, what="the post")


@pytest.mark.parametrize("pace", ["0", "-3", "inf"])
def test_serve_refuses_a_pace_that_is_not_a_positive_number(pace: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "0", "--no-extensions", "--pace", pace]) == 2
    assert "pace must be a positive number" in capsys.readouterr().err

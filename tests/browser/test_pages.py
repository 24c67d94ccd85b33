"""The web UI in headless Chromium: what a person sees on each page, and what they can do."""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from mlbench_metrics import ApiClient, MetricsLogger
from mlbench_metrics.server import ServerHandle, serve, spawn

from conftest import COLORED_PIXELS, XSS, PageProbe
from helpers import create_run

METRIC_FORM = {"name": "loss", "value": "1.5", "date": "2021-01-02 03:04:05", "metadata": "", "cumulative": "False"}


def _train(
    client: ApiClient, run_id: int, ranks: tuple[int, ...], steps: int, config: dict[str, Any] | None = None
) -> None:
    for rank in ranks:
        with MetricsLogger(run_id, client=client, rank=rank, config=config if rank == 0 else None) as log:
            for step in range(steps):
                if step and step % (steps // 2) == 0:
                    log.epoch_end()
                log.log("loss", 2.0 * math.exp(-step / 40) + 0.1 * rank, step=step)
                log.increment("samples", 32)


@pytest.fixture(scope="module")
def ui() -> Iterator[dict[str, Any]]:
    """A server with two trained runs (two ranks each) and one with a hostile metric name."""
    handle = serve()
    with ApiClient(url=handle.address) as client:

        def run(name: str) -> int:
            return int(
                client.create_run(
                    name, 2, custom_image_name="me/img", custom_image_command="python train.py", backend="gloo"
                )
                .result()
                .json()["id"]
            )

        runs = {"baseline": run("baseline"), "wider": run("wider"), "hostile": run("hostile")}
        _train(client, runs["baseline"], (0, 1), 200, config={"lr": 0.1, "optimizer": {"name": "sgd"}})
        _train(client, runs["wider"], (0, 1), 150)
        client.post_metric(runs["hostile"], XSS, 1.0).result()
        client.post_metric(runs["hostile"], XSS, 2.0).result()
    try:
        yield {"server": handle, "runs": runs}
    finally:
        handle.stop()


def _server(ui: dict[str, Any]) -> ServerHandle:
    server: ServerHandle = ui["server"]
    return server


def _open_run(probe: PageProbe, server: ServerHandle, run_id: int) -> Any:
    page = probe.page
    page.goto(f"{server.url}/#/run/{run_id}")
    page.wait_for_selector('.chart[data-drawn="1"]')
    return page


def test_runs_table_shows_rows_filters_and_updates_states(probe: PageProbe, ui: dict[str, Any]) -> None:
    server, runs = _server(ui), ui["runs"]
    page = probe.page
    page.goto(f"{server.url}/")
    page.wait_for_selector("table.runs tbody tr[data-run]")
    rows = page.locator("table.runs tbody tr[data-run]")
    names = rows.locator("td:nth-child(2) a").all_inner_texts()
    assert {"baseline", "wider", "hostile"} <= set(names)
    baseline = page.locator(f'tr[data-run="{runs["baseline"]}"]')
    assert baseline.locator('td[data-col="num_workers"]').inner_text() == "2"
    assert baseline.locator('td[data-col="series"]').inner_text() == "4"  # loss and samples, two ranks each
    page.fill('input[aria-label="filter runs"]', "wid")
    assert page.locator("table.runs tbody tr[data-run] td:nth-child(2) a").all_inner_texts() == ["wider"]
    page.fill('input[aria-label="filter runs"]', "")
    requests.patch(f"{server.url}/api/runs/{runs['wider']}/", json={"state": "finished"})
    page.wait_for_selector(f'tr[data-run="{runs["wider"]}"] .state-finished', timeout=10_000)


def test_run_page_draws_a_chart_per_metric_with_a_line_per_rank(probe: PageProbe, ui: dict[str, Any]) -> None:
    page = _open_run(probe, _server(ui), ui["runs"]["baseline"])
    page.wait_for_selector('.chart[data-metric="samples"][data-drawn="1"]')
    loss = '.chart[data-metric="loss"]'
    assert page.evaluate(COLORED_PIXELS, loss) > 200, "the loss chart is blank"
    legend = page.locator(f"{loss} .u-legend .u-series .u-label").all_inner_texts()
    assert "loss @ 0" in legend and "loss @ 1" in legend
    assert page.locator('.chart[data-metric="samples"] h3').inner_text() == "samples (rate per second)"
    assert page.locator(".config dl").inner_text().split() == ["lr", "0.1", "optimizer.name", "sgd"]
    details = page.locator("dl.details").first.inner_text()
    assert "python train.py" in details and "gloo" in details
    assert page.locator('.toolbar select[aria-label="x axis"]').input_value() == "step"


def test_chart_settings_redraw_without_errors(probe: PageProbe, ui: dict[str, Any]) -> None:
    page = _open_run(probe, _server(ui), ui["runs"]["baseline"])
    loss = '.chart[data-metric="loss"]'
    for mode in ("epoch", "time", "relative", "step"):
        page.select_option('select[aria-label="x axis"]', mode)
        assert page.evaluate(COLORED_PIXELS, loss) > 50, f"blank with x = {mode}"
    page.check("text=log scale")
    page.fill('input[aria-label="smoothing"]', "0.9")
    assert page.evaluate(COLORED_PIXELS, loss) > 50
    box = page.locator(f"{loss} .u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + 40)  # drag to zoom
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + 40)
    page.mouse.up()
    assert page.evaluate(COLORED_PIXELS, loss) > 50
    page.fill('input[aria-label="filter metrics"]', "samp")
    assert page.locator(loss).is_hidden() and page.locator('.chart[data-metric="samples"]').is_visible()


def test_zooming_into_a_downsampled_chart_fetches_the_window_at_full_resolution(
    probe: PageProbe, ui: dict[str, Any]
) -> None:
    server = _server(ui)
    run_id = create_run(server.url, "dense")["id"]
    n = 20_000
    steps = range(n)
    metadata = [f'{{"rank": 0, "epoch": 0, "step": {s}}}' for s in steps]
    values = [math.sin(s / 300) + (5.0 if s == 12_345 else 0.0) for s in steps]
    server.store.add_batch(
        run_id, None, (["loss @ 0"] * n, [10**15 + s for s in steps], values, metadata, [False] * n), n, 0
    )
    page = _open_run(probe, server, run_id)
    note = page.locator('.chart[data-metric="loss"] .note')
    assert note.inner_text().startswith("20,000 points") and "min and max of each pixel column" in note.inner_text()
    box = page.locator('.chart[data-metric="loss"] .u-over').bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.60, box["y"] + 40)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.64, box["y"] + 40)
    page.mouse.up()
    page.wait_for_function(
        "() => document.querySelector('.chart[data-metric=\"loss\"] .note').textContent.includes('zoomed')"
    )
    probe.shot("-zoomed")
    assert page.evaluate(COLORED_PIXELS, '.chart[data-metric="loss"]') > 100
    page.locator('.chart[data-metric="loss"] .u-over').dblclick()
    page.wait_for_function(
        "() => !document.querySelector('.chart[data-metric=\"loss\"] .note').textContent.includes('zoomed')"
    )


def test_a_new_point_appears_without_a_reload(probe: PageProbe, ui: dict[str, Any]) -> None:
    server = _server(ui)
    with ApiClient(url=server.address) as client:
        run_id = int(
            client.create_run("live", 1, custom_image_name="me/img", custom_image_command="x", backend="gloo")
            .result()
            .json()["id"]
        )
        with MetricsLogger(run_id, client=client, rank=0, flush_interval=0.05) as log:
            for step in range(3):
                log.log("acc", 0.1 * step, step=step)
            log.flush()
            page = _open_run(probe, server, run_id)
            note = page.locator('.chart[data-metric="acc"] .note')
            assert note.inner_text().startswith("3 points")
            stored = time.monotonic()
            log.log("acc", 0.9, step=50)
            log.flush()
            page.wait_for_function(
                "() => document.querySelector('.chart[data-metric=\"acc\"] .note').textContent.startsWith('4 points')",
                timeout=10_000,
            )
            seen = time.monotonic() - stored
            # Two points of one series in the same microsecond are two points (a fast loop's
            # log() calls can be): the live view used to drop all but one.
            same = {"run_id": run_id, "name": "acc @ 0", "value": "0.5", "date": "2030-01-01 00:00:00.000001"}
            for _ in range(2):
                requests.post(f"{server.url}/api/metrics/", data=dict(same, metadata="", cumulative="False"))
            page.wait_for_function(
                "() => document.querySelector('.chart[data-metric=\"acc\"] .note').textContent.startsWith('6 points')",
                timeout=10_000,
            )
            # More than a poll takes raw (a tab back from the background, a very fast run):
            # the chart is read again, downsampled, instead of growing without bound.
            many = [
                {"name": "acc @ 0", "value": i, "date": f"2031-01-01T00:00:{i / 1e6:09.6f}Z"} for i in range(25_000)
            ]
            batch = {"batch_id": "many", "run_id": run_id, "metrics": many}
            assert requests.post(f"{server.url}/api/metrics/batch/", json=batch).status_code == 201
            page.wait_for_function(
                "() => /^25,006 points · \\d+ drawn/.test("
                "document.querySelector('.chart[data-metric=\"acc\"] .note').textContent)",
                timeout=10_000,
            )
            log.log("new_metric", 1.0, step=51)  # a metric the page has not seen gets a chart
            log.flush()
            page.wait_for_selector('.chart[data-metric="new_metric"][data-drawn="1"]', timeout=10_000)
    print(f"live point shown {seen:.2f} s after it was stored")


def test_compare_view_overlays_one_metric_of_several_runs(probe: PageProbe, ui: dict[str, Any]) -> None:
    server, runs = _server(ui), ui["runs"]
    page = probe.page
    page.goto(f"{server.url}/")
    page.check(f'input[aria-label="select run {runs["baseline"]}"]')
    page.check(f'input[aria-label="select run {runs["wider"]}"]')
    page.click("text=Compare selected")
    page.wait_for_selector('.chart[data-metric="loss"][data-drawn="1"]')
    legend = page.locator('.chart[data-metric="loss"] .u-legend .u-series .u-label').all_inner_texts()
    assert f"baseline #{runs['baseline']}: loss @ 1" in legend and f"wider #{runs['wider']}: loss @ 0" in legend
    assert page.evaluate(COLORED_PIXELS, '.chart[data-metric="loss"]') > 200
    assert f"runs={runs['baseline']},{runs['wider']}" in page.url
    page.fill('input[aria-label="filter metrics"]', "loss")  # an older link's metric=loss is this filter
    assert page.locator('.chart[data-metric="samples"]').is_hidden() and "filter=loss" in page.url


def test_a_hostile_metric_name_shows_as_text(probe: PageProbe, ui: dict[str, Any]) -> None:
    page = _open_run(probe, _server(ui), ui["runs"]["hostile"])
    assert page.locator(".chart h3").inner_text() == XSS
    assert XSS in page.locator(".chart .u-legend").inner_text()
    assert page.evaluate("() => document.querySelectorAll('img').length") == 0
    assert probe.dialogs == []


def test_downloads_come_with_the_token_free_url(probe: PageProbe, ui: dict[str, Any]) -> None:
    page = _open_run(probe, _server(ui), ui["runs"]["wider"])
    with page.expect_download() as download:
        page.click(".downloads button:text('CSV')")
    with open(download.value.path(), encoding="utf-8") as f:
        assert f.readline().strip() == "name,date,step,epoch,rank,value,cumulative,metadata"
    assert download.value.suggested_filename == "metrics_wider.csv"
    with page.expect_download() as download:
        page.click(".downloads button:text('zip')")
    assert download.value.suggested_filename == "metrics_wider.zip"


def test_delete_asks_first(probe: PageProbe, ui: dict[str, Any]) -> None:
    server = _server(ui)
    run_id = create_run(server.url, "doomed")["id"]
    page = probe.page
    page.goto(f"{server.url}/")
    row = page.locator(f'tr[data-run="{run_id}"]')
    row.locator("text=Delete").click()  # the dialog is dismissed: nothing happens
    assert probe.dialogs and "Delete run" in probe.dialogs[-1] and "doomed" in probe.dialogs[-1]
    assert row.count() == 1
    probe.answer_dialogs = True
    row.locator("text=Delete").click()
    row.wait_for(state="detached")
    assert requests.get(f"{server.url}/api/runs/{run_id}/").status_code == 404


def test_a_token_in_the_address_is_kept_and_removed_from_it(browser: Any) -> None:
    with serve(token="s3cret") as server:
        with requests.Session() as owner:
            owner.headers["Authorization"] = "Bearer s3cret"
            create_run(server.url, "private", session=owner)
        context = browser.new_context()
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            requested: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            page.goto(f"{server.url}/?token=s3cret#/")
            page.wait_for_selector("table.runs tbody tr[data-run]")
            assert "token" not in page.url and page.url.endswith("/#/")
            assert [u for u in requested[1:] if "s3cret" in u] == []  # never in a later URL
            page.goto(f"{server.url}/#/")  # a reload: the token is remembered for this origin
            page.wait_for_selector("table.runs tbody tr[data-run]")
            assert errors == []
        finally:
            context.close()
        context = browser.new_context()  # a browser that never had the token
        try:
            page = context.new_page()
            page.goto(f"{server.url}/")
            page.wait_for_selector("text=This server needs a token")
            page.fill('input[aria-label="token"]', "s3cret")
            page.click("text=Use token")
            page.wait_for_selector("table.runs tbody tr[data-run]")
        finally:
            context.close()


def test_a_long_run_name_leaves_the_other_columns_readable(probe: PageProbe, ui: dict[str, Any]) -> None:
    # With a 100-character name, the table squeezed every other column to a few letters
    # a line: "Durati/on", "Delet/e", "initializ/ed".
    server = _server(ui)
    name = "a-long-run-name-" + "x" * 84
    run_id = create_run(server.url, name=name)["id"]
    page = probe.page
    page.set_viewport_size({"width": 1024, "height": 700})
    page.goto(f"{server.url}/")
    row = page.locator(f'tr[data-run="{run_id}"]')
    row.wait_for()
    line = page.evaluate("() => parseFloat(getComputedStyle(document.body).lineHeight) || 20")
    for cell in (row.locator("button"), row.locator(".state"), page.locator('th[data-col="duration"] .col-label')):
        box = cell.bounding_box()
        assert box is not None and box["height"] < 1.9 * line, f"{cell.inner_text()!r} wraps"
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")


def test_values_that_are_not_finite_are_said_and_job_metadata_is_labelled(probe: PageProbe, ui: dict[str, Any]) -> None:
    server = _server(ui)
    run_id = create_run(server.url, custom_image_command="python train.py")["id"]
    server.store.update_run(run_id, job_metadata={"command": "python train.py --rank 0", "exit_codes": [0]})
    with ApiClient(url=server.address) as client:
        for value in (1.0, float("nan"), 3.0, float("inf")):
            client.post_metric(run_id, "loss", value).result()
    page = _open_run(probe, server, run_id)
    note = page.locator(".chart .note").inner_text()
    assert "4 points" in note and "2 not finite (NaN or infinite), not drawn" in note
    labels = page.locator("dl.details dt").all_inner_texts()
    assert len(labels) == len(set(labels)), labels  # the job's command is not a second "command"
    assert "job command" in labels and "job exit codes" in labels


def test_the_page_recovers_when_the_server_comes_back_and_says_when_it_stalls(browser: Any, tmp_path: Any) -> None:
    server = spawn(db_path=str(tmp_path / "m.db"))
    context = browser.new_context()
    try:
        run_id = create_run(server.url)["id"]
        requests.post(f"{server.url}/api/metrics/", data=dict(METRIC_FORM, run_id=run_id))
        page = context.new_page()
        page.goto(f"{server.url}/#/run/{run_id}")
        page.wait_for_selector('.chart[data-drawn="1"]')
        # A server that stops answering (stopped, swapped out, stuck): the page says so.
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            page.wait_for_selector("#notice:not([hidden])", timeout=20_000)
            assert "has not answered" in page.locator("#notice").inner_text()
        finally:
            os.kill(server.pid, signal.SIGCONT)
        page.wait_for_selector("#notice", state="hidden", timeout=20_000)
        # A page opened while the server is down loads once it is back, without a reload.
        server.kill()
        page.evaluate("() => { location.hash = '#/'; }")
        page.wait_for_selector("text=does not answer", timeout=20_000)
        server.start()
        page.wait_for_selector(f'tr[data-run="{run_id}"]', timeout=20_000)
    finally:
        context.close()
        server.close()

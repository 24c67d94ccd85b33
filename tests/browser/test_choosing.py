"""Choosing between runs in headless Chromium: the runs table's columns, sort, differences only
and conditions, parallel coordinates with a brush, the compare grid, views kept in the address,
live states, text values and one-point series (issue 16)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from mlbench_metrics import ApiClient, MetricsLogger
from mlbench_metrics.server import ServerHandle, serve

from conftest import COLORED_PIXELS, SCREENSHOTS, XSS, PageProbe
from helpers import create_run

# name -> (lr, batch size, final loss); every run has model "resnet20" (the same in all).
RUNS = {"sgd-fast": (0.3, 32, 0.9), "sgd-slow": (0.01, 32, 0.2), "adam": (0.001, 64, 0.4), "sgd-mid": (0.05, 64, 0.6)}


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Any]]:
    """A server with four trained runs of two ranks, their configs, and one hostile config."""
    handle = serve()
    ids: dict[str, int] = {}
    with ApiClient(url=handle.address) as client:
        for name, (lr, batch, final) in RUNS.items():
            run_id = ids[name] = create_run(handle.url, name)["id"]
            config = {"optimizer": {"lr": lr, "name": name.split("-")[0]}, "batch_size": batch, "model": "resnet20"}
            for rank in (0, 1):
                with MetricsLogger(run_id, client=client, rank=rank, config=config if rank == 0 else None) as log:
                    for step in range(60):
                        loss = final + (2.0 - final) * math.exp(-step / 10) + 0.05 * rank
                        log.log("train_loss", loss, step=step)
                    log.log("val_acc", 1 - final / 2, step=59)
        hostile = ids["hostile"] = create_run(handle.url, "hostile")["id"]
        requests.put(f"{handle.url}/api/runs/{hostile}/config/", json={"config": {XSS: XSS}})
    try:
        yield {"server": handle, "ids": ids}
    finally:
        handle.stop()


def _server(lab: dict[str, Any]) -> ServerHandle:
    server: ServerHandle = lab["server"]
    return server


def _names(page: Any) -> list[str]:
    return list(page.locator("table.runs tbody tr[data-run] td.name a").all_inner_texts())


def _wait_names(page: Any, expected: list[str]) -> None:
    page.wait_for_function(
        "(want) => JSON.stringify([...document.querySelectorAll('table.runs tbody tr[data-run] td.name a')]"
        ".map((a) => a.textContent)) === JSON.stringify(want)",
        arg=expected,
    )


def test_columns_sort_differences_only_and_conditions_survive_a_reload(probe: PageProbe, lab: dict[str, Any]) -> None:
    page = probe.page
    page.goto(f"{_server(lab).url}/")
    page.wait_for_selector('th[data-col="config:optimizer.lr"]')
    assert page.locator('th[data-col="config:model"]').count() == 1
    assert XSS in page.locator("table.runs thead").inner_text()  # a hostile key is text
    assert page.evaluate("() => document.querySelectorAll('img').length") == 0
    page.click("details.menu summary")
    page.check('input[aria-label="train_loss last"]')
    page.check('input[aria-label="train_loss min"]')
    page.wait_for_selector('th[data-col="metric:train_loss:last"]')
    header = page.locator('th[data-col="metric:train_loss:last"]').inner_text()
    assert "train_loss" in header and "last (rank 0)" in header  # ranked: said which rank
    page.click("details.menu summary")  # close the menu
    page.click('th[data-col="metric:train_loss:last"]')
    _wait_names(page, ["sgd-slow", "adam", "sgd-mid", "sgd-fast", "hostile"])  # no value: last
    page.click('th[data-col="metric:train_loss:last"]')
    _wait_names(page, ["sgd-fast", "sgd-mid", "adam", "sgd-slow", "hostile"])
    row = page.locator(f'tr[data-run="{lab["ids"]["adam"]}"]')
    assert float(row.locator('td[data-col="metric:train_loss:last"]').inner_text()) == pytest.approx(0.4, abs=0.01)
    page.check("text=differences only")  # the hostile run has no model: model differs
    assert page.locator('th[data-col="config:model"]').count() == 1
    page.fill('input[aria-label="filter runs"]', "resnet20")  # words match config values
    _wait_names(page, ["sgd-fast", "sgd-mid", "adam", "sgd-slow"])
    page.wait_for_selector('th[data-col="config:model"]', state="detached")
    assert page.locator('th[data-col="config:optimizer.lr"]').count() == 1
    page.fill('input[aria-label="filter runs"]', "lr>=0.05")
    _wait_names(page, ["sgd-fast", "sgd-mid"])
    page.fill('input[aria-label="filter runs"]', "train_loss<0.5 batch_size=64")
    _wait_names(page, ["adam"])
    # Among the runs shown, batch_size is the same: differences only hides it.
    assert page.locator('th[data-col="config:batch_size"]').count() == 0
    page.fill('input[aria-label="filter runs"]', "sgd train_loss.min<0.7")
    _wait_names(page, ["sgd-mid", "sgd-slow"])
    probe.shot("-before-reload")
    url = page.url
    page.reload()
    _wait_names(page, ["sgd-mid", "sgd-slow"])
    assert page.url == url
    assert page.locator('input[aria-label="filter runs"]').input_value() == "sgd train_loss.min<0.7"
    assert page.locator("text=differences only").locator("input").is_checked()
    assert page.locator('th[data-col="metric:train_loss:last"].sorted').count() == 1
    # The chosen columns are also remembered for an address that names none.
    page.goto(f"{_server(lab).url}/#/")
    page.wait_for_selector('th[data-col="metric:train_loss:min"]')


def test_a_brush_on_parallel_coordinates_filters_the_table(probe: PageProbe, lab: dict[str, Any]) -> None:
    page = probe.page
    page.goto(f"{_server(lab).url}/#/?cols=train_loss:last&pc=1&q=resnet")
    page.wait_for_selector("svg.pc path[data-run]")
    assert page.locator("svg.pc path[data-run]").count() == 4
    assert "train_loss last" in page.locator("svg.pc").text_content()
    hit = page.locator('.pc-hit[data-key="metric:train_loss:last"]').bounding_box()
    assert hit is not None
    x = hit["x"] + hit["width"] / 2
    page.mouse.move(x, hit["y"] + hit["height"] * 0.45)  # the lower half: the smaller losses
    page.mouse.down()
    page.mouse.move(x, hit["y"] + hit["height"] * 0.75, steps=5)
    page.mouse.move(x, hit["y"] + hit["height"] - 2, steps=5)
    page.mouse.up()
    _wait_names(page, ["adam", "sgd-slow"])
    assert "brush=" in page.url
    probe.shot("-brushed")
    page.reload()
    _wait_names(page, ["adam", "sgd-slow"])
    assert page.locator("svg.pc .pc-brush").count() == 1
    page.locator('.pc-hit[data-key="metric:train_loss:last"]').click()  # a click clears the brush
    _wait_names(page, ["sgd-mid", "adam", "sgd-slow", "sgd-fast"])


def test_the_compare_grid_draws_every_metric_of_three_runs_and_keeps_its_view(
    probe: PageProbe, lab: dict[str, Any]
) -> None:
    ids = lab["ids"]
    page = probe.page
    page.goto(f"{_server(lab).url}/")
    for name in ("sgd-fast", "sgd-slow", "adam"):
        page.check(f'input[aria-label="select run {ids[name]}"]')
    page.click("text=Compare selected")
    page.wait_for_selector('.chart[data-metric="train_loss"][data-drawn="1"]')
    page.wait_for_selector('.chart[data-metric="val_acc"][data-drawn="1"]')
    assert page.evaluate(COLORED_PIXELS, '.chart[data-metric="train_loss"]') > 300
    # val_acc has one point per rank: markers, not an empty chart.
    assert page.evaluate(COLORED_PIXELS, '.chart[data-metric="val_acc"]') > 30
    legend = page.locator('.chart[data-metric="train_loss"] .u-legend .u-series .u-label').all_inner_texts()
    assert len([label for label in legend if ": train_loss @ " in label]) == 6  # three runs, two ranks
    page.check("text=ranks as mean and band")
    page.fill('input[aria-label="smoothing"]', "0.8")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.chart[data-metric=\"train_loss\"] .u-legend .u-series')]"
        ".filter((r) => r.style.display !== 'none').length === 4"  # x and a mean per run
    )
    visible = page.locator('.chart[data-metric="train_loss"] .u-legend .u-series:visible .u-label').all_inner_texts()
    assert f"sgd-fast #{ids['sgd-fast']} (mean of 2)" in visible
    assert page.evaluate(COLORED_PIXELS, '.chart[data-metric="train_loss"]') > 300
    probe.shot("-folded")
    url = page.url
    assert "smooth=0.8" in url and "fold=1" in url
    page.reload()
    page.wait_for_selector('.chart[data-metric="train_loss"][data-drawn="1"]')
    assert page.locator('input[aria-label="smoothing"]').input_value() == "0.8"
    assert page.locator("text=ranks as mean and band").locator("input").is_checked()
    assert page.url == url
    with page.expect_download() as download:
        page.locator('.chart[data-metric="train_loss"] button:text("PNG")').click()
    assert download.value.suggested_filename == "train_loss.png"
    with open(download.value.path(), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    download.value.save_as(SCREENSHOTS / f"{probe.name}-saved.png")  # to look at
    page.goto(page.url.replace("runs=", f"runs={ids['hostile']},"))  # a run without these metrics
    page.wait_for_function(
        "() => (document.querySelector('.chart[data-metric=\"train_loss\"] .note') || {}).textContent"
        "?.includes('not in hostile')"
    )


def test_a_running_run_shows_its_time_then_turns_finished(probe: PageProbe, lab: dict[str, Any]) -> None:
    server = _server(lab)
    run_id = create_run(server.url, "live-state")["id"]
    crashed = create_run(server.url, "gone-quiet")["id"]
    server.store.update_run(crashed, state="crashed")  # any state the server sends is shown
    requests.patch(f"{server.url}/api/runs/{run_id}/", json={"state": "started"})
    page = probe.page
    page.goto(f"{server.url}/")
    duration = page.locator(f'td[data-duration="{run_id}"]')
    page.wait_for_selector(f'tr[data-run="{run_id}"] .state-started')
    assert "running" in (duration.get_attribute("class") or "")
    first = duration.inner_text()
    page.wait_for_function(
        "([sel, first]) => document.querySelector(sel).textContent !== first",
        arg=[f'td[data-duration="{run_id}"]', first],
        timeout=10_000,
    )
    assert page.locator(f'tr[data-run="{crashed}"] .state').inner_text() == "crashed"
    probe.shot("-running")
    requests.patch(f"{server.url}/api/runs/{run_id}/", json={"state": "finished"})
    page.wait_for_selector(f'tr[data-run="{run_id}"] .state-finished', timeout=10_000)
    assert "running" not in (duration.get_attribute("class") or "")


def test_a_writer_that_goes_silent_turns_its_run_crashed_on_the_page(probe: PageProbe, tmp_path: Any) -> None:
    # The server derives crashed (an open writer not heard for writer_timeout); the table's
    # read shows each run as GET /api/runs/ does.
    with serve(db_path=str(tmp_path / "m.db"), writer_timeout=1.0) as server:
        run_id = create_run(server.url, "goes-quiet")["id"]
        answer = requests.put(f"{server.url}/api/runs/{run_id}/writers/w1/", json={"rank": 0, "state": "open"})
        assert answer.status_code == 200, answer.text
        page = probe.page
        page.goto(f"{server.url}/")
        page.wait_for_selector(f'tr[data-run="{run_id}"] .state-crashed', timeout=15_000)
        title = page.locator(f'tr[data-run="{run_id}"] .state').get_attribute("title") or ""
        assert title.startswith("last heard of"), title
        probe.shot("-crashed")


def test_a_text_value_is_listed_and_a_one_point_series_is_drawn(probe: PageProbe, lab: dict[str, Any]) -> None:
    server = _server(lab)
    run_id = create_run(server.url, "notes")["id"]
    with ApiClient(url=server.address) as client, MetricsLogger(run_id, client=client, rank=0) as log:
        log.log("note", "warming up", step=3)
        log.log("note", XSS, step=4)
        log.log("val_acc", 0.75, step=10)
    page = probe.page
    page.goto(f"{server.url}/#/run/{run_id}")
    page.wait_for_selector('.chart[data-metric="val_acc"][data-drawn="1"]')
    page.wait_for_selector(".text-values td.value")
    rows = page.locator(".text-values tbody tr").all_inner_texts()
    assert len(rows) == 2 and "warming up" in rows[0] and "\t3\t" in rows[0] and XSS in rows[1]
    assert page.locator('.chart[data-metric="note"]').is_hidden()  # nothing to draw: listed instead
    assert "not finite" not in page.locator("main").inner_text()
    assert page.locator('.chart[data-metric="val_acc"] .note').inner_text() == "1 point"
    assert page.evaluate(COLORED_PIXELS, '.chart[data-metric="val_acc"]') > 30, "one point, nothing drawn"
    assert page.evaluate("() => document.querySelectorAll('img').length") == 0
    page.select_option('select[aria-label="x axis"]', "relative")
    page.check("text=log scale")
    page.fill('input[aria-label="filter metrics"]', "val")
    page.reload()
    page.wait_for_selector('.chart[data-metric="val_acc"][data-drawn="1"]')
    assert page.locator('select[aria-label="x axis"]').input_value() == "relative"
    assert page.locator("text=log scale").locator("input").is_checked()
    assert page.locator('input[aria-label="filter metrics"]').input_value() == "val"
    assert "x=relative" in page.url and "log=1" in page.url

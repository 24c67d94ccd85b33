"""A colleague's link is hostile (or just odd): whatever its view state names, the runs
table and the other pages still show, as text, and nothing runs (a review's probes)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest
import requests

from mlbench_metrics import ApiClient, MetricsLogger
from mlbench_metrics.server import ServerHandle, serve

from conftest import XSS, PageProbe
from helpers import create_run

COUNT = "main .heading span.muted"  # "N of M" once the table is drawn


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    """One run whose config has keys named as an object's own methods, and hostile names."""
    handle = serve()
    run_id = create_run(handle.url, "r1")["id"]
    config = {"lr": 0.1, "constructor": XSS, "optim": {"__proto__": 5}, "__proto__": 6, "toString": "t"}
    requests.put(f"{handle.url}/api/runs/{run_id}/config/", json={"config": config}, timeout=30).raise_for_status()
    with ApiClient(url=handle.address) as client, MetricsLogger(run_id, client=client) as log:
        for step in range(5):
            log.log(XSS, step, step=step)
            log.log("loss", 1.0 / (step + 1), step=step)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("q=valueOf<5", 0),  # an object's method, not a config key: matches nothing
        ("q=hasOwnProperty>0", 0),
        ("q=__proto__=6", 1),
        ("q=lr=  <<  >>=1  lr<1e999999  ∞=∞", 0),
        ("q=optim.__proto__=5", 1),  # a config key of that name is a key like any other
        ("q=toString=t", 1),
        ("cols=config:toString,config:__proto__,metric:" + XSS + ":last&sort=config:valueOf&desc=1", 1),
        ("pc=1&pcm=" + XSS + "&brush=lr:1:2,zzz:a:b,,:::," + XSS + ":1e999:-1e999", 1),
    ],
)
def test_a_hostile_link_still_shows_the_runs_table(
    probe: PageProbe, server: ServerHandle, query: str, shown: int
) -> None:
    page = probe.page
    page.goto(f"{server.url}/#/?" + quote(query, safe="=&:,"))
    page.wait_for_function(f"() => /^\\d+ of \\d+/.test(document.querySelector({COUNT!r})?.textContent || '')")
    assert page.locator("#banner").is_hidden(), page.locator("#banner").inner_text()
    assert page.locator("table.runs tbody tr[data-run]").count() == shown
    assert page.evaluate("() => document.querySelectorAll('img').length") == 0
    assert probe.dialogs == []


def test_the_config_keys_an_object_has_of_its_own_are_columns(probe: PageProbe, server: ServerHandle) -> None:
    page = probe.page
    page.goto(f"{server.url}/")
    page.wait_for_selector('th[data-col="config:lr"]')
    for key in ("constructor", "optim.__proto__", "__proto__", "toString"):
        assert page.locator(f'th[data-col="config:{key}"]').count() == 1, key
    assert page.locator('td[data-col="config:optim.__proto__"]').inner_text() == "5"
    assert page.locator('td[data-col="config:__proto__"]').inner_text() == "6"

"""The page's token: kept for its tab only, and never replaced by a link without asking (issue 20, item 6)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from mlbench_metrics.server import ServerHandle, serve

from conftest import PageProbe
from helpers import create_run

TOKEN_KEY = "mlbench-metrics.token"
RUNS = "table.runs tbody tr[data-run]"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    with serve(token="s3cret") as handle:
        with requests.Session() as owner:
            owner.headers["Authorization"] = "Bearer s3cret"
            create_run(handle.url, "private", session=owner)
        yield handle


def _stored(page: Any) -> dict[str, Any]:
    return dict(
        page.evaluate("(key) => ({local: localStorage.getItem(key), session: sessionStorage.getItem(key)})", TOKEN_KEY)
    )


def test_the_token_stays_with_its_tab_and_out_of_the_origins_storage(probe: PageProbe, server: ServerHandle) -> None:
    """Before: localStorage for 127.0.0.1:PORT, which any program later served on the port reads."""
    page = probe.page
    page.goto(f"{server.url}/?token=s3cret#/")
    page.wait_for_selector(RUNS)
    assert _stored(page) == {"local": None, "session": "s3cret"}
    page.goto(f"{server.url}/#/")  # a reload keeps it
    page.wait_for_selector(RUNS)
    other = page.context.new_page()  # another tab (or another program on the port) does not get it
    try:
        other.goto(f"{server.url}/")
        other.wait_for_selector("text=This server needs a token")
        assert _stored(other) == {"local": None, "session": None}
    finally:
        other.close()


def test_a_token_an_earlier_version_left_in_local_storage_is_forgotten(probe: PageProbe, server: ServerHandle) -> None:
    page = probe.page
    page.goto(f"{server.url}/?token=s3cret#/")
    page.wait_for_selector(RUNS)
    page.evaluate("([key, value]) => localStorage.setItem(key, value)", [TOKEN_KEY, "s3cret"])
    page.reload()
    page.wait_for_selector(RUNS)
    assert _stored(page)["local"] is None


def test_a_link_with_another_token_asks_before_replacing_the_one_in_use(probe: PageProbe, server: ServerHandle) -> None:
    """Before: a `/?token=X` link silently replaced the token."""
    page = probe.page
    page.goto(f"{server.url}/?token=s3cret#/")
    page.wait_for_selector(RUNS)
    page.goto(f"{server.url}/?token=attacker#/")  # the dialog is dismissed: the tab keeps its token
    page.wait_for_selector(RUNS)
    assert probe.dialogs and "different access token" in probe.dialogs[-1]
    assert _stored(page)["session"] == "s3cret" and "token" not in page.url
    asked = len(probe.dialogs)
    page.goto(f"{server.url}/?token=s3cret#/")  # the same token: nothing to ask
    page.wait_for_selector(RUNS)
    assert len(probe.dialogs) == asked
    probe.answer_dialogs = True  # accepted: the link's token is used
    page.goto(f"{server.url}/?token=wrong#/")
    page.wait_for_selector("text=This server needs a token")
    assert _stored(page)["session"] == "wrong"
    probe.errors[:] = [e for e in probe.errors if "status of 401" not in e]  # the wrong token's refusals

"""The run page draws when the run holds text that is not valid Unicode (issue 20, item 1).

Before: a lone surrogate stored by an older server made every read of the run a 500, and
the page said "the server does not answer" and never drew.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from mlbench_metrics.server import serve
from mlbench_metrics.server.chunks import encode_chunks, encode_point
from mlbench_metrics.server.store import Store

from conftest import PageProbe


def test_the_run_page_draws_with_a_lone_surrogate_stored(probe: PageProbe, tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    store = Store(str(db))
    try:
        run_id = int(store.create_run(1_600_000_000_000_000, name="old", num_workers=1)["id"])
    finally:
        store.close()
    date = 1_600_000_000_000_000
    n = 50
    meta = [
        json.dumps({"step": i, "rank": 0, "file": os.fsdecode(b"ckpt-\xff.pt")}, ensure_ascii=False) for i in range(n)
    ]
    ((name, lo, hi, count, body),) = encode_chunks(
        (["loss @ 0"] * n, [date + i * 1000 for i in range(n)], [1.0 / (i + 1) for i in range(n)], meta, [False] * n)
    )
    rows = [
        (run_id, name, lo, 1, hi, count, ""),
        (run_id, "ckpt @ 0", date, 2, date, 1, encode_point(date, os.fsdecode(b"ckpt-\xff.pt"), "", False)),
    ]
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO chunks (owner, name, first_date, id, last_date, count, data) VALUES (?,?,?,?,?,?,?)", rows
        )
        conn.execute("INSERT INTO chunk_bodies (id, body) VALUES (1, ?)", (body,))
    conn.close()
    with serve(db_path=str(db)) as server:
        page = probe.page
        page.goto(f"{server.url}/#/run/{run_id}")
        page.wait_for_selector('.chart[data-metric="loss"][data-drawn="1"]')  # ckpt's only value is text: listed
        assert "does not answer" not in page.inner_text("body")
        assert "ckpt-" in page.locator(".text-values td.value").inner_text()

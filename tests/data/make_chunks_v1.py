"""Writes ``chunks_v1.db`` and ``chunks_v1.answers.json``: a database in the first chunk format.

Up to commit a8fe294 the server stored each chunk's points as JSON text in ``chunks.data``.
``tests/integration/test_old_database.py`` opens this file with today's code and checks
that every read answers exactly what the old code answered (recorded here, over HTTP, by
the code that wrote the file), so a database written before the binary format keeps
reading correctly. Regenerating needs that old code:

    git worktree add /tmp/old a8fe294 && cd /tmp/old
    python -m venv /tmp/old-venv && /tmp/old-venv/bin/pip install -e . requests
    /tmp/old-venv/bin/python /path/to/tests/data/make_chunks_v1.py /path/to/tests/data

The data covers every way the old code wrote a chunk: the batch endpoint's three forms
(floats, whole numbers, text, NaN and infinities, one or many metadata texts, one or many
cumulative flags), batches whose dates overlap (the sorted read path), single posts (JSON
with spaces), a pod's metrics, and metadata with quotes, backslashes, newlines and
non-ASCII characters.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sqlite3
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import requests

from mlbench_metrics.server import serve


def _b64(code: str, values: list[Any]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}{code}", *values)).decode()


def write(url: str) -> dict[str, Any]:
    """Fill the database through the API; returns what the reads need to know (ids, dates)."""
    post = requests.Session()
    form = {
        "num_workers": 2,
        "image_name": "custom_image",
        "custom_image_name": "x",
        "custom_image_command": "true",
        "backend": "GLOO",
    }
    run = post.post(f"{url}/api/runs/", data={"name": "old-run", **form}).json()
    other = post.post(f"{url}/api/runs/", data={"name": "other-run", **form}).json()
    rid = run["id"]
    t0 = 4_102_444_800_000_000  # 2100-01-01: after the runs' creation, so the zip (which starts there) holds it
    batch = f"{url}/api/metrics/batch/"

    # Packed floats with per-point metadata, as MetricsLogger sends them (two batches in order).
    for b in range(2):
        n = 20
        steps = list(range(b * n, (b + 1) * n))
        values = [1.0 / (1 + s) for s in steps]
        values[7] = float("nan") if b == 0 else values[7]
        values[9] = float("inf") if b == 1 else values[9]
        packed = {
            "count": n,
            "name": ["loss @ 0"],
            "value_f64": _b64("d", values),
            "date_ns": _b64("q", [(t0 + s * 1000) * 1000 for s in steps]),
            "metadata": [json.dumps({"rank": 0, "epoch": s // 15, "step": s}) for s in steps],
        }
        r = post.post(batch, json={"run_id": rid, "batch_id": f"packed-{b}", "packed": packed})
        assert r.status_code in (200, 201), r.text
    # Columns: whole numbers and text in one series, per-point cumulative flags, one metadata.
    n = 12
    r = post.post(
        batch,
        json={
            "run_id": rid,
            "columns": {
                "name": ["loss @ 1"] * n,
                "value": [i if i % 3 else f"{i}.50" for i in range(n)],
                "date_us": [t0 + i * 2000 for i in range(n)],
                "metadata": '{"rank": 1, "note": "q\\"uote, back\\\\slash"}',
                "cumulative": [i % 2 == 0 for i in range(n)],
            },
        },
    )
    assert r.status_code in (200, 201), r.text
    # Rows, with two names interleaved and dates out of order; then an overlapping batch.
    metrics = [
        {"name": "acc", "value": 0.5 + i / 100, "date_us": t0 + (i * 7919 % 23) * 1000, "metadata": f"m{i}\nx"}
        for i in range(23)
    ]
    metrics += [{"name": "lr", "value": "0.1", "date_us": t0 + i * 5000, "cumulative": True} for i in range(3)]
    assert post.post(batch, json={"run_id": rid, "metrics": metrics}).status_code in (200, 201)
    overlap = [
        {"name": "acc", "value": 9.0 + i, "date_us": t0 + 5500 + i * 3000, "metadata": 'ünïcode ✓ \\ "q"'}
        for i in range(4)
    ]
    assert post.post(batch, json={"run_id": rid, "metrics": overlap}).status_code in (200, 201)
    # Single posts (stored as JSON with spaces), one of them a tie on a date.
    for i, (value, meta) in enumerate([("3.25", '{"a": "x\\",\\"y"}'), ("7", "ends with backslash \\")]):
        single = {
            "run_id": rid,
            "name": "acc",
            "value": value,
            "date": f"2100-01-01T00:00:00.{(i * 6000):06d}Z",
            "metadata": meta,
            "cumulative": i == 1,
        }
        assert post.post(f"{url}/api/metrics/", json=single).status_code == 201
    assert post.post(f"{url}/api/metrics/", json={**single, "name": "TaskResult @ 0", "value": "done"}).status_code
    # A pod of the run, with its own metrics; and the other run.
    pod = post.post(f"{url}/api/pods/", json={"name": "old-run-worker-0", "run_id": rid}).json()
    for i in range(3):
        body = {
            "pod_name": pod["name"],
            "name": "cpu",
            "value": str(10 + i),
            "date": f"2100-01-01T00:00:0{i}Z",
            "metadata": "",
            "cumulative": False,
        }
        assert post.post(f"{url}/api/metrics/", json=body).status_code == 201
    r = post.post(
        batch,
        json={
            "run_id": other["id"],
            "columns": {"name": ["x"] * 3, "value": [1.5, 2.5, 3.5], "date_us": [t0, t0 + 1, t0 + 2]},
        },
    )
    assert r.status_code in (200, 201), r.text
    return {"run": rid, "other": other["id"], "pod": pod["name"], "t0": t0}


def reads(ids: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """The requests whose answers the old code recorded: dashboard reads and the read-back."""
    rid, pod = ids["run"], ids["pod"]
    points = f"/api/runs/{rid}/points/"
    return [
        (f"/api/metrics/{rid}/", {"metric_type": "run"}),
        (
            f"/api/metrics/{rid}/",
            {"metric_type": "run", "metric_filter": "acc", "since": "2100-01-01T00:00:00.004000Z"},
        ),
        (f"/api/metrics/{rid}/", {"metric_type": "run", "summarize": "4", "last_n": "3"}),
        (f"/api/metrics/{pod}/", {"metric_type": "pod"}),
        ("/api/metrics/", {}),
        (points, {}),
        (points, {"max_points": "8"}),
        (points, {"metric": "loss", "max_points": "10", "fields": "date_us,step,epoch,value"}),
        (points, {"name": "acc", "since": "2100-01-01T00:00:00.004Z", "until": "2100-01-01T00:00:00.012Z"}),
        (points, {"after": "3"}),
        (points, {"format": "csv"}),
        (points, {"format": "json", "max_points": "6"}),
        (f"/api/runs/{rid}/series/", {}),
        ("/api/runs/stats/", {}),
        (f"/api/runs/{ids['other']}/points/", {}),
    ]


def zip_entries(body: bytes) -> dict[str, str]:
    """A zip's entries and their texts (the zip's own bytes carry the time it was made)."""
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        return {name: zf.read(name).decode() for name in zf.namelist()}


def record(url: str, ids: dict[str, Any]) -> dict[str, Any]:
    answers = []
    with requests.Session() as http:
        for path, params in reads(ids):
            r = http.get(url + path, params=params, headers={"Accept-Encoding": "identity"})
            assert r.status_code == 200, (path, params, r.text)
            answers.append({"path": path, "params": params, "body": r.text})
        z = http.get(f"{url}/api/metrics/{ids['run']}/", params={"metric_type": "run", "format": "zip"})
    return {"ids": ids, "answers": answers, "zip": zip_entries(z.content)}


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
    db = out / "chunks_v1.db"
    work = out / "chunks_v1.work.db"
    for path in (db, work):
        path.unlink(missing_ok=True)
    handle = serve(db_path=str(work))
    try:
        ids = write(handle.url)
    finally:
        handle.stop()
    conn = sqlite3.connect(work)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "chunks" not in tables or "chunk_bodies" in tables:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(work) + suffix).unlink(missing_ok=True)
        sys.exit("this code writes the binary chunk format: run this file with the code of commit a8fe294")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("VACUUM")
    conn.close()
    shutil.move(str(work), db)
    for suffix in ("-wal", "-shm"):
        Path(str(work) + suffix).unlink(missing_ok=True)
    copy = out / "chunks_v1.read.db"
    shutil.copy(db, copy)
    handle = serve(db_path=str(copy))
    try:
        recorded = record(handle.url, ids)
    finally:
        handle.stop()
        for suffix in ("", "-wal", "-shm"):
            Path(str(copy) + suffix).unlink(missing_ok=True)
    (out / "chunks_v1.answers.json").write_text(json.dumps(recorded, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {db} ({db.stat().st_size} bytes) and its answers")


if __name__ == "__main__":
    main()

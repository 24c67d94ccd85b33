"""The server's chunked storage: ordering, filters, counts, ids across restarts.

Every test runs on both databases (``db_target``: a SQLite file, a PostgreSQL schema).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from itertools import repeat
from pathlib import Path

import pytest

from mlbench_metrics.server.schema import SCHEMA_VERSION
from mlbench_metrics.server.store import DuplicateBatch, RunNotFound, SchemaError, Store


@pytest.fixture
def store(db_target: str) -> Iterator[Store]:
    s = Store(db_target)
    yield s
    s.close()


def _run(store: Store) -> int:
    return int(store.create_run(0, name="r", num_workers=1)["id"])


def _batch(store: Store, run_id: int, names: list[str], dates: list[int], batch_id: str | None = None) -> None:
    n = len(names)
    values = [f"{n}:{d}" for n, d in zip(names, dates)]
    store.add_batch(run_id, batch_id, (names, dates, values, repeat("", n), repeat(False, n)), n, 0)


def test_points_are_ordered_by_date_then_arrival(store: Store) -> None:
    run = _run(store)
    _batch(store, run, ["a", "b", "a", "a"], [30, 5, 10, 20])  # out of order within a batch
    _batch(store, run, ["a", "a"], [15, 40])  # overlaps the first batch
    _batch(store, run, ["a"], [10])  # a tie: arrives later, so comes after
    series = dict(store.series(run_id=run))
    assert [p[0] for p in series["a"]] == [10, 10, 15, 20, 30, 40]
    assert [p[1] for p in series["a"][:2]] == ["a:10", "a:10"]
    assert [p[0] for p in series["b"]] == [5]
    assert store.count_metrics(run) == 7


def test_since_until_and_name_filters_cut_inside_chunks(store: Store) -> None:
    run = _run(store)
    _batch(store, run, ["a"] * 5, [1, 2, 3, 4, 5])
    _batch(store, run, ["b"] * 2, [1, 9])
    got = dict(store.series(run_id=run, since_us=2, until_us=4))
    assert [p[0] for p in got["a"]] == [2, 3, 4]
    assert "b" not in got
    assert [n for n, _ in store.series(run_id=run, name="b")] == ["b"]
    assert store.latest_value(run, "b") == "b:9"
    assert store.latest_value(run, "zzz") is None


def test_duplicate_batch_and_unknown_run(store: Store) -> None:
    run = _run(store)
    _batch(store, run, ["a"], [1], batch_id="x")
    with pytest.raises(DuplicateBatch):
        _batch(store, run, ["a"], [1], batch_id="x")
    with pytest.raises(RunNotFound):
        _batch(store, 999, ["a"], [1], batch_id="y")
    for missing in (999, 0, -run):  # a run's id below 1 is no pod's either
        with pytest.raises(RunNotFound):
            store.add_metric(run_id=missing, pod_id=None, row=("a", 1, "1", "", False))
        with pytest.raises(RunNotFound):
            _batch(store, missing, ["a"], [1], batch_id=f"z{missing}")
    assert store.count_metrics() == 1 and store.run_stats() == {run: (1, 1, 1)}
    _batch(store, run, ["a"], [2], batch_id="z999")  # a refused batch's id was not kept
    assert store.count_metrics() == 1 + 1


def test_pod_and_run_series_stay_apart(store: Store) -> None:
    run = _run(store)
    pod = store.upsert_pod("w-0", "{}", "Running", "127.0.0.1", run)
    store.add_metric(run_id=None, pod_id=pod["id"], row=("cpu", 5, "0.5", "", False))
    store.add_metric(run_id=run, pod_id=None, row=("cpu", 6, "0.7", "m", True))
    assert dict(store.series(pod_id=pod["id"]))["cpu"] == [(5, "0.5", False, "")]
    assert dict(store.series(run_id=run))["cpu"] == [(6, "0.7", True, "m")]
    assert [(o, n) for o, n, _ in store.all_series("pod")] == [(pod["id"], "cpu")]
    assert [(o, n) for o, n, _ in store.all_series("run")] == [(run, "cpu")]
    with pytest.raises(ValueError):
        list(store.series())


def test_arrival_ids_continue_after_reopening(db_target: str) -> None:
    first = Store(db_target)
    run = _run(first)
    _batch(first, run, ["a"], [10])
    first.close()
    second = Store(db_target)
    _batch(second, run, ["a"], [10])
    points = dict(second.series(run_id=run))["a"]
    assert len(points) == 2
    second.close()
    second.close()  # idempotent


def test_two_stores_on_one_file_take_turns_with_arrival_ids(db_target: str) -> None:
    """Two servers started on one database (the default path, say) both store every batch, and
    arrival ids keep growing across both, so live charts that poll by cursor miss nothing."""
    one, two = Store(db_target), Store(db_target)
    try:
        run = _run(one)
        for i, store in enumerate([one, two, two, one, two]):
            _batch(store, run, ["a"], [i])
        (columns,) = one.series_columns(run)
        assert list(columns.dates) == [0, 1, 2, 3, 4]
        assert [p[1] for p in dict(two.series(run_id=run))["a"]] == [f"a:{i}" for i in range(5)]
        first = two.series_columns(run, after_id=0)[0].cursor
        _batch(one, run, ["a"], [-1])  # dated before everything, arriving last
        (late,) = two.series_columns(run, after_id=first)
        assert list(late.dates) == [-1] and late.cursor > first
    finally:
        one.close()
        two.close()


def test_two_stores_may_give_two_runs_one_id_without_mixing_their_points(db_target: str) -> None:
    """Ids are unique per owner: a run's small chunk and another run's large one (its body in
    chunk_bodies) may share one, and each run still reads, and deletes, only its own."""
    one, two = Store(db_target), Store(db_target)
    try:
        small, large = _run(one), _run(one)
        one.add_metric(run_id=small, pod_id=None, row=("a", 5, "small", "", False))
        _batch(two, large, ["a"] * 200, list(range(200)))  # the same id as the small chunk, in chunk_bodies
        assert [p[1] for p in dict(one.series(run_id=small))["a"]] == ["small"]
        for store in (one, two):
            (columns,) = store.series_columns(small)
            assert list(columns.values) == ["small"] and len(store.series_columns(large)[0]) == 200
        assert one.delete_run(large)
        assert [p[1] for p in dict(two.series(run_id=small))["a"]] == ["small"]
    finally:
        one.close()
        two.close()


def test_the_schema_is_versioned_and_a_newer_one_is_refused(db_target: str) -> None:
    first = Store(db_target)
    assert first.schema_found == 0  # empty: created
    with first.db.transaction() as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    first.close()
    newer = rf"schema is version 99, newer than this mlbench-metrics knows \({SCHEMA_VERSION}\)"
    with pytest.raises(SchemaError, match=newer):
        Store(db_target)


def test_a_file_written_before_versions_is_brought_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent.parent / "data" / "chunks_v1.db", path)
    store = Store(str(path))
    try:
        assert store.schema_found == 1 and store.list_runs()
    finally:
        store.close()
    again = Store(str(path))
    assert again.schema_found == SCHEMA_VERSION
    again.close()


def test_run_stats_come_from_counts_kept_with_every_write(db_target: str) -> None:
    """The runs page asks every 2 s; it used to scan every chunk of every run (0.6 s for
    2,000 runs and a million chunks), now one row per series."""
    path = db_target
    store = Store(path)
    try:
        a, b = _run(store), _run(store)
        _batch(store, a, ["x", "y", "x"], [5, 1, 9])
        _batch(store, a, ["x"], [3])  # older than what came before: the newest date stays
        store.add_metric(run_id=b, pod_id=None, row=("z", 7, "1", "", False))
        pod = store.upsert_pod("p", "{}", "Running", "", None)
        store.add_metric(run_id=None, pod_id=pod["id"], row=("cpu", 8, "1", "", False))
        assert store.run_stats() == {a: (2, 4, 9), b: (1, 1, 7)}
        assert store.delete_run(b)
        assert store.run_stats() == {a: (2, 4, 9)}
        with store._transaction() as conn:  # a database written before the counts existed (version 2)
            conn.execute("DELETE FROM series_stats")
            conn.execute("UPDATE schema_version SET version = 2")
    finally:
        store.close()
    reopened = Store(path)
    try:
        assert reopened.run_stats() == {a: (2, 4, 9)}  # counted once, at open
    finally:
        reopened.close()

"""Folding records into aggregate points, and when to fold: pure logic on an injected clock."""

from __future__ import annotations

import json
import math

import pytest

from mlbench_metrics.delivery.fold import Row, plan_fold, rows_of
from mlbench_metrics.delivery.pace import LAG_BUDGET, PACE_PRIOR, FoldPolicy, check_aggregate
from mlbench_metrics.errors import ConfigError
from mlbench_metrics.records import Context, encode

CTX = Context(0, 2, None)
CUM = Context(0, 2, None, True)
S = 1_000_000  # microseconds in a second


def row(name: str, value: object, t_s: float, step: int | None = None, cumulative: bool = False) -> Row:
    metadata = CTX.metadata(step)
    return Row(name, value, round(t_s * S), metadata, cumulative, step)


def points(plan_rows: list[Row], window_s: float | None = None) -> list[tuple[str, object, int, dict, bool]]:
    plan = plan_fold(plan_rows, None if window_s is None else round(window_s * S))
    return [(n, v, d, json.loads(m), c) for n, v, d, m, c in plan.points.rows()]


def test_a_series_becomes_its_mean_with_count_min_max_and_steps() -> None:
    rows = [row("loss @ 0", v, 10 + i * 0.1, step=100 + i) for i, v in enumerate([4.0, 1.0, 2.0, 3.0])]
    [(name, value, date_us, metadata, cumulative)] = points(rows)
    assert (name, value, date_us, cumulative) == ("loss @ 0", 2.5, round(10.15 * S), False)  # the middle
    assert metadata == {
        "rank": 0,
        "epoch": 2,
        "step": 102,
        "aggregate": "mean",
        "count": 4,
        "min": 1.0,
        "max": 4.0,
        "first_step": 100,
        "last_step": 103,
    }


def test_a_running_total_becomes_its_last_value_so_the_rate_stays_exact() -> None:
    # The dashboard draws a cumulative series as the rate between consecutive points: the
    # last total at the last date keeps that rate exact; a mean would not.
    rows = [row("samples @ 0", total, 10 + i, cumulative=True) for i, total in enumerate([32, 64, 96])]
    [(_, value, date_us, metadata, cumulative)] = points(rows)
    assert (value, date_us, cumulative) == (96, rows[-1].date_us, True)
    assert metadata["aggregate"] == "last" and metadata["count"] == 3


@pytest.mark.parametrize(
    ("name", "value"),
    [("TaskResult @ 0", 1.0), ("status @ 0", "warming up")],
    ids=["task-result", "text"],
)
def test_task_results_and_text_values_are_sent_raw(name: str, value: object) -> None:
    rows = [row(name, value, 10), row(name, value, 11), row("loss @ 0", 1.0, 10), row("loss @ 0", 3.0, 11)]
    plan = plan_fold(rows)
    assert plan.raw == [0, 1] and plan.groups == [[2, 3]] and plan.folded == 2


def test_a_series_seen_once_is_sent_raw() -> None:
    rows = [row("val_loss @ 0", 0.5, 10), row("loss @ 0", 1.0, 10), row("loss @ 0", 2.0, 10.5)]
    plan = plan_fold(rows)
    assert plan.raw == [0] and plan.groups == [[1, 2]]


def test_ranks_and_cumulative_flags_are_separate_series() -> None:
    rows = [
        row("t @ 0", 1.0, 10),
        row("t @ 1", 5.0, 10),
        row("t @ 0", 3.0, 11),
        row("t @ 1", 7.0, 11),
        row("t @ 0", 9.0, 11, cumulative=True),
        row("t @ 0", 10.0, 12, cumulative=True),
    ]
    found = {(n, c): v for n, v, _, _, c in points(rows)}
    assert found == {("t @ 0", False): 2.0, ("t @ 1", False): 6.0, ("t @ 0", True): 10.0}


def test_fixed_windows_are_aligned_to_the_clock() -> None:
    rows = [row("loss @ 0", float(i), 100 + i * 0.5) for i in range(8)]  # 100.0 .. 103.5 s
    found = [(v, m["count"]) for _, v, _, m, _ in points(rows, window_s=2.0)]
    assert found == [(1.5, 4), (5.5, 4)]  # [100, 102) and [102, 104)


def test_nan_and_infinities_stay_visible() -> None:
    rows = [row("loss @ 0", v, 10 + i) for i, v in enumerate([1.0, math.nan, math.inf])]
    [(_, value, _, metadata, _)] = points(rows)
    assert math.isnan(value)
    assert (metadata["min"], metadata["max"]) == (1.0, "inf")


def test_metadata_keeps_the_last_records_extra_keys_and_takes_the_points_step() -> None:
    extra = Context(1, 3, None, False, ', "lr": 0.1')
    rows = [
        Row("loss @ 1", 1.0, 10 * S, CTX.metadata(5), False, 5),
        Row("loss @ 1", 2.0, 11 * S, extra.metadata(7), False, 7),
    ]
    [(_, _, _, metadata, _)] = points(rows)
    assert metadata["rank"] == 1 and metadata["epoch"] == 3 and metadata["lr"] == 0.1 and metadata["step"] == 6
    unstepped = [Row("loss @ 1", 1.0, 10 * S, "", False, None), Row("loss @ 1", 2.0, 11 * S, "", False, 7)]
    [(_, _, _, metadata, _)] = points(unstepped)
    assert "step" not in metadata  # no step it could stand at


def test_where_raw_points_and_aggregates_alternate_a_straight_trend_stays_straight() -> None:
    # Before, a mean was dated at its window's last record: on a falling loss each
    # aggregate sat above the line, a staircase of 0.024-0.028 drops on the dashboard's chart.
    def loss(t_s: float) -> float:
        return 3.0 - 0.01 * t_s

    raw_before = row("loss @ 0", loss(9.0), 9.0, step=90)
    folded = [row("loss @ 0", loss(10 + i * 0.1), 10 + i * 0.1, step=100 + i) for i in range(30)]
    raw_after = row("loss @ 0", loss(13.0), 13.0, step=130)
    [(_, value, date_us, metadata, _)] = points(folded)
    assert value == pytest.approx(loss(date_us / S), abs=1e-9)  # on the line, where it is dated
    assert raw_before.date_us < date_us < raw_after.date_us
    assert metadata["step"] == 114 and (metadata["first_step"], metadata["last_step"]) == (100, 129)


def test_rows_read_steps_from_the_loggers_templates_and_from_plain_texts() -> None:
    batch = encode([("a", 1.0, 10**18, 7, CTX), ("a", 2.0, 10**18 + 1000, None, CTX)], "b-1")
    assert [r.step for r in rows_of(batch)] == [7, None]
    plain = batch.subset(range(2))  # metadata as texts, as a spooled batch has it
    assert [r.step for r in rows_of(plain)] == [7, None]
    assert [r.value for r in rows_of(plain, [1])] == [2.0]


# -- when to fold -----------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_auto_sends_raw_while_the_records_waiting_fit_the_budget_at_the_measured_pace() -> None:
    clock = Clock()
    policy = FoldPolicy("auto", clock=clock)
    assert policy.pace == PACE_PRIOR  # nothing measured yet
    policy.observe(posts=80, seconds=2.0)  # 40 posts/s
    assert policy.pace == 40.0
    assert not policy.fold(records=80, newest_s=clock.now)  # 2 s of work
    assert policy.fold(records=160, newest_s=clock.now)  # 4 s of work
    assert policy.fold(records=80, newest_s=clock.now - 1.5)  # 2 s of work, 1.5 s old already
    assert not policy.fold(records=40 * LAG_BUDGET, newest_s=clock.now)  # exactly the budget


def test_the_pace_follows_the_last_sends() -> None:
    policy = FoldPolicy("auto")
    for _ in range(20):
        policy.observe(posts=10, seconds=1.0)
    for _ in range(20):
        policy.observe(posts=100, seconds=1.0)
    assert policy.pace == 100.0
    assert policy.remaining(posts=300, elapsed=2.0) == 100.0
    assert policy.remaining(posts=100, elapsed=2.0) == 0.0


@pytest.mark.parametrize(("aggregate", "folds"), [("off", False), (5, True), (0.5, True)])
def test_off_never_folds_and_a_fixed_window_always_does(aggregate: str | float, folds: bool) -> None:
    policy = FoldPolicy(aggregate, clock=Clock())
    policy.observe(posts=10_000, seconds=1.0)
    assert policy.fold(records=1, newest_s=1000.0) is folds
    assert policy.off is (aggregate == "off")
    assert policy.window_us == (None if aggregate == "off" else round(float(aggregate) * S))


@pytest.mark.parametrize("bad", ["sometimes", 0, -1, math.inf, math.nan, True, None])
def test_a_bad_aggregate_setting_is_refused_with_what_is_allowed(bad: object) -> None:
    with pytest.raises(ConfigError, match='"auto", "off" or a positive number of seconds'):
        check_aggregate(bad)

"""``mlbench_metrics.compat``: mlbench_core's LogMetrics and Tracker, against the embedded server."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

from mlbench_metrics.compat import AverageMeter, LogMetrics, Tracker
from mlbench_metrics.errors import ConfigError
from mlbench_metrics.server import ServerHandle

from helpers import create_run


class TopKAccuracy:
    def __init__(self, k: int) -> None:
        self.name = f"Prec@{k}"


class Clock:
    """Seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def to_server(fresh_server: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerHandle]:
    """LogMetrics sending to a fresh embedded server through MLBENCH_METRICS_URL."""
    monkeypatch.setenv("MLBENCH_METRICS_URL", fresh_server.address)
    LogMetrics.configure()
    try:
        yield fresh_server
    finally:
        LogMetrics.close(10)
        LogMetrics.configure()


@pytest.fixture
def nowhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Outside a cluster with no URL: upstream sends nothing, and so does LogMetrics."""
    monkeypatch.delenv("MLBENCH_METRICS_URL", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    LogMetrics.configure()
    try:
        yield
    finally:
        LogMetrics.close(10)
        LogMetrics.configure()


def stored(server: ServerHandle, run_id: int) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Each series of the run: ``[(value, metadata), ...]`` in date order."""
    return {
        name: [(value, json.loads(metadata)) for _, value, _, metadata in points]
        for name, points in server.store.series(run_id=run_id)
    }


def test_log_names_values_and_metadata_as_upstream(to_server: ServerHandle) -> None:
    run = create_run(to_server.url)
    LogMetrics.log(run["id"], 1, 2, "train_loss", 0.5)
    LogMetrics.log(str(run["id"]), "1", 2.5, "val_loss", 0.75)  # ids and ranks as text, a fractional epoch
    assert LogMetrics.close(10) == 0
    series = stored(to_server, run["id"])
    assert series["train_loss @ 1"] == [("0.5", {"rank": 1, "epoch": 2})]
    ((value, metadata),) = series["val_loss @ 1"]
    assert value == "0.75" and metadata == {"rank": 1, "epoch": 2, "fractional_epoch": 2.5}


def test_a_value_the_logger_refuses_is_sent_as_upstream_sends_it(
    to_server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    run = create_run(to_server.url)
    result = "70% Top 1 Validation Accuracy reached in 1234.567 seconds, " + "Compute: 1000.123 seconds, " * 4
    with caplog.at_level(logging.WARNING, logger="mlbench_metrics.compat"):
        LogMetrics.log(run["id"], 0, 3, "TaskResult", result)
        LogMetrics.log(run["id"], 0, 3, "TaskResult", result + "!")
        LogMetrics.log(run["id"], 0, 3, "train_loss", 0.25)
    assert LogMetrics.flush(30)
    series = stored(to_server, run["id"])
    assert [value for value, _ in series["TaskResult @ 0"]] == [result, result + "!"]
    assert series["TaskResult @ 0"][0][1] == {"rank": 0, "epoch": 3}
    assert len(series["train_loss @ 0"]) == 1
    assert caplog.text.count("'TaskResult @ 0' is sent as one post") == 1


def test_nothing_is_sent_outside_a_cluster_without_a_url(nowhere: None) -> None:
    LogMetrics.log(1, 0, 0, "train_loss", 0.5)
    assert LogMetrics.logger(1, 0) is None
    assert LogMetrics.flush(1) and LogMetrics.close(1) == 0


def test_configure_sets_where_and_how(fresh_server: ServerHandle, nowhere: None) -> None:
    run = create_run(fresh_server.url)
    LogMetrics.configure(url=fresh_server.address, shutdown_timeout=7, batch_size=10)
    LogMetrics.log(run["id"], 0, 0, "acc", 1)
    logger = LogMetrics.logger(run["id"], 0)
    assert logger is not None and (logger.shutdown_timeout, logger.batch_size) == (7, 10)
    assert LogMetrics.close() == 0
    assert fresh_server.store.count_metrics(run["id"]) == 1


@pytest.mark.parametrize("rank", [-1, "zero", None, True])
def test_a_rank_that_is_not_one_is_a_clear_error(to_server: ServerHandle, rank: object) -> None:
    with pytest.raises(ConfigError, match="rank must be a non-negative integer"):
        LogMetrics.log(1, rank, 0, "x", 1)


def run_batch(tracker: Tracker, clock: Clock) -> None:
    """One batch of upstream's training loop, every phase taking half a second."""
    tracker.batch_start()
    for mark in (
        tracker.record_batch_load,
        tracker.record_batch_init,
        tracker.record_batch_fwd_pass,
        tracker.record_batch_comp_loss,
        tracker.record_batch_backprop,
        tracker.record_batch_agg,
        tracker.record_batch_opt_step,
        tracker.record_batch_comp_metrics,
    ):
        clock.tick(0.5)
        mark()
    clock.tick(0.5)
    tracker.batch_end()


def test_tracker_phase_times_as_upstream_counts_them(nowhere: None) -> None:
    clock = Clock()
    tracker = Tracker([TopKAccuracy(1)], 1, 0, clock=clock)
    tracker.start()
    for batches in (1, 2):
        run_batch(tracker, clock)
        assert tracker.get_total_preprocess_time() == pytest.approx(0.5 * batches)
        assert tracker.get_total_communication_time() == pytest.approx(0.5 * batches)
        assert tracker.get_total_compute_time() == pytest.approx(2.0 * batches)
        assert tracker.get_total_metrics_time() == pytest.approx(0.5 * batches)
        assert tracker.get_total_train_time() == pytest.approx(4.5 * batches)
    assert tracker.epoch_metrics["fwd_pass"] == [pytest.approx(1.0)]
    assert tracker.epoch_metrics["CumulativeTrainTimeEpoch"] == [pytest.approx(9.0)]
    tracker.validation_start()
    clock.tick(3)
    tracker.validation_end()
    assert tracker.get_total_val_time() == pytest.approx(3)  # upstream counted 0
    tracker.current_epoch = 3  # a loop that starts counting elsewhere: upstream failed here
    run_batch(tracker, clock)
    assert tracker.epoch_metrics["fwd_pass"] == [pytest.approx(1.0), 0.0, 0.0, pytest.approx(0.5)]
    with pytest.raises(RuntimeError, match="already started"):
        tracker.start()


def test_tracker_stats_best_epoch_and_text(nowhere: None) -> None:
    metric = TopKAccuracy(1)
    tracker = Tracker([metric], 1, 0, compute_steps="fwd_pass", minimize=False, clock=Clock())
    assert tracker.compute_steps == ["fwd_pass"] and tracker.communication_steps == ["agg"]
    tracker.record_loss(2.0, n=2)
    tracker.record_loss(1.0, n=2)
    assert tracker.epoch_stats["train_loss"].avg == pytest.approx(1.5)
    tracker.record_metric(metric, 50)  # training values do not make a best epoch
    assert tracker.best_metric_value == 0
    tracker.validation()
    tracker.record_metric(metric, 60)
    tracker.epoch_end()
    tracker.record_metric(metric, 55)
    assert (tracker.best_metric_value, tracker.best_epoch, tracker.is_best()) == (60, 0, False)
    assert [entry[2:4] for entry in tracker.history] == [
        ("train_loss", 2.0),
        ("train_loss", 1.0),
        ("train_Prec@1", 50),
        ("val_Prec@1", 60),
        ("val_Prec@1", 55),
    ]
    assert str(tracker).startswith("loss=0.00e+00 | Prec@1 5.50e+01")
    meter = AverageMeter()
    meter.update(3, n=3)
    assert (meter.val, meter.sum, meter.count, meter.avg) == (3, 9, 3, 3)


def goal_at(threshold: float) -> Any:
    def goal(name: str, value: float, tracker: Tracker) -> str | None:
        if name == "val_global_Prec@1" and value >= threshold:
            return f"reached in {tracker.get_total_train_time():.1f} seconds"
        return None

    return goal


def test_tracker_logs_epochs_and_the_task_result(to_server: ServerHandle, capsys: pytest.CaptureFixture[str]) -> None:
    run = create_run(to_server.url)
    clock = Clock()
    tracker = Tracker([TopKAccuracy(1)], run["id"], 0, goal=goal_at(70), clock=clock)
    tracker.start()
    for epoch in range(2):
        tracker.train()
        run_batch(tracker, clock)
        tracker.record_loss(1.0 / (epoch + 1), 32, log_to_api=True)
        tracker.validation()
        tracker.record_stat("global_Prec@1", 60 + 10 * epoch, log_to_api=True)
        tracker.epoch_end()
    tracker.record_stat("global_Prec@1", 80, log_to_api=True)  # reached once: no second TaskResult
    assert LogMetrics.close(10) == 0
    assert "goal reached!" in capsys.readouterr().out
    series = stored(to_server, run["id"])
    assert [v for v, _ in series["TaskResult @ 0"]] == ["reached in 9.0 seconds"]
    assert [v for v, _ in series["TotalCumulativeTrainTime @ 0"]] == ["9.0"]
    assert [v for v, _ in series["global_cum_fwd_pass @ 0"]] == ["1.0"]
    assert [(v, m["epoch"]) for v, m in series["fwd_pass @ 0"]] == [("0.5", 0), ("0.5", 1)]
    assert [v for v, _ in series["train_loss @ 0"]] == ["1.0", "0.5"]
    assert [v for v, _ in series["val_global_Prec@1 @ 0"]] == ["60", "70", "80"]
    assert len(series["CumulativeTrainTimeEpoch @ 0"]) == 2


def test_suites_that_patch_log_metrics_as_upstreams_do() -> None:
    """mlbench-core's tests patch ``mlbench_core.utils.tracker.LogMetrics``; the same works here.

    A mock is the point of this test: it checks the Tracker looks LogMetrics up where such
    suites patch it.
    """
    with mock.patch("mlbench_metrics.compat.tracker.LogMetrics") as patched:
        clock = Clock()
        tracker = Tracker([TopKAccuracy(1)], 1, 0, goal=goal_at(70), clock=clock)
        tracker.start()
        run_batch(tracker, clock)
        tracker.validation()
        tracker.record_stat("global_Prec@1", 70, log_to_api=True)
    assert tracker.goal_reached
    assert [c.args[3] for c in patched.log.call_args_list][:2] == ["val_global_Prec@1", "TaskResult"]

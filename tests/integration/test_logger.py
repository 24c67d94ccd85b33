"""MetricsLogger against the embedded server: what is stored, validation, delivery, lifecycle."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

import mlbench_metrics
from fakes import HANG, ScriptedServer, Seen, forward, http_response
from mlbench_metrics import ClosedError, ConfigError, MetricsLogger, SystemMetrics, TimerError
from mlbench_metrics.server import ServerHandle, serve

from helpers import create_run


def series(server: ServerHandle, run_id: int) -> dict[str, list[dict[str, Any]]]:
    r = requests.get(f"{server.url}/api/metrics/{run_id}", params={"metric_type": "run"})
    assert r.status_code == 200
    return dict(r.json())


def all_points(server: ServerHandle, run_name: str) -> dict[str, list[dict[str, Any]]]:
    return dict(requests.get(f"{server.url}/api/metrics/").json()["run_metrics"][run_name])


def busy(seconds: float) -> None:
    """Spend ``seconds`` on the CPU (what a timed block does)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.fixture
def run(fresh_server: ServerHandle) -> dict[str, Any]:
    return create_run(fresh_server.url)


@pytest.fixture
def logger(fresh_server: ServerHandle, run: dict[str, Any]) -> Iterator[MetricsLogger]:
    log = MetricsLogger(run["id"], url=fresh_server.address, rank=0, flush_interval=0.05)
    yield log
    log.close()


def test_records_arrive_with_rank_names_and_metadata(
    fresh_server: ServerHandle, run: dict[str, Any], logger: MetricsLogger
) -> None:
    logger.log("train_loss", 0.5, step=3)
    logger.step = 7
    logger.log("acc", 0.9)
    logger.epoch_end()
    logger.log("lr", 0.1, note="warmup")
    logger.log("tag", "ok")
    assert logger.flush(30)
    points = all_points(fresh_server, run["name"])
    assert set(points) == {"train_loss @ 0", "acc @ 0", "lr @ 0", "tag @ 0"}
    assert json.loads(points["train_loss @ 0"][0]["metadata"]) == {"rank": 0, "epoch": 0, "step": 3}
    assert json.loads(points["acc @ 0"][0]["metadata"]) == {"rank": 0, "epoch": 0, "step": 7}
    assert json.loads(points["lr @ 0"][0]["metadata"]) == {"rank": 0, "epoch": 1, "step": 7, "note": "warmup"}
    assert points["train_loss @ 0"][0]["value"] == "0.5"
    assert points["tag @ 0"][0]["value"] == "ok"
    assert points["acc @ 0"][0]["cumulative"] is False
    stats = logger.stats
    assert (stats.logged, stats.stored, stats.dropped_total, stats.pending) == (4, 4, 0, 0)


def test_nan_and_infinity_are_kept(fresh_server: ServerHandle, run: dict[str, Any], logger: MetricsLogger) -> None:
    for value in (math.nan, math.inf, -math.inf, 3, 2.5):
        logger.log("loss", value)
    assert logger.flush(30)
    assert [p["value"] for p in series(fresh_server, run["id"])["loss @ 0"]] == ["nan", "inf", "-inf", "3", "2.5"]


def test_eight_threads_lose_nothing(fresh_server: ServerHandle, run: dict[str, Any], logger: MetricsLogger) -> None:
    per_thread = 2000
    start = threading.Barrier(8)

    def work(index: int) -> None:
        start.wait()
        for i in range(per_thread):
            logger.log(f"t{index}", i)
            logger.increment("samples", 2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert logger.flush(60)
    assert fresh_server.store.count_metrics(run["id"]) == 8 * per_thread * 2
    body = series(fresh_server, run["id"])
    for index in range(8):
        assert sorted(int(p["value"]) for p in body[f"t{index} @ 0"]) == list(range(per_thread))
    totals = [int(p["value"]) for p in body["samples @ 0"]]
    assert max(totals) == 8 * per_thread * 2
    assert sorted(totals) == list(range(2, 8 * per_thread * 2 + 1, 2))  # every running total once
    assert all(p["cumulative"] for p in body["samples @ 0"])


def test_increment_posts_running_totals(fresh_server: ServerHandle, run: dict[str, Any], logger: MetricsLogger) -> None:
    assert logger.increment("samples", 32) == 32
    assert logger.increment("samples") == 33
    assert logger.increment("seconds", 0.5) == 0.5
    logger.log_cumulative("net_bytes", 1000)
    assert logger.flush(30)
    body = series(fresh_server, run["id"])
    assert [(p["value"], p["cumulative"]) for p in body["samples @ 0"]] == [("32", True), ("33", True)]
    assert body["net_bytes @ 0"][0]["cumulative"] is True


def test_timers_context_manager_object_and_decorator(
    fresh_server: ServerHandle, run: dict[str, Any], logger: MetricsLogger
) -> None:
    with logger.timer("fwd_pass") as t:
        busy(0.02)
    assert 0.02 <= t.last < 5
    explicit = logger.timer("epoch").start()
    busy(0.01)
    took = explicit.stop()
    with pytest.raises(TimerError):
        explicit.stop()
    for _ in range(2):
        with logger.timer("phase", cumulative=True):
            busy(0.01)

    @logger.timed("fib")
    def fib(n: int) -> int:
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    assert fib(4) == 3  # recursive: each call timed on its own
    threads = [threading.Thread(target=fib, args=(3,)) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert logger.flush(30)
    body = series(fresh_server, run["id"])
    assert 0.02 <= float(body["fwd_pass @ 0"][0]["value"]) < 5
    assert float(body["epoch @ 0"][0]["value"]) == pytest.approx(took)
    phase = [float(p["value"]) for p in body["phase @ 0"]]
    assert len(phase) == 2 and phase[1] > phase[0] >= 0.01 and all(p["cumulative"] for p in body["phase @ 0"])
    assert len(body["fib @ 0"]) == 9 + 4 * 5  # fib(4) makes 9 calls, fib(3) 5


def test_a_timed_block_that_raises_still_records(
    fresh_server: ServerHandle, run: dict[str, Any], logger: MetricsLogger
) -> None:
    with pytest.raises(ZeroDivisionError), logger.timer("doomed"):
        1 / 0  # noqa: B018
    assert logger.flush(30)
    assert "doomed @ 0" in series(fresh_server, run["id"])


BAD_CALLS: list[tuple[str, Any, type[Exception], str]] = [
    ("long-name", lambda log: log.log("x" * 47, 1.0), ValueError, "limit is 50"),
    ("name-type", lambda log: log.log(42, 1.0), TypeError, "must be a string"),
    ("empty-name", lambda log: log.log("", 1.0), ValueError, "empty"),
    ("blank-name", lambda log: log.log("   ", 1.0), ValueError, "empty"),
    ("bool", lambda log: log.log("flag", True), TypeError, "number or a string"),
    ("none", lambda log: log.log("none", None), TypeError, "number or a string"),
    ("long-text", lambda log: log.log("text", "v" * 101), ValueError, "limit is 100"),
    ("object", lambda log: log.log("obj", object()), TypeError, "int, a float or a string"),
    ("step-type", lambda log: log.log("step", 1.0, step="3"), TypeError, "step must be an integer"),
    ("metadata-object", lambda log: log.log("meta", 1.0, when=object()), TypeError, "JSON-serialisable"),
    ("metadata-nan", lambda log: log.log("meta", 1.0, nan=math.nan), TypeError, "JSON-serialisable"),
    ("metadata-reserved", lambda log: log.log("meta", 1.0, epoch=3), ValueError, "set by the logger"),
    ("log-many-value", lambda log: log.log_many({"ok": 1.0, "bad": None}), TypeError, "number or a string"),
    ("log-many-type", lambda log: log.log_many([("a", 1)]), TypeError, "mapping"),
    ("epoch", lambda log: setattr(log, "epoch", -1), TypeError, "non-negative"),
    ("increment-negative", lambda log: log.increment("n", -1), ValueError, "non-negative"),
    ("increment-nan", lambda log: log.increment("n", math.nan), ValueError, "non-negative"),
    ("increment-inf", lambda log: log.increment("n", math.inf), ValueError, "non-negative"),
    ("increment-text", lambda log: log.increment("n", "3"), TypeError, "must be a number"),
]


@pytest.mark.parametrize(("call", "kind", "needle"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_is_refused_at_the_call(logger: MetricsLogger, call: Any, kind: type[Exception], needle: str) -> None:
    with pytest.raises(kind, match=needle):
        call(logger)
    assert logger.stats.logged == 0  # nothing from a refused call, not even half a log_many


def test_a_percent_sign_in_metadata_is_kept(
    fresh_server: ServerHandle, run: dict[str, Any], logger: MetricsLogger
) -> None:
    logger.log("lr", 0.1, step=3, note="50% warmup")
    logger.step = 4
    logger.log("lr", 0.2, note="100%")
    assert logger.flush(30)
    points = all_points(fresh_server, run["name"])["lr @ 0"]
    assert [json.loads(p["metadata"])["note"] for p in points] == ["50% warmup", "100%"]
    assert [json.loads(p["metadata"])["step"] for p in points] == [3, 4]


def test_numbers_from_other_libraries_are_converted(
    fresh_server: ServerHandle, run: dict[str, Any], logger: MetricsLogger
) -> None:
    class Scalar:  # what loss.item() would otherwise be: a 0-d tensor
        def item(self) -> float:
            return 0.25

    import decimal
    import fractions

    logger.log("tensor", Scalar())  # type: ignore[arg-type]
    logger.log("fraction", fractions.Fraction(1, 4))  # type: ignore[arg-type]
    logger.log("decimal", decimal.Decimal("0.5"))  # type: ignore[arg-type]
    assert logger.flush(30)
    body = series(fresh_server, run["id"])
    assert body["tensor @ 0"][0]["value"] == "0.25"
    assert body["fraction @ 0"][0]["value"] == "0.25"


def test_log_many(fresh_server: ServerHandle, run: dict[str, Any], logger: MetricsLogger) -> None:
    logger.log_many({"a": 1, "b": 2.5, "c": "x"}, step=4)
    assert logger.flush(30)
    body = series(fresh_server, run["id"])
    assert {k: v[0]["value"] for k, v in body.items()} == {"a @ 0": "1", "b @ 0": "2.5", "c @ 0": "x"}


def test_without_a_rank_names_are_kept(
    fresh_server: ServerHandle, run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("MLBENCH_METRICS_RANK", raising=False)
    with MetricsLogger(run["id"], url=fresh_server.address) as log:
        log.log("loss", 1.0, step=1)
        assert log.flush(30)
    points = all_points(fresh_server, run["name"])
    assert list(points) == ["loss"]
    assert json.loads(points["loss"][0]["metadata"]) == {"epoch": 0, "step": 1}


def _timed_block(log: MetricsLogger) -> None:
    with log.timer("t"):
        pass


@pytest.mark.parametrize(
    "call",
    [
        lambda log: log.log("x", 1),
        lambda log: log.increment("x"),
        lambda log: log.log_many({"x": 1}),
        lambda log: log.flush(1),
        _timed_block,
    ],
    ids=["log", "increment", "log_many", "flush", "timer"],
)
def test_a_closed_logger_refuses_more(fresh_server: ServerHandle, run: dict[str, Any], call: Any) -> None:
    log = MetricsLogger(run["id"], url=fresh_server.address, rank=0)
    log.log("x", 1)
    assert log.close() == 0
    assert log.close() == 0
    assert fresh_server.store.count_metrics(run["id"]) == 1
    with pytest.raises(ClosedError):
        call(log)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"run_id": 0},
        {"run_id": "seven"},
        {"run_id": 1, "batch_size": 0},
        {"run_id": 1, "max_buffer": 10},
        {"run_id": 1, "flush_interval": 0},
        {"run_id": 1, "rank": -1},
        {"run_id": 1, "max_in_flight": 0},
        {"run_id": 1, "spool_max_bytes": 1000},
        {"run_id": 1, "durable": True, "spool": False},
        {"run_id": 1, "new_run": "x"},
    ],
)
def test_configuration_errors(
    fresh_server: ServerHandle, monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any]
) -> None:
    monkeypatch.delenv("MLBENCH_METRICS_RUN_ID", raising=False)
    with pytest.raises(ConfigError):
        MetricsLogger(url=fresh_server.address, **kwargs)


def test_run_id_from_the_environment(
    fresh_server: ServerHandle, run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLBENCH_METRICS_RUN_ID", str(run["id"]))
    monkeypatch.setenv("MLBENCH_METRICS_URL", fresh_server.address)
    monkeypatch.setenv("MLBENCH_METRICS_RANK", "3")
    with MetricsLogger() as log:
        assert (log.run_id, log.rank) == (run["id"], 3)
        log.log("x", 1)
    assert list(series(fresh_server, run["id"])) == ["x @ 3"]


def test_dashboard_without_the_batch_endpoint() -> None:
    # aggregate="off": this is the single-post fan-out; with "auto" a loaded machine makes
    # the server look slow and some points arrive folded (aggregation has its own tests).
    with serve(extensions=False) as dashboard_like:
        run = create_run(dashboard_like.url)
        with MetricsLogger(run["id"], url=dashboard_like.address, rank=0, aggregate="off") as log:
            for i in range(300):
                log.log("loss", i, step=i)
            assert log.flush(60)
            assert log.client.batch_supported is False
        body = series(dashboard_like, run["id"])
        assert sorted(int(p["value"]) for p in body["loss @ 0"]) == list(range(300))
        md = {json.loads(p["metadata"])["step"] for p in all_points(dashboard_like, run["name"])["loss @ 0"]}
        assert md == set(range(300))


def test_overflow_without_a_spool_drops_the_oldest_and_counts(fresh_server: ServerHandle, run: dict[str, Any]) -> None:
    # A server that never answers: everything piles up in memory.
    with ScriptedServer(lambda seen, i: HANG) as silent:
        log = MetricsLogger(
            run["id"], url=silent.address, batch_size=100, max_buffer=1000, max_in_flight=1, spool=False
        )
        for i in range(5000):
            log.log("x", i)
        stats = log.stats
        assert stats.pending <= 2 * 1000 + 2 * 100  # memory stays bounded: about twice max_buffer
        log.close(timeout=0.5)
        stats = log.stats
    assert stats.dropped.get("overflow", 0) > 0
    assert stats.logged == 5000
    assert stats.stored + stats.dropped_total == 5000


def test_a_server_that_never_answers_does_not_hold_close(run: dict[str, Any]) -> None:
    with ScriptedServer(lambda seen, i: HANG) as silent:
        log = MetricsLogger(run["id"], url=silent.address, spool=False)
        for i in range(50):
            log.log("x", i)
        log.flush(0.2)
        started = time.monotonic()
        left = log.close(timeout=1.0)
        assert time.monotonic() - started < 2.0
        assert left == 50
        assert log.stats.dropped == {"shutdown": 50}


def test_transient_failures_are_retried_and_stored_once(fresh_server: ServerHandle, run: dict[str, Any]) -> None:
    # A proxy in front of the real server that answers 503 to the first batch posts.
    failures = {"left": 3}

    def script(seen: Seen, index: int) -> bytes:
        if seen.method == "POST" and seen.path.endswith("/batch/") and failures["left"] > 0:
            failures["left"] -= 1
            return http_response(503, "{}", {"Retry-After": "0"})
        return forward(fresh_server.url, seen)

    with ScriptedServer(script) as proxy:
        log = MetricsLogger(run["id"], url=proxy.address, batch_size=50, flush_interval=0.05)
        log.client.retry_policy = mlbench_metrics.RetryPolicy(max_attempts=1)
        for i in range(500):
            log.log("x", i)
        assert log.flush(60)
        log.close()
    assert failures["left"] == 0
    assert log.stats.stored == 500 and log.stats.retried > 0
    assert fresh_server.store.count_metrics(run["id"]) == 500


def test_the_dispatcher_alone_tries_a_batch_again_honouring_retry_after_and_counts_every_attempt(
    fresh_server: ServerHandle, run: dict[str, Any]
) -> None:
    # Was: the client tried a batch post up to 5 times (30 s) inside one delivery, the
    # dispatcher saw one attempt, and stats.retried stayed 0.
    attempts: dict[str, list[float]] = {}

    def script(seen: Seen, index: int) -> bytes:
        if seen.method == "POST" and seen.path.endswith("/batch/"):
            times = attempts.setdefault(json.loads(seen.body)["batch_id"], [])
            times.append(time.monotonic())
            if len(times) <= 2:
                return http_response(503, "{}", {"Retry-After": "1"})
        return forward(fresh_server.url, seen)

    with ScriptedServer(script) as proxy:
        log = MetricsLogger(run["id"], url=proxy.address, batch_size=100, spool=False)
        for i in range(100):
            log.log("x", i)
        assert log.flush(60)
        log.close()
    assert attempts and all(len(times) == 3 for times in attempts.values())  # two refusals, then stored
    for times in attempts.values():  # each wait as long as the server asked (the backoff alone: 0.1 s)
        assert times[1] - times[0] >= 0.9 and times[2] - times[1] >= 0.9
    stats = log.stats
    assert stats.stored == 100 and stats.retried == 200  # every record, once per attempt after the first
    assert fresh_server.store.count_metrics(run["id"]) == 100


def test_a_deleted_run_is_reported_not_retried_forever(fresh_server: ServerHandle) -> None:
    run = create_run(fresh_server.url)
    with MetricsLogger(run["id"], url=fresh_server.address) as log:
        log.log("x", 1)
        assert log.flush(30)
        requests.delete(f"{fresh_server.url}/api/runs/{run['id']}/")
        log.log("x", 2)
        assert log.flush(30) is False
        assert log.stats.dropped == {"rejected": 1}
        assert "404" in (log.stats.last_error or "")


def test_flush_times_out_while_the_server_is_away(run: dict[str, Any]) -> None:
    with ScriptedServer(lambda seen, i: HANG) as silent:
        log = MetricsLogger(run["id"], url=silent.address)
        log.log("x", 1)
        started = time.monotonic()
        assert log.flush(0.3) is False
        assert time.monotonic() - started < 5
        log.close(timeout=0.2)


def test_module_level_api(fresh_server: ServerHandle, run: dict[str, Any]) -> None:
    with pytest.raises(ClosedError, match="init"):
        mlbench_metrics.log("x", 1)
    log = mlbench_metrics.init(run["id"], url=fresh_server.address, rank=1)
    assert mlbench_metrics.current() is log
    mlbench_metrics.log("loss", 0.5, step=1)
    mlbench_metrics.log_many({"a": 1})
    mlbench_metrics.increment("samples", 4)
    with mlbench_metrics.timer("fwd"):
        pass

    @mlbench_metrics.timed("step")
    def step() -> None:
        pass

    step()
    assert mlbench_metrics.flush(30)
    second = mlbench_metrics.init(run["id"], url=fresh_server.address, rank=2)  # closes the first
    assert log.closed and mlbench_metrics.current() is second
    assert mlbench_metrics.finish() == 0
    assert mlbench_metrics.finish() == 0
    assert set(series(fresh_server, run["id"])) == {"loss @ 1", "a @ 1", "samples @ 1", "fwd @ 1", "step @ 1"}


def test_system_metrics(fresh_server: ServerHandle, run: dict[str, Any]) -> None:
    log = MetricsLogger(run["id"], url=fresh_server.address, rank=0, flush_interval=0.05)
    sampler = SystemMetrics(log, interval=0.05, nvml=False)
    deadline = time.monotonic() + 30
    while sampler.samples < 3 and time.monotonic() < deadline:
        log.flush(1)
    assert sampler.samples >= 3
    log.close()
    assert not sampler.running  # stopped with its logger
    body = series(fresh_server, run["id"])
    for name in ("cpu_percent @ 0", "memory_used @ 0", "process_rss @ 0"):
        assert name in body and not body[name][0]["cumulative"]
    for name in ("net_bytes_sent @ 0", "net_bytes_recv @ 0"):
        assert name in body and body[name][0]["cumulative"]
    assert int(body["process_rss @ 0"][0]["value"]) > 1_000_000
    with pytest.raises(ConfigError):
        SystemMetrics(log, interval=0)


def test_system_metrics_reads_gpus_through_nvml(fresh_server: ServerHandle, run: dict[str, Any]) -> None:
    class FakeNvml:  # no NVIDIA driver can run here: an object with NVML's shape stands in
        def nvmlDeviceGetCount(self) -> int:
            return 2

        def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
            return i

        def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
            return type("Rates", (), {"gpu": 40 + handle})()

        def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
            return type("Mem", (), {"used": 1000 * (handle + 1)})()

    log = MetricsLogger(run["id"], url=fresh_server.address, flush_interval=0.05)
    sampler = SystemMetrics(log, interval=60, nvml=FakeNvml())
    sampler.stop()
    assert log.flush(30)
    log.close()
    body = series(fresh_server, run["id"])
    assert body["gpu1_util"][0]["value"] == "41.0"
    assert body["gpu0_memory_used"][0]["value"] == "1000"


@pytest.mark.parametrize("by", ["url", "client"])
def test_the_environment_run_does_not_replace_new_run_on_another_server(
    server: ServerHandle, fresh_server: ServerHandle, monkeypatch: pytest.MonkeyPatch, by: str
) -> None:
    # Was: MLBENCH_METRICS_RUN_ID (set by serve --exec for its own server) won over
    # new_run even when the logger was told to use another server, which has no such run:
    # its records were refused (404) or spooled for a run that does not exist there.
    exec_run = create_run(server.url)
    monkeypatch.setenv("MLBENCH_METRICS_URL", server.address)
    monkeypatch.setenv("MLBENCH_METRICS_RUN_ID", str(exec_run["id"]))
    with mlbench_metrics.ApiClient(url=fresh_server.address) as client:
        target: dict[str, Any] = {"url": fresh_server.address} if by == "url" else {"client": client}
        with MetricsLogger(new_run="elsewhere", **target) as log:
            log.log("x", 1)
        assert log.stats.stored == 1
    (run,) = fresh_server.store.list_runs()
    assert run["name"] == "elsewhere" and fresh_server.store.count_metrics(run["id"]) == 1


def test_new_run_works_when_python_cannot_name_its_interpreter(
    fresh_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Was: with sys.executable None (embedded interpreters), new_run raised a TypeError
    # while naming the run's command.
    monkeypatch.setattr(sys, "executable", None)
    with MetricsLogger(new_run="embedded", url=fresh_server.address) as log:
        log.log("x", 1)
    (run,) = fresh_server.store.list_runs()
    assert run["name"] == "embedded" and fresh_server.store.count_metrics(run["id"]) == 1


def test_timers_and_totals_carry_the_newest_step_and_the_epoch(fresh_server: ServerHandle, run: dict[str, Any]) -> None:
    with MetricsLogger(run["id"], url=fresh_server.address, rank=0) as log:
        with log.timer("before_any_step"):
            pass
        for step in range(3):
            log.log("loss", 1.0 / (step + 1), step=step)
            with log.timer("fwd"):
                pass
            log.increment("samples", 32)
        log.epoch_end()
        log.log_many({"acc": 0.5}, step=10)
        with log.timer("fwd"):
            pass
        log.step = 20
        log.increment("samples", 32)
    points = mlbench_metrics.Run.get(run["id"], url=fresh_server.address).metrics(detail=True)
    assert [(p.step, p.epoch) for p in points["fwd @ 0"]] == [(0, 0), (1, 0), (2, 0), (10, 1)]
    assert [(p.step, p.epoch) for p in points["samples @ 0"]] == [(0, 0), (1, 0), (2, 0), (20, 1)]
    assert all(p.cumulative for p in points["samples @ 0"])
    assert [p.step for p in points["before_any_step @ 0"]] == [None]

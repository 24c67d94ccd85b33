"""The dashboard pacer through its public API, with an injected clock and sleep."""

from __future__ import annotations

import math

import pytest

from mlbench_metrics.server._http import Request, Response
from mlbench_metrics.server.pacing import Pacer


class FakeTime:
    """A clock that moves only when the handler works or the pacer sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def request(method: str, path: str) -> Request:
    return Request(method, path, "", {}, b"")


def pacer_with(work: float, rate: float) -> tuple[Pacer, FakeTime, list[str]]:
    """A pacer over a handler that takes ``work`` seconds of fake time per request."""
    time = FakeTime()
    handled: list[str] = []

    def handler(req: Request) -> Response:
        handled.append(f"{req.method} {req.path}")
        time.now += work
        return Response(201)

    return Pacer(handler, rate, clock=time.clock, sleep=time.sleep), time, handled


def test_single_posts_take_their_share_of_a_second() -> None:
    pacer, time, handled = pacer_with(work=0.002, rate=80)
    for _ in range(3):
        assert pacer(request("POST", "/api/metrics/")).status == 201
    assert time.sleeps == [0.0105] * 3  # 12.5 ms a post: 2 ms of work, the rest waited out
    assert handled == ["POST /api/metrics/"] * 3
    assert time.now == pytest.approx(100.0 + 3 / 80)


def test_a_post_slower_than_its_share_is_not_slowed_further() -> None:
    pacer, time, _ = pacer_with(work=0.05, rate=80)
    pacer(request("POST", "/api/metrics"))
    assert time.sleeps == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/metrics/batch/"),
        ("GET", "/api/metrics/"),
        ("GET", "/api/metrics/7/"),
        ("POST", "/api/runs/"),
        ("DELETE", "/api/runs/7/"),
    ],
)
def test_everything_else_runs_at_full_speed(method: str, path: str) -> None:
    pacer, time, handled = pacer_with(work=0.001, rate=1)
    pacer(request(method, path))
    assert time.sleeps == [] and handled == [f"{method} {path}"]


def test_close_ends_pacing() -> None:
    pacer, time, _ = pacer_with(work=0.0, rate=10)
    pacer(request("POST", "/api/metrics/"))
    pacer.close()
    pacer(request("POST", "/api/metrics/"))
    assert time.sleeps == [0.1]


@pytest.mark.parametrize("rate", [0, -5, math.inf, math.nan, True, "80"])
def test_a_rate_must_be_a_positive_number(rate: object) -> None:
    with pytest.raises(ValueError, match="pace must be a positive number"):
        Pacer(lambda req: Response(200), rate)  # type: ignore[arg-type]

"""Dates in every format the dashboard reads and writes, and metric batches."""

from __future__ import annotations

import datetime as dt

import pytest

from mlbench_metrics.records import (
    Metric,
    MetricBatch,
    format_dashboard_date,
    format_iso_date,
    format_str_datetime,
    format_zip_date,
    parse_date,
    to_us,
    us_to_datetime,
    value_to_str,
)

MOMENT = dt.datetime(2026, 11, 27, 1, 0, 27, 108829, tzinfo=dt.timezone.utc)
US = to_us(MOMENT)


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-27 01:00:27.108829",  # str(datetime.utcnow()), as upstream sends
        "2026-11-27T01:00:27.108829Z",  # the dashboard's own format
        "2026-11-27T01:00:27.108829+00:00",
        "2026-11-27T03:00:27.108829+02:00",
        "2026-11-26T23:30:27.108829-01:30",
        "2026-11-27T01:00:27.1088291234Z",  # extra digits ignored, as Django does
        "2026-11-27 01:00:27,108829",
    ],
)
def test_parse_date_formats(text: str) -> None:
    assert parse_date(text) == US


def test_parse_date_short_forms() -> None:
    assert parse_date("2021-01-02 03:04:05") == to_us(dt.datetime(2021, 1, 2, 3, 4, 5))
    assert parse_date("2021-01-02T03:04") == to_us(dt.datetime(2021, 1, 2, 3, 4))
    assert parse_date("2021-01-02") == to_us(dt.datetime(2021, 1, 2))
    assert parse_date("2021-01-02T03:04:05.5Z") == to_us(dt.datetime(2021, 1, 2, 3, 4, 5, 500000))
    assert parse_date("2021-1-2 3:4:5") == to_us(dt.datetime(2021, 1, 2, 3, 4, 5))


@pytest.mark.parametrize("text", ["", "soon", "2021-13-01", "2021-02-30 00:00:00", "2021-01-02X03:04", "01/02/2021"])
def test_parse_date_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_date(text)


def test_formats() -> None:
    assert format_dashboard_date(US) == "2026-11-27T01:00:27.108829Z"
    assert format_iso_date(US) == "2026-11-27T01:00:27.108829Z"
    assert format_zip_date(US) == "2026-11-27T01:00:27.108Z"
    assert format_str_datetime(US) == str(MOMENT.replace(tzinfo=None))
    whole = to_us(dt.datetime(2021, 1, 2, 3, 4, 5))
    assert format_dashboard_date(whole) == "2021-01-02T03:04:05.000000Z"
    assert format_iso_date(whole) == "2021-01-02T03:04:05Z"
    assert format_zip_date(whole) == "2021-01-02T03:04:05Z"
    assert format_str_datetime(whole) == "2021-01-02 03:04:05"
    tiny = whole + 123
    assert format_zip_date(tiny) == "2021-01-02T03:04:05.000Z"
    before_epoch = to_us(dt.datetime(1969, 12, 31, 23, 59, 59, 500000))
    assert format_iso_date(before_epoch) == "1969-12-31T23:59:59.500000Z"
    assert us_to_datetime(US) == MOMENT


def test_value_to_str_keeps_nan_and_inf() -> None:
    assert value_to_str(float("nan")) == "nan"
    assert value_to_str(float("inf")) == "inf"
    assert value_to_str(float("-inf")) == "-inf"
    assert value_to_str(0.5) == "0.5"
    assert value_to_str(3) == "3"


def test_batch_from_metrics() -> None:
    batch = MetricBatch.from_metrics(
        [
            Metric("loss", 0.5, date=MOMENT, metadata={"rank": 0}),
            {"name": "acc", "value": 1, "cumulative": True, "date": "2021-01-02 03:04:05"},
            {"name": "now", "value": "x"},
        ],
        now_us=42,
    )
    assert batch.names == ["loss", "acc", "now"]
    assert batch.values == ["0.5", "1", "x"]
    assert batch.dates_us == [US, to_us(dt.datetime(2021, 1, 2, 3, 4, 5)), 42]
    assert batch.metadata == ['{"rank": 0}', "", ""]
    assert batch.cumulative == [False, True, False]
    assert len(batch.subset([2, 0])) == 2
    assert batch.subset([2, 0]).names == ["now", "loss"]
    with pytest.raises(TypeError):
        MetricBatch.from_metrics([{"value": 1}], now_us=0)
    with pytest.raises(ValueError):
        MetricBatch.from_metrics([{"name": "", "value": 1}], now_us=0)
    with pytest.raises(TypeError):
        MetricBatch.from_metrics([42], now_us=0)  # type: ignore[list-item]

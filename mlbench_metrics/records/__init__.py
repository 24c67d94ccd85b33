"""Metric records: one definition of a metric, one validator and one wire codec.

Shared by the logger, :class:`~mlbench_metrics.ApiClient`, the spool, ``sync`` and the
embedded server, so every side agrees on what a metric is, what it may hold, how a batch
travels and how every date on the wire is written:

* ``dates.py``: the dashboard's date formats; dates as integer microseconds (UTC);
* ``checks.py``: the validator (names, values, flags, steps), raising or as text;
* ``batch.py``: :class:`Metric`, :class:`MetricBatch`, and the logger's records;
* ``codec.py``: batch bodies, written and read (rows, columns, packed), bounded.

The type aliases ``Value`` (``checks.py``) and ``Record`` (``batch.py``) are imported
from their modules. This package starts no threads and does no I/O.
"""

from __future__ import annotations

from .batch import (
    Context,
    Metric,
    MetricBatch,
    SteppedMetadata,
    as_batch,
    batch_problem,
    encode,
    encode_columns,
    metadata_to_str,
    value_to_str,
)
from .checks import (
    NAME_MAX,
    SERVER_VALUE_MAX,
    VALUE_MAX,
    check_flag,
    check_name,
    check_number,
    check_step,
    check_value,
    coerce_value,
    flag_problem,
    name_problem,
    parse_flag,
    text_problem,
    value_problem,
)
from .codec import BATCH_MAX, EXPANDED_MAX, BatchError, BatchTooLarge, columns, decode_batch, pack
from .dates import (
    DATE_US_MAX,
    DATE_US_MIN,
    format_dashboard_date,
    format_iso_date,
    format_str_datetime,
    format_zip_date,
    parse_date,
    to_us,
    us_to_datetime,
)

__all__ = [
    "BATCH_MAX",
    "DATE_US_MAX",
    "DATE_US_MIN",
    "EXPANDED_MAX",
    "NAME_MAX",
    "SERVER_VALUE_MAX",
    "VALUE_MAX",
    "BatchError",
    "BatchTooLarge",
    "Context",
    "Metric",
    "MetricBatch",
    "SteppedMetadata",
    "as_batch",
    "batch_problem",
    "check_flag",
    "check_name",
    "check_number",
    "check_step",
    "check_value",
    "coerce_value",
    "columns",
    "decode_batch",
    "encode",
    "encode_columns",
    "flag_problem",
    "format_dashboard_date",
    "format_iso_date",
    "format_str_datetime",
    "format_zip_date",
    "metadata_to_str",
    "name_problem",
    "pack",
    "parse_date",
    "parse_flag",
    "text_problem",
    "to_us",
    "us_to_datetime",
    "value_problem",
    "value_to_str",
]

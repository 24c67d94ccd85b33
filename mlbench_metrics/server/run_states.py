"""Run states a person can trust: marks, writers and their heartbeats, and ``crashed``.

Routes (extensions; the API root lists ``run_state`` and ``writers``):

* ``PATCH /api/runs/{id}/`` with ``{"state": "started"|"finished"|"failed"}`` marks a run
  (the dashboard answers 405);
* ``PUT /api/runs/{id}/writers/{writer}/`` with ``{"rank": int|null, "state":
  "open"|"closed"|"failed"}``: a logger says it writes the run (``open``, also its idle
  heartbeat) or that it ended. The answer is ``{"run", "writer", "conflict",
  "heartbeat_s", "timeout_s"}``; ``conflict`` is a sentence when an older live writer of
  the run has the same rank (their points would merge into one series), said to the
  newer writer only, so that one warning is given, by the process that can fix it;
* ``GET /api/runs/{id}/writers/``: the run's writers, each with ``alive``;
* a batch (``POST /api/metrics/batch/``) may carry ``"writer": {"id", "rank"}``: it counts
  as that writer's ``open`` report, so a busy logger needs no heartbeat.

A run reads as ``crashed`` while its stored state is ``started`` and one of its open
writers has not been heard for ``timeout`` seconds (except a run with a job, ``serve
--exec``'s: its state is the job's, which sees each process's exit code): derived from the database when a run
is read (never stored, never one process's memory), so several server processes agree and
a late report turns the run back to ``started``. Run answers gain ``started_at`` (the first
writer's first report) and ``last_seen_at`` (the newest report). No threads.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Final, Mapping

from ..records import format_iso_date
from ._http import Request, Response
from .formats import run_json
from .parsing import INT_MAX, INT_MIN, ApiFailure, json_response, now_us, parse_body, path_id
from .store import Store
from .writer_tables import WRITER_KEYS, WRITER_STATES, WriterRow

__all__ = ["DEFAULT_TIMEOUT", "EXTENSIONS", "RunStates", "conflict"]

DEFAULT_TIMEOUT: Final = 60.0
"""Seconds an open writer may stay silent before its run reads as ``crashed``."""

EXTENSIONS: Final = ("run_state", "writers")
"""What the API root lists in ``server.extensions`` for these routes."""

MARKS: Final = ("started", "finished", "failed")
"""The states ``PATCH /api/runs/{id}/`` sets."""

_WRITER_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")

Handler = Callable[..., Response]


def conflict(rows: list[WriterRow], writer: str, stale_before_us: int) -> str | None:
    """The warning for ``writer`` when an older writer that is still alive has its rank, else None."""
    mine = next((r for r in rows if r[0] == writer), None)
    if mine is None or mine[4] is not None:
        return None
    older = [
        r[0]
        for r in rows
        if r[1] == mine[1] and r[4] is None and r[3] >= stale_before_us and (r[2], r[0]) < (mine[2], mine[0])
    ]
    if not older:
        return None
    rank = "without a rank" if mine[1] is None else f"with the same rank {mine[1]}"
    return (
        f"another process (writer {older[0]}) writes this run {rank}: the points of both merge into one "
        "series; give each process its own rank (MetricsLogger(rank=...) or the RANK environment variable)"
    )


class RunStates:
    """The handlers for run states over a :class:`~.store.Store`.

    Args:
        store: where runs and writers live.
        timeout: seconds an open writer may stay silent before its run reads as ``crashed``.
    """

    def __init__(self, store: Store, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not timeout > 0:
            raise ValueError(f"the writer timeout must be a positive number of seconds, got {timeout!r}")
        self.store = store
        self.timeout = float(timeout)
        self.heartbeat = max(0.1, self.timeout / 4)

    def routes(self) -> list[tuple[re.Pattern[str], dict[str, Handler]]]:
        """``(path pattern, {method: handler})`` pairs for the writers' routes."""
        run = r"/api/runs/(?P<pk>[^/]+)/writers"
        return [
            (re.compile(run + r"/?"), {"GET": self.list_writers}),
            (re.compile(run + r"/(?P<writer>[^/]+)/?"), {"PUT": self.put_writer}),
        ]

    def stale_before(self) -> int:
        """Writers last heard before this date (microseconds) are taken for dead."""
        return now_us() - int(self.timeout * 1e6)

    def view(
        self, run: Mapping[str, Any], *, with_metadata: bool, stale_before_us: int | None = None
    ) -> dict[str, Any]:
        """A run's JSON: the dashboard's shape, ``crashed`` derived, ``started_at`` and ``last_seen_at`` added."""
        out = run_json(run, with_metadata=with_metadata)
        stale = self.stale_before() if stale_before_us is None else stale_before_us
        seen = run.get("open_seen_at")
        if out["state"] == "started" and seen is not None and seen < stale and not run["job_id"]:
            out["state"] = "crashed"
        for key in ("started_at", "last_seen_at"):
            out[key] = None if run.get(key) is None else format_iso_date(run[key])
        return out

    def _run(self, pk: str) -> dict[str, Any]:
        run_id = path_id(pk)
        run = None if run_id is None else self.store.get_run(run_id)
        if run is None:
            raise ApiFailure(404, f"run {pk[:40]!r} not found")
        return run

    def update_run(self, request: Request, pk: str) -> Response:
        """``PATCH /api/runs/{id}/``: mark a run started, finished or failed."""
        run = self._run(pk)
        state = parse_body(request).get("state")
        if state not in MARKS:
            raise ApiFailure(400, f"field 'state' must be one of {', '.join(MARKS)}")
        if state == "started":
            updated = self.store.update_run(run["id"], state=state, clear_finished=True)
        else:
            finished = run["finished_at"] if run["state"] == state and run["finished_at"] else now_us()
            updated = self.store.update_run(run["id"], state=state, finished_at=finished)
        if updated is None:
            raise ApiFailure(404, f"run {run['id']} not found")
        return json_response(200, self.view(updated, with_metadata=True))

    def put_writer(self, request: Request, pk: str, writer: str) -> Response:
        """``PUT /api/runs/{id}/writers/{writer}/``: a writer is alive, or ended."""
        run = self._run(pk)
        body = parse_body(request)
        state = body.get("state", "open")
        if state not in WRITER_STATES:
            raise ApiFailure(400, f"field 'state' must be one of {', '.join(WRITER_STATES)}")
        rank = self._rank(body.get("rank"))
        writer = self._writer_id(writer)
        rows = self.store.report_writer(run["id"], writer, rank, state, now_us())
        updated = self.store.get_run(run["id"]) if rows is not None else None
        if rows is None or updated is None:
            raise ApiFailure(404, f"run {run['id']} not found")
        stale = self.stale_before()
        mine = next(r for r in rows if r[0] == writer)
        return json_response(
            200,
            {
                "run": self.view(updated, with_metadata=False, stale_before_us=stale),
                "writer": self._writer_json(mine, stale),
                "conflict": conflict(rows, writer, stale),
                "heartbeat_s": self.heartbeat,
                "timeout_s": self.timeout,
            },
        )

    def list_writers(self, request: Request, pk: str) -> Response:
        """``GET /api/runs/{id}/writers/``: who writes the run, and whether each is alive."""
        run = self._run(pk)
        rows = self.store.run_writers(run["id"])
        stale = self.stale_before()
        writers = [self._writer_json(r, stale) for r in rows]
        return json_response(200, {"run_id": run["id"], "timeout_s": self.timeout, "writers": writers})

    def seen_in_batch(self, run_id: int, field: Any) -> None:
        """A batch's ``writer`` field (already checked by :meth:`writer_of_batch`): the writer is alive."""
        if field is not None:
            self.store.report_writer(run_id, field[0], field[1], "open", now_us())

    def writer_of_batch(self, body: Mapping[str, Any]) -> tuple[str, int | None] | None:
        """A batch body's ``writer`` as ``(id, rank)``, None when absent.

        Raises:
            ApiFailure: a 400 for one that is malformed (checked before anything is stored).
        """
        field = body.get("writer")
        if field is None:
            return None
        if not isinstance(field, dict) or not isinstance(field.get("id"), str):
            raise ApiFailure(400, "field 'writer' must be an object with an 'id' (text) and a 'rank' (integer or null)")
        return self._writer_id(field["id"]), self._rank(field.get("rank"))

    @staticmethod
    def _writer_id(text: str) -> str:
        if not _WRITER_ID.fullmatch(text):
            raise ApiFailure(400, "a writer id is 1 to 64 letters, digits, '.', '_', ':' or '-'")
        return text

    @staticmethod
    def _rank(value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not INT_MIN <= value <= INT_MAX:
            raise ApiFailure(400, "field 'rank' must be an integer or null")
        return value

    @staticmethod
    def _writer_json(row: WriterRow, stale_before_us: int) -> dict[str, Any]:
        out: dict[str, Any] = dict(zip(WRITER_KEYS, row))
        for key in ("first_seen_at", "last_seen_at", "closed_at"):
            out[key] = None if out[key] is None else format_iso_date(out[key])
        out["alive"] = row[4] is None and row[3] >= stale_before_us
        return out

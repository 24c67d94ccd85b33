"""The embedded server's extensions to the dashboard's API, as :class:`ApiClient` methods.

Run states and writers, the self-description at the API root, a run's configuration, and the
read-back of points with step, epoch, rank and metadata (README, "Extensions"). The
dashboard has none of these: it answers 404 or 405. :class:`ExtensionCalls` is a base of
:class:`~mlbench_metrics.ApiClient`, kept apart so that the client's module holds the
upstream API. No threads, no I/O of its own: every call goes through ``_request``.
"""

from __future__ import annotations

import datetime as _dt
import json
from concurrent.futures import Future
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import requests

from .dropin import non_negative_int, since_text
from .posting import ServerInfo
from .transport import JSON, Transport, status_error

__all__ = ["ExtensionCalls"]


class ExtensionCalls:
    """The extension calls; the class that inherits them provides ``_request`` and ``_info``."""

    _info: ServerInfo
    _transport: Transport

    def _request(self, method: str, path: str, **kwargs: Any) -> Future[requests.Response]:
        raise NotImplementedError

    def set_run_state(self, run_id: Any, state: str) -> Future[requests.Response]:
        """Mark a run ``"started"``, ``"finished"`` or ``"failed"`` (sets ``finished_at``).

        Needs the embedded server (``PATCH /api/runs/{id}/``); the dashboard answers 405.

        Returns:
            A Future of the ``requests.Response``.
        """
        if state not in ("started", "finished", "failed"):
            raise ValueError(f"state must be 'started', 'finished' or 'failed', got {state!r}")
        body = json.dumps({"state": state}).encode()
        return self._request("PATCH", f"runs/{quote(str(run_id), safe='')}/", body=body, headers=JSON, idempotent=True)

    def report_writer(
        self, run_id: Any, writer: str, *, rank: int | None, state: str = "open"
    ) -> Future[dict[str, Any] | None]:
        """Tell the server that ``writer`` (one logger) writes the run: ``"open"`` (alive),
        ``"closed"`` or ``"failed"`` (the ``writers`` extension, see the server's
        ``run_states``). Nothing is sent to a server without it (the dashboard).

        Returns:
            A Future of the server's answer (``{"run", "writer", "conflict", "heartbeat_s",
            "timeout_s"}``), or of None when the server has no writers. It raises
            ``ApiError`` when the server could not be asked or refused.
        """
        if state not in ("open", "closed", "failed"):
            raise ValueError(f"state must be 'open', 'closed' or 'failed', got {state!r}")
        path = f"runs/{quote(str(run_id), safe='')}/writers/{quote(writer, safe='')}/"
        body = json.dumps({"rank": rank, "state": state}).encode()
        return self._transport.submit(self._report_writer, path, body)

    def _report_writer(self, path: str, body: bytes) -> dict[str, Any] | None:
        if "writers" not in self.server_extensions():
            return None
        response = self._transport.call("PUT", path, body=body, headers=JSON, idempotent=True)
        if response.status_code >= 400:
            raise status_error(response)
        answer = response.json()
        return answer if isinstance(answer, dict) else None

    def get_server_info(self) -> Future[requests.Response]:
        """``GET /api/``: the API root; the embedded server describes itself under ``"server"``.

        Returns:
            A Future of the ``requests.Response``; the dashboard lists its routes, the
            embedded server adds ``{"server": {"name", "version", "extensions", "exec", ...}}``.
        """
        return self._request("GET", "")

    def set_run_config(self, run_id: Any, config: Mapping[str, Any]) -> Future[requests.Response]:
        """Store a run's configuration (hyperparameters), replacing what was stored.

        Needs the embedded server's ``run_config`` extension (``PUT /api/runs/{id}/config/``);
        the dashboard has no place for it and answers 404.

        Returns:
            A Future of the ``requests.Response``.
        """
        body = json.dumps({"config": dict(config)}, allow_nan=False).encode()
        return self._request(
            "PUT", f"runs/{quote(str(run_id), safe='')}/config/", body=body, headers=JSON, idempotent=True
        )

    def get_run_config(self, run_id: Any) -> Future[requests.Response]:
        """Get a run's configuration: ``.result().json()["config"]`` (the ``run_config`` extension).

        Returns:
            A Future of the ``requests.Response``.
        """
        return self._request("GET", f"runs/{quote(str(run_id), safe='')}/config/")

    def get_run_series(self, run_id: Any) -> Future[requests.Response]:
        """List a run's series without their points (the ``points`` extension).

        Returns:
            A Future of the ``requests.Response``; ``.result().json()["series"]`` holds
            ``{"name", "metric", "rank", "count", "first_us", "last_us", "cumulative", "has_step"}``.
        """
        return self._request("GET", f"runs/{quote(str(run_id), safe='')}/series/")

    def get_run_points(
        self,
        run_id: Any,
        *,
        names: Sequence[str] | None = None,
        metrics: Sequence[str] | None = None,
        since: _dt.datetime | str | None = None,
        until: _dt.datetime | str | None = None,
        after: int | None = None,
        through: int | None = None,
        max_points: int | None = None,
        fields: Sequence[str] | None = None,
        format: str | None = None,
    ) -> Future[requests.Response]:
        """Get a run's points with step, epoch, rank and metadata (the ``points`` extension).

        Args:
            run_id: the run's id.
            names: only the series with exactly these names.
            metrics: only these metrics, each with all its ranks (``"loss"`` selects
                ``"loss @ 0"`` and ``"loss @ 1"``).
            since: only points at or after this date.
            until: only points at or before this date.
            after: only points that arrived after this ``cursor`` of an earlier answer.
            through: only points that had arrived by this ``cursor`` (a first read that
                later reads ``after`` it never overlap).
            max_points: downsample each series to at most this many points (the minimum
                and maximum of each time bucket are kept).
            fields: the per-point columns, of ``date_us, step, epoch, rank, value,
                cumulative, metadata`` (default all).
            format: ``"columns"`` (default: JSON columns per series), ``"csv"`` or
                ``"json"`` (one row per point, for files).

        Returns:
            A Future of the ``requests.Response``; see the server's ``readback`` module
            for the answer's shape.

        Raises:
            ValueError: a date is not one the server can parse, or a number is negative.
        """
        params: list[tuple[str, str]] = [("name", n) for n in names or ()]
        params += [("metric", m) for m in metrics or ()]
        if since is not None:
            params.append(("since", since_text(since)))
        if until is not None:
            params.append(("until", since_text(until)))
        if after is not None:
            params.append(("after", str(non_negative_int(after, "after"))))
        if through is not None:
            params.append(("through", str(non_negative_int(through, "through"))))
        if max_points is not None:
            params.append(("max_points", str(non_negative_int(max_points, "max_points"))))
        if fields is not None:
            params.append(("fields", ",".join(fields)))
        if format is not None:
            params.append(("format", format))
        return self._request("GET", f"runs/{quote(str(run_id), safe='')}/points/", params=params)

    def server_extensions(self) -> frozenset[str]:
        """The extensions the server lists at its API root (none for the dashboard); asks once.

        Raises:
            ApiError: the server could not be asked (the next call asks again).
        """
        return self._info.extensions()

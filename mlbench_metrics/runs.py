"""Benchmark runs from Python: create, find, follow, read and delete them.

::

    from mlbench_metrics import Run

    run = Run.create("my-run", num_workers=2, custom_image_name="me/img",
                     custom_image_command="python train.py --rank {rank}", backend="gloo",
                     url="127.0.0.1:8080")
    run.wait(timeout=3600)                 # until finished or failed
    loss = run.metrics(metric_filter="loss @ 0")["loss @ 0"]   # [(datetime, value), ...]
    run.download("run.zip")

Every call is one request through an :class:`~mlbench_metrics.ApiClient` (with its
retries); give ``client=`` to use yours, else each call opens and closes its own from
``url``/``token`` (or the environment, or Kubernetes discovery, as ApiClient does).
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as _dt
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Final, Literal, overload

import requests

from .client.api import ApiClient
from .client.run_spec import RunSpec
from .client.transport import status_error
from .errors import ClientApiError, ConfigError, MetricsError
from .points import MetricPoint, split_name, to_number
from .records import parse_date, us_to_datetime

__all__ = ["DONE_STATES", "Run"]

DONE_STATES = ("finished", "failed")
"""The states a run does not leave."""

Point = tuple[_dt.datetime, Any]


_NOT_STARTED_AFTER: Final = 3.0  # seconds "initialized" before wait() asks whether anything runs runs


def server_runs_runs(client: ApiClient) -> bool:
    """False only for an embedded server that says it does not execute runs (no ``--exec``)."""
    try:
        info = client.get_server_info().result().json()
    except (MetricsError, ValueError):
        return True  # cannot tell: keep waiting
    server = info.get("server") if isinstance(info, dict) else None
    if not isinstance(server, dict) or server.get("name") != "mlbench-metrics":
        return True  # the dashboard starts its runs in Kubernetes
    return bool(server.get("exec", True))


class Run:
    """One benchmark run on the dashboard (or the embedded server).

    Attributes are the server's answer when the handle was made or last refreshed; call
    :meth:`refresh` for a newer one. Get handles from :meth:`create`, :meth:`get` or
    :meth:`list`.
    """

    def __init__(
        self, data: dict[str, Any], *, client: ApiClient | None = None, url: str | None = None, token: str | None = None
    ) -> None:
        self._data = dict(data)
        self._client = client
        self._url = url
        self._token = token

    # -- finding runs ----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        num_workers: int = RunSpec.num_workers,
        num_cpus: float = RunSpec.num_cpus,
        max_bandwidth: int = RunSpec.max_bandwidth,
        image: str | None = None,
        backend: str | None = None,
        custom_image_name: str | None = None,
        custom_image_command: str | None = None,
        custom_backend: str | None = None,
        run_all_nodes: bool = False,
        gpu_enabled: bool = False,
        light_target: bool = False,
        *,
        client: ApiClient | None = None,
        url: str | None = None,
        token: str | None = None,
    ) -> Run:
        """Create a run; the arguments are :class:`~mlbench_metrics.client.RunSpec`'s.

        Raises:
            ValueError: an argument the dashboard would refuse (checked before sending;
                with a ``client`` of your own, only if it is ``strict``).
            ApiError: the server refused it or could not be reached.
        """
        handle = cls({}, client=client, url=url, token=token)
        with handle._api() as api:
            spec = RunSpec(
                name,
                num_workers,
                num_cpus,
                max_bandwidth,
                image,
                backend,
                custom_image_name,
                custom_image_command,
                custom_backend,
                run_all_nodes,
                gpu_enabled,
                light_target,
            )
            answer = api.create_run_from(spec).result()
        handle._data = _json(answer)
        return handle

    @classmethod
    def get(
        cls, run_id: int, *, client: ApiClient | None = None, url: str | None = None, token: str | None = None
    ) -> Run:
        """The run with this id.

        Raises:
            ClientApiError: there is none (404).
        """
        handle = cls({"id": run_id}, client=client, url=url, token=token)
        return handle.refresh()

    @classmethod
    def list(cls, *, client: ApiClient | None = None, url: str | None = None, token: str | None = None) -> list[Run]:
        """Every run, oldest first (without their ``job_metadata``, as the server lists them)."""
        handle = cls({}, client=client, url=url, token=token)
        with handle._api() as api:
            runs = _json(api.get_runs().result())
        return [cls(r, client=client, url=url, token=token) for r in runs]

    # -- what the server says --------------------------------------------------------------

    @property
    def id(self) -> int:
        """The run's id."""
        return int(self._data["id"])

    @property
    def name(self) -> str:
        """The run's name."""
        return str(self._data.get("name", ""))

    @property
    def state(self) -> str:
        """``initialized``, ``started``, ``finished`` or ``failed``; on the embedded server also
        ``crashed``: a logger writing the run went silent without closing (it may come back)."""
        return str(self._data.get("state", ""))

    @property
    def done(self) -> bool:
        """Whether the run is finished or failed."""
        return self.state in DONE_STATES

    @property
    def num_workers(self) -> int:
        """How many workers the run has."""
        return int(self._data.get("num_workers", 0))

    @property
    def created_at(self) -> _dt.datetime | None:
        """When the run was created (UTC)."""
        return _date(self._data.get("created_at"))

    @property
    def finished_at(self) -> _dt.datetime | None:
        """When the run finished or failed (UTC), else None."""
        return _date(self._data.get("finished_at"))

    @property
    def started_at(self) -> _dt.datetime | None:
        """When the first logger writing the run was heard (UTC; the embedded server's run states), else None."""
        return _date(self._data.get("started_at"))

    @property
    def last_seen_at(self) -> _dt.datetime | None:
        """When a logger writing the run was last heard (UTC; the embedded server's run states), else None."""
        return _date(self._data.get("last_seen_at"))

    @property
    def job_metadata(self) -> dict[str, Any]:
        """The job's details (``stdout``/``stderr`` tails and more); empty in :meth:`list`."""
        return dict(self._data.get("job_metadata") or {})

    def as_dict(self) -> dict[str, Any]:
        """The server's JSON for this run, as last fetched."""
        return dict(self._data)

    # -- acting on it ----------------------------------------------------------------------

    def refresh(self) -> Run:
        """Fetch the run again; returns self."""
        with self._api() as api:
            self._data = _json(api.get_run(self.id).result())
        return self

    def wait(
        self,
        timeout: float | None = None,
        poll: float = 1.0,
        progress: Callable[[Run], None] | None = None,
    ) -> Run:
        """Poll until the run is finished, failed or crashed; returns self.

        Args:
            timeout: seconds to wait at most (None: as long as it takes).
            poll: seconds between polls.
            progress: called with the run after each poll.

        Raises:
            TimeoutError: ``timeout`` passed first.
            ConfigError: the run is still ``initialized`` after a few seconds and the
                server says it runs no runs (the embedded server without ``--exec``).
        """
        if poll <= 0:
            raise ValueError(f"poll must be positive, got {poll!r}")
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        asked = False
        with self._api() as api:
            while True:
                self._data = _json(api.get_run(self.id).result())
                if progress is not None:
                    progress(self)
                if self.done or self.state == "crashed":
                    return self
                if self.state == "initialized" and not asked and time.monotonic() - started >= _NOT_STARTED_AFTER:
                    asked = True
                    if not server_runs_runs(api):
                        raise ConfigError(
                            f"run {self.id} will stay initialized: the server at {api.endpoint} does not run runs "
                            "(start it with `mlbench-metrics serve --exec` to run their commands on its machine)"
                        )
                left = math.inf if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"run {self.id} is still {self.state} after {timeout} s")
                time.sleep(min(poll, left))

    @overload
    def metrics(
        self,
        since: _dt.datetime | str | None = None,
        summarize: int | None = None,
        metric_filter: str | None = None,
        last_n: int | None = None,
        *,
        detail: Literal[False] = False,
    ) -> dict[str, builtins.list[Point]]: ...

    @overload
    def metrics(
        self,
        since: _dt.datetime | str | None = None,
        summarize: int | None = None,
        metric_filter: str | None = None,
        last_n: int | None = None,
        *,
        detail: Literal[True],
    ) -> dict[str, builtins.list[MetricPoint]]: ...

    def metrics(
        self,
        since: _dt.datetime | str | None = None,
        summarize: int | None = None,
        metric_filter: str | None = None,
        last_n: int | None = None,
        *,
        detail: bool = False,
    ) -> dict[str, builtins.list[Point]] | dict[str, builtins.list[MetricPoint]]:
        """The run's metrics: name -> [(date, value), ...], oldest first.

        Values come back as numbers where they are numbers (the server keeps text), dates
        as aware UTC datetimes. The arguments filter as :meth:`ApiClient.get_run_metrics`.

        With ``detail=True`` each point is a :class:`~mlbench_metrics.points.MetricPoint`
        with its step, epoch, rank, cumulative flag and metadata, read through the
        embedded server's ``points`` extension. The dashboard cannot give them: there
        step, epoch and metadata are None/empty and the rank comes from the name.

        Raises:
            ValueError: ``summarize`` with ``detail=True`` (averaged points have no step).
        """
        if detail:
            if summarize:
                raise ValueError("summarize averages points, so they have no step or epoch: not with detail=True")
            return self._detailed(since, metric_filter, last_n)
        with self._api() as api:
            raw = _json(api.get_run_metrics(self.id, since, summarize, metric_filter, last_n).result())
        return {
            name: [(_date_or_raise(p["date"]), to_number(p["value"])) for p in points] for name, points in raw.items()
        }

    def _detailed(
        self, since: _dt.datetime | str | None, metric_filter: str | None, last_n: int | None
    ) -> dict[str, builtins.list[MetricPoint]]:
        out: dict[str, builtins.list[MetricPoint]] = {}
        with self._api() as api:
            if "points" not in api.server_extensions():
                raw = _json(api.get_run_metrics(self.id, since, None, metric_filter, last_n).result())
                for name, points in raw.items():
                    rank = split_name(name)[1]
                    out[name] = [
                        MetricPoint(
                            _date_or_raise(p["date"]), to_number(p["value"]), None, None, rank, p["cumulative"], ""
                        )
                        for p in points
                    ]
                return out
            names = None if metric_filter is None else [metric_filter]
            answer = _json(api.get_run_points(self.id, names=names, since=since).result())
        for s in answer["series"]:
            c = s["points"]
            rows = zip(c["date_us"], c["value"], c["step"], c["epoch"], c["rank"], c["cumulative"], c["metadata"])
            points = [MetricPoint(us_to_datetime(d), to_number(v), *rest) for d, v, *rest in rows]
            out[s["name"]] = points[-last_n:] if last_n else points
        return out

    def config(self) -> dict[str, Any]:
        """The run's configuration (``MetricsLogger(config=...)``); empty when none was stored.

        Raises:
            ClientApiError: the server keeps no configurations (the dashboard answers 404).
        """
        with self._api() as api:
            config = _json(api.get_run_config(self.id).result()).get("config")
        return dict(config) if isinstance(config, dict) else {}

    def download(
        self,
        path: str | os.PathLike[str],
        since: _dt.datetime | str | None = None,
        summarize: int | None = None,
    ) -> Path:
        """Save the run's metrics as the dashboard's zip file (one JSON file per metric).

        Returns:
            The path written.
        """
        with self._api() as api:
            answer = api.download_run_metrics(self.id, since, summarize).result()
        if answer.status_code >= 400:
            raise status_error(answer)
        target = Path(path)
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(answer.content)
        tmp.replace(target)
        return target

    def delete(self) -> None:
        """Delete the run and its metrics (the server stops it if it runs).

        Raises:
            ClientApiError: the server did not delete it: a 4xx, or the dashboard's
                ``304 "Could not delete run"``.
        """
        with self._api() as api:
            answer = api.delete_run(self.id).result()
        if answer.status_code == 304:
            error = status_error(answer)
            raise ClientApiError(
                f"the server could not delete run {self.id} ({error})",
                status_code=304,
                body=error.body,
                method=error.method,
                url=error.url,
            )
        if not 200 <= answer.status_code < 300:
            raise status_error(answer)

    def mark(self, state: str) -> Run:
        """Set the run's state (``started``, ``finished`` or ``failed``); returns self.

        Raises:
            ClientApiError: the server cannot (the dashboard answers 405: its runs end
                when their Kubernetes job does).
        """
        with self._api() as api:
            self._data = _json(api.set_run_state(self.id, state).result())
        return self

    def mark_finished(self) -> Run:
        """:meth:`mark` ``"finished"``."""
        return self.mark("finished")

    def mark_failed(self) -> Run:
        """:meth:`mark` ``"failed"``."""
        return self.mark("failed")

    @contextlib.contextmanager
    def _api(self) -> Iterator[ApiClient]:
        if self._client is not None:
            yield self._client
            return
        client = ApiClient(url=self._url, token=self._token, strict=True)
        try:
            yield client
        finally:
            client.close()

    def __repr__(self) -> str:
        return f"Run(id={self._data.get('id')}, name={self.name!r}, state={self.state!r})"


def _json(answer: requests.Response) -> Any:
    if answer.status_code >= 400:
        raise status_error(answer)
    try:
        return answer.json()
    except ValueError:
        raise ClientApiError(
            f"{answer.request.method} {answer.request.url} answered {answer.status_code} with no JSON",
            status_code=answer.status_code,
            body=answer.text[:200],
        ) from None


def _date(text: Any) -> _dt.datetime | None:
    if not text:
        return None
    try:
        return _date_or_raise(text)
    except ValueError:
        return None


def _date_or_raise(text: str) -> _dt.datetime:
    return us_to_datetime(parse_date(text))

"""Many metrics in one call: the batch endpoint where the server has one, else single posts.

:class:`MetricsPoster` is what :meth:`ApiClient.post_metrics <mlbench_metrics.ApiClient.post_metrics>`
runs. It asks the server once, at its API root, what it offers (:class:`ServerInfo`):
the embedded server describes its batch endpoint there; the dashboard lists its routes
or has no root. With the endpoint, a batch is one request (in parts past the server's
limit) carrying its id, so a re-send is stored once. Without it (or on a 404/405 from
the endpoint, which means "no such route", never "rejected"), each metric becomes a
single post in parallel over the pool, and a :class:`~.delivery.Gather` keeps each
one's result, so only what was not stored is ever sent again.

No threads of its own: calls run on the :class:`~.transport.Transport`'s pool.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import threading
import uuid
from concurrent.futures import Future
from typing import Any, Callable, Final, Mapping

import requests

from ..errors import ApiError, ClosedError, TransientApiError
from ..records import MetricBatch, columns, format_str_datetime, pack, value_to_str
from .answers import OddServerNotice, api_object, looks_odd
from .result import BatchFuture, BatchResult, Gather
from .transport import FORM, JSON, Transport, form, post_error, status_error

__all__ = ["MetricsPoster", "ServerInfo"]

_log = logging.getLogger("mlbench_metrics.client.api")

_BATCH_CHUNK: Final = 10_000
_KEPT: Final = "metrics sent to it are kept: sent again, and spooled for sync at close, as while a server is down"
_NO_SUCH_ROUTE: Final = (404, 405)


class ServerInfo:
    """What the server says of itself at its API root, asked once and remembered.

    Only a definitive answer is remembered; an error (a flaky proxy, a restart) is
    raised, and the next question asks again.
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._lock = threading.Lock()
        self._server: dict[str, Any] | None = None
        self.odd = OddServerNotice(transport.endpoint)
        """Says once that the server does not look like an MLBench server."""

    def server(self) -> dict[str, Any]:
        """The root's ``"server"`` object (empty for the dashboard, which has none).

        Raises:
            ApiError: the root could not be read.
        """
        with self._lock:
            if self._server is None:
                response = self._transport.call("GET", "", idempotent=True)
                info: Any = None
                if response.status_code not in _NO_SUCH_ROUTE:
                    if response.status_code != 200:
                        raise status_error(response, transient=True)
                    info = api_object(response)
                    if info is None:  # a page (a directory listing), not the API's root
                        self.odd.say(response, _KEPT)
                server = info.get("server") if isinstance(info, dict) else None
                self._server = server if isinstance(server, dict) else {}
            return self._server

    def extensions(self) -> frozenset[str]:
        """The extensions the server lists (none for the dashboard)."""
        names = self.server().get("extensions")
        return frozenset(n for n in names if isinstance(n, str)) if isinstance(names, list) else frozenset()


class MetricsPoster:
    """Posts batches of metrics through ``transport``, by the fastest way the server takes.

    Args:
        transport: the client's transport.
        info: the client's :class:`ServerInfo`.
    """

    def __init__(self, transport: Transport, info: ServerInfo) -> None:
        self._transport = transport
        self._info = info
        self.batch_supported: bool | None = None
        self._batch_limit = _BATCH_CHUNK
        self._packed = False

    def post(
        self,
        run_id: int,
        batch: MetricBatch,
        key: str | None,
        writer: Mapping[str, Any] | None = None,
        retry: bool = True,
    ) -> BatchFuture:
        """Send ``batch`` (already checked) under ``key``; see ``ApiClient.post_metrics``.

        Raises:
            ClosedError: the client is closed.
        """
        if self._transport.closed:
            raise ClosedError("this ApiClient is closed")
        key = key or batch.batch_id or uuid.uuid4().hex
        outer = BatchFuture(len(batch), key)
        if not len(batch):
            outer.set_result(BatchResult(0, 0, batch_id=key))
        elif self.batch_supported is False:
            self._fan_out(run_id, batch, outer, retry)
        else:
            self._transport.submit(self._deliver_batch, run_id, batch, key, outer, writer, retry)
        return outer

    def _probe(self) -> bool:
        """Whether the server has the batch endpoint, from its self-description."""
        batch = self._info.server().get("batch")
        if isinstance(batch, dict):
            self._batch_limit = max(1, min(_BATCH_CHUNK, int(batch.get("max_metrics", _BATCH_CHUNK))))
            self._packed = "packed" in (batch.get("formats") or [])
        self._use_batches(isinstance(batch, dict))
        return bool(self.batch_supported)

    def _use_batches(self, supported: bool) -> None:
        self.batch_supported = supported
        _log.debug("batch endpoint %s at %s", "found" if supported else "not found", self._transport.endpoint)

    def _deliver_batch(
        self,
        run_id: int,
        batch: MetricBatch,
        key: str,
        outer: BatchFuture,
        writer: Mapping[str, Any] | None,
        retry: bool,
    ) -> None:
        try:
            if self.batch_supported is None and not self._probe():
                self._fan_out(run_id, batch, outer, retry)
                return
            result = self._post_batch(run_id, batch, key, writer, retry)
            if result is None:  # the server has no such endpoint after all
                self._use_batches(False)
                self._fan_out(run_id, batch, outer, retry)
                return
            outer.set_result(result)
        except ApiError as exc:
            outer.set_result(BatchResult(len(batch), 0, failed=dict.fromkeys(range(len(batch)), exc), batch_id=key))
        except BaseException as exc:
            outer.set_exception(exc)

    def _post_batch(
        self, run_id: int, batch: MetricBatch, key: str, writer: Mapping[str, Any] | None, retry: bool
    ) -> BatchResult | None:
        """Post ``batch`` to the batch endpoint (in parts past its limit); None when the
        server answers that it has no such endpoint (404, 405) to the first part. The
        ``writer`` goes along where the server has the ``writers`` extension."""
        alive = {"writer": dict(writer)} if writer and "writers" in self._info.extensions() else {}
        n = len(batch)
        limit = self._batch_limit
        stored = 0
        duplicate = False
        failed: dict[int, ApiError] = {}
        for start in range(0, n, limit):
            part = batch if n <= limit else batch.subset(range(start, min(n, start + limit)))
            part_key = key if n <= limit else f"{key}:{start // limit}"
            kind, payload = ("packed", pack(part)) if self._packed else ("columns", columns(part))
            body = json.dumps({"run_id": run_id, "batch_id": part_key, kind: payload, **alive}).encode()
            try:
                response = self._transport.call(
                    "POST", "metrics/batch/", body=body, headers=JSON, idempotent=True, retry=retry
                )
            except ApiError as exc:
                failed.update(dict.fromkeys(range(start, start + len(part)), exc))
                continue
            if response.status_code in (200, 201):
                told = _stored_told(response, len(part))
                if isinstance(told, ApiError):
                    failed.update(dict.fromkeys(range(start, start + len(part)), told))
                    continue
                stored += told
                duplicate = duplicate or not told
            elif response.status_code in _NO_SUCH_ROUTE and start == 0 and not _run_not_found(response):
                return None
            else:  # a 5xx is worth another try later: the batch id makes re-sending safe
                error = self._error(response)
                failed.update(dict.fromkeys(range(start, start + len(part)), error))
        return BatchResult(n, stored, duplicate, failed, key)

    def _error(self, response: requests.Response) -> ApiError:
        """What a POST of metrics answered other than 2xx means (:func:`post_error`); an
        answer no MLBench server gives is also said, once."""
        if looks_odd(response):
            self._info.odd.say(response, _KEPT)
        return post_error(response)

    def _fan_out(self, run_id: int, batch: MetricBatch, outer: BatchFuture, retry: bool) -> None:
        """One single post per metric, in parallel; ``outer`` tells which are stored."""
        gather = Gather(outer)
        transport = self._transport
        for index, (name, value, date_us, metadata, cumulative) in enumerate(
            zip(batch.names, batch.values, batch.dates_us, batch.metadata_texts(), batch.cumulative)
        ):
            body = form(
                (
                    ("run_id", run_id),
                    ("name", name),
                    ("cumulative", cumulative),
                    ("date", format_str_datetime(date_us)),
                    ("value", value_to_str(value)),
                    ("metadata", metadata),
                )
            )
            try:
                future = transport.submit(
                    transport.call, "POST", "metrics/", body=body, headers=FORM, idempotent=False, retry=retry
                )
            except (ClosedError, RuntimeError) as exc:  # closed, or closing (the executor refuses)
                gather.failed(index, TransientApiError(f"not sent: {exc}"))
                continue
            gather.sent(future)
            future.add_done_callback(functools.partial(_single_answer, self._error, gather, index))


def _stored_told(response: requests.Response, sent: int) -> int | ApiError:
    """How many metrics a 2xx answer to a batch says were stored: ``sent``, or 0 for a
    batch stored before (``duplicate``); anything else (``200 {}``, no JSON, a count that
    is not the batch's) is a transient error: nothing is counted as stored that the server
    did not say it stored, and the batch id makes sending it again safe."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        count = answer.get("stored")
        if type(count) is int and (count == sent or (count == 0 and answer.get("duplicate") is True)):
            return count
    return TransientApiError(
        f"POST {response.request.url} answered {response.status_code} without saying the batch of {sent} "
        f"was stored ('stored' is {answer.get('stored') if isinstance(answer, dict) else None!r}, "
        f"body {response.text[:200]!r}): kept to send again",
        status_code=response.status_code,
        body=response.text[:2000],
        method="POST",
        url=response.request.url or "",
    )


def _run_not_found(response: requests.Response) -> bool:
    """Whether a 404 from the batch endpoint says the run is unknown (the embedded server
    marks it), rather than that the endpoint is: the batch is refused, not re-routed."""
    try:
        answer = response.json()
    except ValueError:
        return False
    return isinstance(answer, dict) and answer.get("error") == "run_not_found"


def _single_answer(
    error_of: Callable[[requests.Response], ApiError], gather: Gather, index: int, future: Future[requests.Response]
) -> None:
    """The answer to one single post of a fan-out, for its :class:`Gather`."""
    try:
        response = future.result()
    except concurrent.futures.CancelledError:
        gather.failed(index, TransientApiError("not sent: the client was closed first"))
    except ApiError as exc:
        gather.failed(index, exc)
    except Exception as exc:
        gather.failed(index, ApiError(f"unexpected error: {exc}"))
    else:
        if response.status_code == 201:
            gather.stored(index)
        else:
            gather.failed(index, error_of(response))

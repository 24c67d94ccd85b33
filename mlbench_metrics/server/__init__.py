"""The embedded MLBench-compatible server: the dashboard's REST API on one SQLite file.

Run it in this process::

    from mlbench_metrics.server import serve

    with serve() as server:            # 127.0.0.1, a free port, a temporary database
        client = ApiClient(url=server.address)
        ...

or in its own process (what benchmarks and crash tests do)::

    with spawn(db_path="metrics.db") as server:
        ...
        server.kill()                  # SIGKILL, to test what survives
        server.restart()

or from a shell: ``mlbench-metrics serve --port 8080``.

Threads: :func:`serve` starts the HTTP selector thread, workers on demand (at most 32)
and, with ``pace``, one thread for paced posts; all owned by the returned
:class:`ServerHandle` and joined by its ``stop()``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

from .._threads import start_thread
from .._version import __version__
from ._http import HttpServer
from .access import AccessPolicy, is_loopback
from .database import StoreError, is_database_url
from .executor import LocalExecutor, fail_abandoned_runs
from .pacing import Pacer
from .parsing import error_response
from .routes import App
from .store import Store

__all__ = ["DEFAULT_MAX_BODY", "ServerHandle", "ServerProcess", "default_db_path", "ready_line", "serve", "spawn"]

DEFAULT_MAX_BODY: Final = 64 * 1024 * 1024
"""The largest request body the server accepts by default (64 MiB)."""

_READY_PREFIX: Final = "mlbench-metrics server listening on "


class ServerHandle:
    """A running embedded server; stop it with :meth:`stop` or a ``with`` block.

    Attributes:
        url: the base URL, e.g. ``http://127.0.0.1:54321``.
        address: ``host:port``, the form ``ApiClient(url=...)`` takes as upstream does.
        port: the bound port.
        db_path: the SQLite file.
        token: the bearer token clients need, or None; generated when ``exec_runs``
            was asked for without one.
        store: the store behind the API (for inspection in tests and tools).
    """

    def __init__(
        self,
        http: HttpServer,
        app: App,
        store: Store,
        db_path: str,
        tmpdir: str | None,
        token: str | None,
        pacer: Pacer | None = None,
    ) -> None:
        self._http = http
        self._pacer = pacer
        self.token = token
        self.app = app
        self.store = store
        self.db_path = db_path
        self._tmpdir = tmpdir
        self.port = http.port
        host = http.host if ":" not in http.host else f"[{http.host}]"
        self.address = f"{host}:{self.port}"
        self.url = f"http://{self.address}"
        self._stopped = False
        self._lock = threading.Lock()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, join every server thread, close the database; idempotent.

        A temporary database (``db_path=None``) is deleted.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self._pacer is not None:
            self._pacer.close()
        self._http.stop(timeout)
        if self.app.executor is not None:
            self.app.executor.close()
        self.store.close()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    @property
    def connections(self) -> int:
        """Client connections open right now (to check connection reuse)."""
        return self._http.connections

    @property
    def connections_accepted(self) -> int:
        """Client connections accepted since the server started."""
        return self._http.accepted

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    db_path: str | None = None,
    *,
    token: str | None = None,
    allow_hosts: Sequence[str] = (),
    max_body: int = DEFAULT_MAX_BODY,
    idle_timeout: float = 60.0,
    header_timeout: float = 10.0,
    extensions: bool = True,
    exec_runs: bool = False,
    exec_workdir: str | None = None,
    pace: float | None = None,
    pool_size: int | None = None,
    pool_timeout: float | None = None,
    listening: socket.socket | None = None,
    writer_timeout: float = 60.0,
) -> ServerHandle:
    """Start the embedded server in background threads of this process.

    Args:
        host: the address to bind; loopback unless you mean otherwise.
        port: the port; 0 picks a free one (see ``handle.port``).
        db_path: the SQLite file, or a ``postgresql://`` URL (the ``[postgres]`` extra);
            None for a fresh temporary SQLite database.
        token: when set, requests need ``Authorization: Bearer <token>``.
        allow_hosts: names besides loopback ones (and ``host``) that clients may reach
            the server by, checked in the ``Host`` header against DNS rebinding; ``"*"``
            for any (see :mod:`~mlbench_metrics.server.access`).
        max_body: the largest request body accepted (413 beyond it).
        idle_timeout: seconds an idle kept-alive connection stays open.
        header_timeout: seconds a request's head may take to arrive, from its first
            byte (408 after); a total, so trickling bytes does not extend it.
        extensions: offer the batch endpoint, run states and pod registration. Without
            them the server answers those routes as the dashboard does (a 500 for
            ``GET /api/metrics/batch/``, 405 otherwise), to test code meant for it.
        exec_runs: run created runs' commands on this machine (see
            :mod:`mlbench_metrics.server.executor`). It runs what clients send, so it
            always needs a token: without ``token``, one is generated (see
            ``handle.token``) on a loopback ``host``; another ``host`` needs ``token``.
        exec_workdir: the working directory of those commands (default: this one).
        pace: store single metric posts one at a time, at most about this many a
            second, as slowly as the dashboard does (55-90 a second); None: full speed.
            See :mod:`mlbench_metrics.server.pacing`.
        pool_size, pool_timeout: PostgreSQL: connections this process opens at most,
            and seconds a request waits for one before a 503 (see :mod:`.postgres_db`).
        listening: a bound, listening socket to accept on (``serve --workers``: the
            processes share one); ``host`` and ``port`` then only name it.
        writer_timeout: seconds a logger writing a run may stay silent (it sends a heartbeat
            when idle) before the run reads as ``crashed``; see :mod:`.run_states`.

    Returns:
        The running server's handle.

    Raises:
        OSError: the address cannot be bound, or the database cannot be opened.
        ValueError: ``exec_runs`` on a non-loopback address without a token, or a
            ``pace`` or ``writer_timeout`` that is not a positive number.
    """
    if exec_runs and not token:
        if not is_loopback(host):
            raise ValueError(
                f"--exec runs the commands clients send: on {host}, which is not a loopback address, "
                "give the --token clients must present"
            )
        token = secrets.token_urlsafe(24)
    tmpdir = None
    if db_path is None:
        tmpdir = tempfile.mkdtemp(prefix="mlbench-metrics-")
        db_path = os.path.join(tmpdir, "metrics.db")
    store = _open_store(db_path, tmpdir, pool_size, pool_timeout)
    fail_abandoned_runs(store)
    access = AccessPolicy(token=token, allowed_hosts=allow_hosts, bind_host=host)
    try:
        app = App(store, access=access, max_body=max_body, extensions=extensions, writer_timeout=writer_timeout)
        pacer = None if pace is None else Pacer(app.handle, pace)
        http = HttpServer(
            host,
            port,
            app.handle if pacer is None else pacer,
            error_response,
            max_body=max_body,
            idle_timeout=idle_timeout,
            header_timeout=header_timeout,
            server_header=f"mlbench-metrics/{__version__}",
            screen=app.screen,
            serial=None if pacer is None else pacer.paces,
            listening=listening,
        )
    except BaseException:
        store.close()
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    handle = ServerHandle(http, app, store, db_path, tmpdir, token, pacer)
    if exec_runs:
        # The runs reach the server over loopback even when it listens on every interface.
        local = handle.url if host not in ("0.0.0.0", "::", "") else f"http://127.0.0.1:{handle.port}"
        app.executor = LocalExecutor(store, local, token, exec_workdir)
    http.start()
    return handle


def default_db_path() -> Path:
    """Where ``mlbench-metrics serve`` keeps its data without ``--db``.

    ``$XDG_DATA_HOME/mlbench-metrics/metrics.db``, by default
    ``~/.local/share/mlbench-metrics/metrics.db``: a file that outlives the server, as
    MLflow's ``mlruns`` does, rather than a temporary one deleted on exit.
    """
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "mlbench-metrics" / "metrics.db"


def _open_store(db_path: str, tmpdir: str | None, pool_size: int | None, pool_timeout: float | None) -> Store:
    """The store on ``db_path``; a clear ``OSError`` when it cannot be opened."""
    try:
        if is_database_url(db_path):
            from .postgres_db import PostgresDatabase

            return Store(PostgresDatabase(db_path, pool_size=pool_size, pool_timeout=pool_timeout))
        return Store(db_path)
    except StoreError as exc:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        if is_database_url(db_path):
            raise OSError(str(exc)) from None
        folder = os.path.dirname(os.path.abspath(db_path))
        hint = f" (the folder {folder} does not exist)" if not os.path.isdir(folder) else ""
        raise OSError(f"cannot open the database {db_path}: {exc}{hint}") from None


class ServerProcess:
    """The embedded server in a child process (see :func:`spawn`).

    Attributes:
        url, address, port: as on :class:`ServerHandle`; the port stays the same
            across :meth:`restart`.
        db_path: the SQLite file, which outlives the process.
    """

    def __init__(
        self, db_path: str, host: str, port: int, extra_args: list[str], tmpdir: str | None, startup_timeout: float
    ) -> None:
        self.db_path = db_path
        self.host = host
        self.port = port
        self._extra = extra_args
        self._tmpdir = tmpdir
        self._timeout = startup_timeout
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.address = ""
        self.start()

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start the child and wait until it listens."""
        if self._proc is not None and self._proc.poll() is None:
            return
        cmd = [
            sys.executable,
            "-m",
            "mlbench_metrics.server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--db",
            self.db_path,
            *self._extra,
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True, bufsize=1)
        self._proc = proc
        line = _read_ready_line(proc.stdout, self._timeout)
        if line is None:
            self._terminate(proc)
            raise RuntimeError(f"the server process did not start (exit code {proc.poll()})")
        self.url = line
        self.address = line.split("://", 1)[1]
        self.port = int(self.address.rsplit(":", 1)[1])
        # Keep reading stdout so the child can never block on a full pipe.
        start_thread(_drain, "mlbench-server-stdout", args=(proc.stdout,))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the child (SIGTERM, then SIGKILL after ``timeout``) and wait for it."""
        if self._proc is not None:
            self._terminate(self._proc, timeout)
            self._proc = None

    def kill(self) -> None:
        """Kill the child with SIGKILL and reap it: a crash, not a shutdown."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()
            self._proc = None

    def restart(self) -> None:
        """Stop the child if it runs, then start a new one on the same port and file."""
        self.stop()
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                self.start()
                return
            except RuntimeError:
                # The port can linger for a moment after the old process is gone.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        """Stop the child and delete a temporary database."""
        self.stop()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    @staticmethod
    def _terminate(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _read_ready_line(stream: IO[str] | None, timeout: float) -> str | None:
    """Read lines until the ready line; None if the process ends or time runs out."""
    if stream is None:
        return None
    result: list[str] = []
    done = threading.Event()

    def reader() -> None:
        for line in stream:
            if line.startswith(_READY_PREFIX):
                result.append(line[len(_READY_PREFIX) :].strip())
                break
        done.set()

    start_thread(reader, "mlbench-server-ready")
    done.wait(timeout)
    return result[0] if result else None


def _drain(stream: IO[str] | None) -> None:
    if stream is None:
        return
    try:
        for _ in stream:
            pass
    except (OSError, ValueError):
        pass


def spawn(
    db_path: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    args: list[str] | None = None,
    startup_timeout: float = 30.0,
) -> ServerProcess:
    """Start the embedded server in a child process and wait until it listens.

    Args:
        db_path: the SQLite file; None for a temporary one, deleted by ``close()``.
        host: the address to bind.
        port: the port; 0 picks a free one, kept for later restarts.
        args: more ``mlbench-metrics serve`` arguments, e.g. ``["--token", "t"]``.
        startup_timeout: seconds to wait for the child to listen.
    """
    tmpdir = None
    if db_path is None:
        tmpdir = tempfile.mkdtemp(prefix="mlbench-metrics-")
        db_path = os.path.join(tmpdir, "metrics.db")
    return ServerProcess(db_path, host, port, list(args or []), tmpdir, startup_timeout)


def ready_line(url: str) -> str:
    """The line ``serve`` prints once it listens (what :func:`spawn` waits for)."""
    return f"{_READY_PREFIX}{url}"

"""Local execution of runs (``mlbench-metrics serve --exec``): what Kubernetes does for the dashboard.

A run created with a custom image's command runs on this machine instead of in pods:
``num_workers`` processes (only rank 0 unless ``run_all_nodes``), each the command with
``{run_id}``, ``{rank}``, ``{hosts}`` and ``{backend}`` filled in as the dashboard fills
them (``hosts`` is ``127.0.0.1`` once per worker, where the dashboard lists its pods),
and ``--gpu``/``--light`` appended when the run asks for them, as the dashboard does.

A command starting with ``python`` (or ``python3``, or this server's ``python3.X``) runs
with the server's own interpreter (``sys.executable``), so ``python train.py`` finds
the packages the server was installed with, whatever ``PATH`` holds.

The command is an argument list: it is split like a shell would (``shlex``) *first*, and
the placeholders are filled inside each argument afterwards, so no field (a backend, a
name) can add, split or quote arguments, and no shell ever runs it. A command that
cannot be split or filled is refused (a 400) before the run is stored. The image name is
ignored: nothing is pulled or isolated, so only enable this for commands you trust (the
server requires a token with ``--exec``).

Each process also gets ``MLBENCH_METRICS_URL``, ``MLBENCH_METRICS_RUN_ID``,
``MLBENCH_METRICS_RANK`` (and ``MLBENCH_METRICS_TOKEN``), so ``mlbench_metrics.init()``
inside it logs to this server and run with no arguments.

States go ``initialized`` -> ``started`` -> ``finished`` (every process exited 0) or
``failed``; ``finished_at`` is set; ``job_metadata`` holds the command, the pids, the
exit codes and the last lines of stdout and stderr (as the dashboard's job does),
updated while the run goes. Deleting the run stops its processes.

Threads: one ``mlbench-exec-<run id>`` thread per running run, owned by
:class:`LocalExecutor`, which stops them all (and their processes) in :meth:`close`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import shlex
import signal
import string
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Final

import psutil

from .._threads import BLOCKED, start_thread
from ..env import ENV_RANK, ENV_RUN_ID, ENV_TOKEN, ENV_URL
from .store import Store

__all__ = ["MAX_LOCAL_WORKERS", "ExecError", "LocalExecutor", "command_lines", "fail_abandoned_runs"]

_log = logging.getLogger("mlbench_metrics.server")

_TAIL_LINES: Final = 200
_PUBLISH_EVERY: Final = 0.5  # seconds between job_metadata updates while a run goes
_TERM_GRACE: Final = 5.0  # seconds between SIGTERM and SIGKILL when a run is stopped
MAX_LOCAL_WORKERS: Final = 256
_PYTHON_NAMES: Final = frozenset({"python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"})
"""The most workers a local run may have (each may be a process on this machine)."""
_PLACEHOLDERS: Final = ("run_id", "rank", "hosts", "backend")


class ExecError(ValueError):
    """A run this executor cannot run (the server answers 400 with the message)."""


def _now_us() -> int:
    return time.time_ns() // 1000


class _LocalRun:
    """The processes of one run and the thread that watches them."""

    def __init__(self, run: Mapping[str, Any], commands: list[list[str]], env: dict[str, str]) -> None:
        self.run_id: int = run["id"]
        self.commands = commands
        self.env = env
        self.processes: list[subprocess.Popen[bytes]] = []
        self.stdout: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self.stderr: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None


class LocalExecutor:
    """Runs runs as local processes; plugged into the server's app by ``serve(exec_runs=True)``.

    Args:
        store: the server's store (states and job metadata are written there).
        base_url: the server's own URL, given to the processes.
        token: the server's bearer token, given to the processes.
        workdir: the processes' working directory (default: the server's).
    """

    def __init__(self, store: Store, base_url: str, token: str | None = None, workdir: str | None = None) -> None:
        self.store = store
        self.base_url = base_url
        self.token = token
        self.workdir = workdir
        self._runs: dict[int, _LocalRun] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- called by the app -----------------------------------------------------------

    def check(self, run: Mapping[str, Any], *, image_is_official: bool) -> None:
        """Refuse what cannot run here, before the run is stored.

        Args:
            run: the run's fields as they will be stored (``command``, ``backend``,
                ``num_workers``, ``run_on_all_nodes``, ``gpu_enabled``, ``light_target``).
            image_is_official: the run names an official image.

        Raises:
            ExecError: an official image (it needs Kubernetes), too many workers, or a
                command that is empty or cannot be split or filled.
        """
        if image_is_official:
            raise ExecError(
                "official images need Kubernetes (the MLBench dashboard); here, create the run with "
                "custom_image_name and a custom_image_command to run on this machine"
            )
        command_lines({**run, "id": 1})

    def start(self, run: Mapping[str, Any]) -> None:
        """Start the run's processes in the background (its thread marks it started).

        Never raises for the run itself: what cannot start fails the run.
        """
        try:
            commands = command_lines(run)
        except ExecError as exc:  # check() let it through: still, never leave it initialized
            self.store.update_run(
                run["id"], state="failed", finished_at=_now_us(), job_metadata={"stderr": [f"Run failed: {exc}"]}
            )
            return
        env = dict(os.environ)
        env.update({ENV_URL: self.base_url, ENV_RUN_ID: str(run["id"])})
        if self.token:
            env[ENV_TOKEN] = self.token
        local = _LocalRun(run, commands, env)
        with self._lock:
            if self._closed:
                return
            self._runs[local.run_id] = local
            local.thread = start_thread(self._watch, f"mlbench-exec-{local.run_id}", args=(local,))

    def stop(self, run_id: int, timeout: float = 10.0) -> None:
        """Stop the run's processes (SIGTERM, then SIGKILL) and wait for its thread."""
        with self._lock:
            local = self._runs.get(run_id)
        if local is None:
            self._stop_elsewhere(run_id)
            return
        local.stopping.set()
        for process in local.processes:
            _signal_group(process, signal.SIGTERM)
        if local.thread is not None:
            local.thread.join(timeout)

    def _stop_elsewhere(self, run_id: int) -> None:
        """SIGTERM the process groups of a run another server process on this machine started
        (``serve --workers``: the request to stop it may reach any of them)."""
        run = self.store.get_run(run_id)
        if run is None or run["state"] != "started" or not str(run["job_id"]).startswith("local-"):
            return
        for pid in run["job_metadata"].get("pids") or []:
            if isinstance(pid, int) and pid > 0 and _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGTERM)

    def close(self, timeout: float = 10.0) -> None:
        """Stop every run; no run starts afterwards."""
        with self._lock:
            self._closed = True
            run_ids = list(self._runs)
        for run_id in run_ids:
            self.stop(run_id, timeout)

    # -- the run's thread ----------------------------------------------------------------

    def _watch(self, local: _LocalRun) -> None:
        try:
            self._run(local)
        except Exception as exc:  # a bug here must still end the run
            _log.exception("local run %s failed", local.run_id)
            local.stderr.append(f"Run failed: {type(exc).__name__}: {exc}")
            self._finish(local, "failed", [])
        finally:
            with self._lock:
                self._runs.pop(local.run_id, None)

    def _run(self, local: _LocalRun) -> None:
        local.stdout.append("Initializing run")
        self.store.update_run(local.run_id, state="started", job_id=f"local-{local.run_id}")
        selector = selectors.DefaultSelector()
        try:
            for rank, command in enumerate(local.commands):
                if local.stopping.is_set():  # deleted while starting
                    break
                env = {**local.env, ENV_RANK: str(rank)}
                try:
                    process = subprocess.Popen(
                        command,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        env=env,
                        cwd=self.workdir,
                        start_new_session=True,  # its own process group, so stop() reaches its children
                        preexec_fn=_unblock_signals,
                    )
                except OSError as exc:
                    local.stderr.append(f"Run failed: cannot start {command[0]!r}: {exc}")
                    local.stopping.set()
                    break
                local.processes.append(process)
                assert process.stdout is not None and process.stderr is not None
                selector.register(process.stdout, selectors.EVENT_READ, (local.stdout, rank))
                selector.register(process.stderr, selectors.EVENT_READ, (local.stderr, rank))
            if not local.stopping.is_set():
                local.stdout.append(f"Started run: {len(local.processes)} process(es)")
            self._publish(local)
            self._pump(local, selector)
        finally:
            selector.close()
            for process in local.processes:
                for pipe in (process.stdout, process.stderr):
                    if pipe is not None:
                        pipe.close()
        codes = [self._reap(local, process) for process in local.processes]
        ok = bool(codes) and all(code == 0 for code in codes) and not local.stopping.is_set()
        if not ok:
            local.stderr.append("Run stopped" if local.stopping.is_set() else f"Run failed: exit codes {codes}")
        self._finish(local, "finished" if ok else "failed", codes)

    def _pump(self, local: _LocalRun, selector: selectors.BaseSelector) -> None:
        """Read every pipe until all are closed, publishing the tails as they grow.

        Stops early when every process has exited and only their orphans hold the pipes,
        and enforces a stop: SIGTERM was sent by :meth:`stop`, SIGKILL follows after
        the grace period.
        """
        partial: dict[int, bytes] = {}
        published = time.monotonic()
        exited_at: float | None = None
        kill_at: float | None = None
        processes = len(local.commands)
        while selector.get_map():
            for key, _ in selector.select(timeout=_PUBLISH_EVERY):
                fd = key.fd
                tail, rank = key.data
                chunk = os.read(fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    rest = partial.pop(fd, b"")
                    if rest:
                        tail.append(_line(rank, rest, processes))
                    continue
                lines = (partial.pop(fd, b"") + chunk).split(b"\n")
                partial[fd] = lines.pop()
                tail.extend(_line(rank, line, processes) for line in lines)
            now = time.monotonic()
            if local.stopping.is_set():
                kill_at = kill_at or now + _TERM_GRACE
                if now >= kill_at:
                    for process in local.processes:
                        _signal_group(process, signal.SIGKILL)
            if all(process.poll() is not None for process in local.processes):
                exited_at = exited_at or now
                if now - exited_at >= 2 * _PUBLISH_EVERY:
                    break  # what still holds the pipes outlived its parent
            if now - published >= _PUBLISH_EVERY:
                self._publish(local)
                published = now

    def _reap(self, local: _LocalRun, process: subprocess.Popen[bytes]) -> int:
        """Wait for ``process``; once the run is stopping, SIGKILL it after the grace period."""
        kill_at: float | None = None
        while True:
            try:
                return process.wait(_PUBLISH_EVERY)
            except subprocess.TimeoutExpired:
                if local.stopping.is_set():
                    kill_at = kill_at or time.monotonic() + _TERM_GRACE
                    if time.monotonic() >= kill_at:
                        _signal_group(process, signal.SIGKILL)

    def _publish(self, local: _LocalRun, codes: list[int] | None = None) -> None:
        meta: dict[str, Any] = {
            "stdout": list(local.stdout),
            "stderr": list(local.stderr),
            "command": " ".join(shlex.quote(a) for a in local.commands[0]) if local.commands else "",
            "pids": [p.pid for p in local.processes],
            "executor": "local",
        }
        if codes is not None:
            meta["exit_codes"] = codes
        self.store.update_run(local.run_id, job_metadata=meta)

    def _finish(self, local: _LocalRun, state: str, codes: list[int]) -> None:
        self._publish(local, codes)
        self.store.update_run(local.run_id, state=state, finished_at=_now_us())


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # it exists, but cannot be looked at: count it as running
        return True


def fail_abandoned_runs(store: Store, *, alive: Callable[[int], bool] = _pid_alive) -> list[int]:
    """Fail the local runs a server that is gone left ``started``, once none of their processes runs.

    A server killed while it ran runs (``kill -9``, out of memory, a power cut) never marks
    them finished or failed: without this they would stay ``started`` for ever, shown live
    and waited for by ``runs wait``. A run with a process still alive is left alone: it is
    another server's on the same file, or the orphan of this one, still going. So is one
    with no pid recorded yet, which another server may be starting right now.

    Args:
        store: the server's store, just opened.
        alive: whether a pid is a running process (injected by tests).

    Returns:
        The ids of the runs marked failed.
    """
    failed = []
    for run in store.list_runs():
        meta = dict(run["job_metadata"])
        pids = [p for p in meta.get("pids") or [] if isinstance(p, int) and p > 0]
        if run["state"] != "started" or not str(run["job_id"]).startswith("local-") or not pids:
            continue
        if any(alive(pid) for pid in pids):
            continue
        meta["stderr"] = [*meta.get("stderr", []), "Run failed: the server stopped while it ran"][-_TAIL_LINES:]
        store.update_run(run["id"], state="failed", finished_at=_now_us(), job_metadata=meta)
        _log.warning("run %s was left started by a server that stopped, its processes gone: marked failed", run["id"])
        failed.append(run["id"])
    return failed


class _Filler(string.Formatter):
    """``str.format`` restricted to the four placeholders: no attributes, indexes or positions."""

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if field_name not in _PLACEHOLDERS:
            raise KeyError(field_name)
        return kwargs[field_name], field_name


_FILLER: Final = _Filler()


def command_lines(run: Mapping[str, Any]) -> list[list[str]]:
    """The argument list of each process of ``run``, placeholders filled as the dashboard fills them.

    The command is split first and each argument filled on its own, so a value with
    spaces or quotes stays one argument.

    Args:
        run: ``id``, ``command``, ``backend``, ``num_workers``, ``run_on_all_nodes``,
            ``gpu_enabled`` and ``light_target``.

    Raises:
        ExecError: too many workers, or a command that is empty or cannot be split or filled.
    """
    workers = int(run["num_workers"])
    if not 1 <= workers <= MAX_LOCAL_WORKERS:
        raise ExecError(f"num_workers is {workers}; a local run has 1 to {MAX_LOCAL_WORKERS} workers")
    try:
        template = shlex.split(str(run["command"]))
    except ValueError as exc:
        raise ExecError(f"custom_image_command cannot be split into arguments: {exc}") from None
    if not template:
        raise ExecError("custom_image_command is empty: there is nothing to run")
    if template[0] in _PYTHON_NAMES and sys.executable:
        template[0] = sys.executable
    values = {"run_id": int(run["id"]), "hosts": ",".join(["127.0.0.1"] * workers), "backend": str(run["backend"])}
    extra = (["--gpu"] if run["gpu_enabled"] else []) + (["--light"] if run["light_target"] else [])
    lines = []
    for rank in range(workers) if run["run_on_all_nodes"] else range(1):
        try:
            lines.append([_FILLER.format(arg, rank=rank, **values) for arg in template] + extra)
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
            detail = f"unknown placeholder {{{exc.args[0]}}}" if isinstance(exc, KeyError) else str(exc)
            raise ExecError(
                f"custom_image_command cannot be filled: {detail} (placeholders are {{run_id}}, {{rank}}, "
                "{hosts} and {backend}; write other braces twice, {{ and }})"
            ) from None
    return lines


def _line(rank: int, raw: bytes, processes: int) -> str:
    text = raw.decode("utf-8", "replace").rstrip("\r")
    return text if processes == 1 else f"[{rank}] {text}"


def _unblock_signals() -> None:
    """In a run's process, between fork and exec: let SIGTERM and SIGINT in again.

    This thread blocks them (as every thread of the library does), and a child inherits the
    mask of the thread that forks it, through ``exec`` too: the run's script could never
    handle SIGTERM, so stopping it always ended in SIGKILL, its logger unflushed. Only
    ``pthread_sigmask`` runs here: it takes no lock another thread could have held at fork.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)

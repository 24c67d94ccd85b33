"""Logging processes that end every way a training process ends: return, sys.exit,
SIGTERM, fork, multiprocessing, and a server that never answers. Real subprocesses."""

from __future__ import annotations

import functools
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fakes import HANG, ScriptedServer
from mlbench_metrics import Run
from mlbench_metrics.server import ServerHandle

from helpers import create_run, wait_until

DELIVERY = pytest.mark.parametrize("delivery", ["thread", "process"])


def run_script(
    server_address: str, run_id: int, body: str, delivery: str = "thread", **kwargs: Any
) -> subprocess.Popen[str]:
    env = {**os.environ, "MLBENCH_METRICS_URL": server_address, "MLBENCH_METRICS_RUN_ID": str(run_id)}
    env["MLBENCH_METRICS_DELIVERY"] = delivery
    env.pop("RANK", None)
    env.pop("MLBENCH_METRICS_RANK", None)
    code = "import mlbench_metrics, os, sys, signal, time\n" + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs
    )


@functools.cache
def _pause_syscall() -> str | None:
    """How ``/proc/<pid>/syscall`` names a thread waiting in ``signal.pause()`` on this
    machine (the number differs by architecture), read from a process doing only that;
    None where there is no such file to read."""
    if not os.path.exists(f"/proc/{os.getpid()}/syscall"):
        return None
    code = "import signal; print(flush=True); signal.pause()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # then it only calls pause()
        wait_until(lambda: _syscall(proc.pid) not in (None, "running"), timeout=30, what="a process to pause")
        return _syscall(proc.pid)
    except AssertionError:  # it never showed one
        return None
    finally:
        proc.kill()
        proc.wait()


def _syscall(pid: int) -> str | None:
    """The syscall number the main thread of ``pid`` waits in ("running" when it runs)."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            return f.read().split()[0]
    except (OSError, IndexError):
        return None


def signal_when_paused(proc: subprocess.Popen[str], signum: int) -> None:
    """Send ``signum`` once the main thread of ``proc`` is inside ``signal.pause()``.

    A Python-level handler (the library's, or the program's) only runs when the main
    thread checks for signals between bytecodes. CPython checks them before it gives the
    GIL to a busy thread (our dispatcher, delivering) and not again after taking it back:
    a signal that arrives while the main thread waits for the GIL on its way from
    ``print`` to ``signal.pause()`` is noted, and then ``pause()`` sleeps for ever (it
    hung a full-suite run once). Without the library, with a plain handler and a thread
    spinning in Python, 1 run in 100 hung that way here. No library can close that
    window for a Python-level handler; what these tests check is that the signal reaches
    a main thread that waits in ``pause()`` (not one of our threads), so they signal
    only once it does.
    """
    expected = _pause_syscall()
    if expected is not None:
        wait_until(lambda: _syscall(proc.pid) == expected, timeout=60, what="the script to wait in signal.pause()")
    proc.send_signal(signum)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@DELIVERY
def test_records_are_delivered_when_the_script_returns(fresh_server: ServerHandle, delivery: str) -> None:
    run = create_run(fresh_server.url)
    proc = run_script(
        fresh_server.address,
        run["id"],
        """
        log = mlbench_metrics.init(flush_interval=30)
        for i in range(5000):
            log.log("x", i)
        # no flush, no close: the exit hook delivers
    """,
        delivery,
    )
    code, _, err = finish(proc)
    assert code == 0, err
    assert fresh_server.store.count_metrics(run["id"]) == 5000


@DELIVERY
def test_records_are_delivered_on_sys_exit(fresh_server: ServerHandle, delivery: str) -> None:
    run = create_run(fresh_server.url)
    proc = run_script(
        fresh_server.address,
        run["id"],
        """
        log = mlbench_metrics.init(flush_interval=30)
        for i in range(3000):
            log.log("x", i)
        sys.exit(3)
    """,
        delivery,
    )
    code, _, err = finish(proc)
    assert code == 3, err
    assert fresh_server.store.count_metrics(run["id"]) == 3000


@DELIVERY
def test_a_program_with_its_own_sigterm_handler_keeps_it(fresh_server: ServerHandle, delivery: str) -> None:
    run = create_run(fresh_server.url)
    proc = run_script(
        fresh_server.address,
        run["id"],
        """
        signal.signal(signal.SIGTERM, lambda s, f: sys.exit(42))
        log = mlbench_metrics.init(flush_interval=30)
        for i in range(100):
            log.log("x", i)
        print("ready", flush=True)
        while True:
            signal.pause()
    """,
        delivery,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    signal_when_paused(proc, signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 42, err  # theirs ran; the exit hook still delivered
    assert fresh_server.store.count_metrics(run["id"]) == 100


@DELIVERY
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_sends_its_own_records_and_not_the_parents(fresh_server: ServerHandle, delivery: str) -> None:
    run = create_run(fresh_server.url)
    proc = run_script(
        fresh_server.address,
        run["id"],
        """
        log = mlbench_metrics.init(flush_interval=30, batch_size=100000, max_buffer=1000000)
        for i in range(1000):
            log.log("parent", i)            # still buffered when we fork
        pid = os.fork()
        if pid == 0:
            for i in range(500):
                log.log("child", i)
            sys.exit(0)                      # the child's own exit hook delivers its records
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        for i in range(200):
            log.log("parent", 1000 + i)
    """,
        delivery,
    )
    code, _, err = finish(proc)
    assert code == 0, err
    body = fresh_server.store.series(run_id=run["id"])
    counts = {name: len(points) for name, points in body}
    assert counts == {"parent": 1200, "child": 500}


@DELIVERY
@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_a_multiprocessing_worker_delivers_before_os_exit(fresh_server: ServerHandle, delivery: str) -> None:
    run = create_run(fresh_server.url)
    proc = run_script(
        fresh_server.address,
        run["id"],
        """
        import multiprocessing
        log = mlbench_metrics.init(flush_interval=30)
        log.log("parent", 1)

        def worker(n):
            for i in range(n):
                mlbench_metrics.log("worker", i)   # a DataLoader worker, say

        if __name__ == "__main__":
            ctx = multiprocessing.get_context("fork")
            p = ctx.Process(target=worker, args=(700,))
            p.start()
            p.join()
            assert p.exitcode == 0
    """,
        delivery,
    )
    code, _, err = finish(proc)
    assert code == 0, err
    counts = {name: len(points) for name, points in fresh_server.store.series(run_id=run["id"])}
    assert counts == {"parent": 1, "worker": 700}


def test_a_server_that_never_answers_does_not_hold_exit(fresh_server: ServerHandle) -> None:
    run = create_run(fresh_server.url)
    with ScriptedServer(lambda seen, i: HANG) as silent:
        proc = run_script(
            silent.address,
            run["id"],
            """
            log = mlbench_metrics.init(shutdown_timeout=2.0, spool=False)
            for i in range(100):
                log.log("x", i)
            print(time.monotonic(), flush=True)   # the end of the program's own code
        """,
        )
        assert proc.stdout is not None
        done = float(proc.stdout.readline())
        code, _, err = finish(proc)
        ended = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
    assert code == 0, err
    assert ended - done < 2.0 + 1.0, "exit must come within the close timeout plus one second"
    assert "100 records were not delivered at exit (dropped)" in err


@pytest.fixture(scope="module")
def busy_cpus() -> Iterator[None]:
    """Two processes that keep both CPUs busy while the tests that use this run."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


@pytest.mark.parametrize(
    ("delivery", "attempt"), [("thread", i) for i in range(10)] + [("process", i) for i in range(3)]
)
def test_sigterm_is_handled_under_cpu_load(
    fresh_server: ServerHandle, busy_cpus: None, delivery: str, attempt: int
) -> None:
    # Was: about 1 run in 3 hung, because the kernel gave the signal to a library thread
    # and the main thread, waiting in signal.pause(), never woke.
    run = create_run(fresh_server.url)
    proc = run_script(
        fresh_server.address,
        run["id"],
        """
        log = mlbench_metrics.init(flush_interval=30)
        for i in range(2000):
            log.log("x", i)
        print("logged", flush=True)
        while True:
            signal.pause()
    """,
        delivery,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "logged"
        signal_when_paused(proc, signal.SIGTERM)
        code, _, err = finish(proc, timeout=60)
    finally:
        proc.kill()
    assert code == -signal.SIGTERM, err
    assert fresh_server.store.count_metrics(run["id"]) == 2000


def test_a_process_started_by_serve_exec_logs_to_its_own_run(exec_server: ServerHandle) -> None:
    # Was: init(new_run=...) in a process that serve --exec started created another run,
    # which the executor started, which created another: 32 runs in 25 s.
    code = textwrap.dedent("""
        import mlbench_metrics
        log = mlbench_metrics.init(new_run="spawned")
        log.log("x", 1)
        mlbench_metrics.finish()
    """)
    run = Run.create(
        "started-by-exec",
        custom_image_name="local",
        custom_image_command=f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}",
        backend="gloo",
        url=exec_server.address,
    )
    run.wait(timeout=120, poll=0.1)
    assert run.state == "finished", run.job_metadata
    assert [r.id for r in Run.list(url=exec_server.address)] == [run.id]
    assert exec_server.store.count_metrics(run.id) == 1


@pytest.mark.parametrize(
    "held",
    [
        "_lifecycle._hooks_lock",  # where the main thread is while init() registers a logger
        "log.client._transport._lock",  # where it is in every call on the client (submit)
    ],
)
def test_sigterm_while_the_main_thread_holds_a_lock_closing_takes_still_ends_the_process(
    fresh_server: ServerHandle, held: str
) -> None:
    # Was: the handler runs in the main thread between any two bytecodes, also while that
    # thread holds a lock that closing takes again (unregistering, submitting the writer's
    # end): a plain Lock waited on itself for ever.
    run = create_run(fresh_server.url)
    proc = run_script(
        fresh_server.address,
        run["id"],
        f"""
        from mlbench_metrics import _lifecycle
        log = mlbench_metrics.init(flush_interval=30, shutdown_timeout=3)
        for i in range(100):
            log.log("x", i)
        log.flush()
        with {held}:
            os.kill(os.getpid(), signal.SIGTERM)  # its handler runs before the next line
            print("the handler did not run", flush=True)
    """,
    )
    try:
        code, out, err = finish(proc, timeout=60)
    finally:
        proc.kill()
    assert code == -signal.SIGTERM, (out, err)
    assert fresh_server.store.count_metrics(run["id"]) == 100

"""The Run handle, local execution (``serve(exec_runs=True)``) and loggers that own their run."""

from __future__ import annotations

import datetime as dt
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import psutil
import pytest

from mlbench_metrics import ApiClient, ClientApiError, ConfigError, MetricsLogger, Run
from mlbench_metrics.server import ServerHandle, serve, spawn

from helpers import unique_name, wait_until


def python_command(code: str) -> str:
    """A custom_image_command running ``code`` with this interpreter."""
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(textwrap.dedent(code))}"


def create_local(server: ServerHandle, code: str, **kwargs: object) -> Run:
    return Run.create(
        unique_name(),
        custom_image_name="local",
        custom_image_command=python_command(code),
        backend="gloo",
        url=server.address,
        **kwargs,  # type: ignore[arg-type]
    )


def test_create_get_list_refresh_metrics_download_delete(server: ServerHandle, tmp_path: Path) -> None:
    run = Run.create(
        unique_name(), 2, custom_image_name="me/img", custom_image_command="true", backend="mpi", url=server.address
    )
    assert (run.state, run.num_workers, run.done) == ("initialized", 2, False)
    assert run.created_at is not None and run.created_at.tzinfo is not None and run.finished_at is None
    with ApiClient(url=server.address) as client:
        assert Run.get(run.id, client=client).name == run.name
        assert run.id in [r.id for r in Run.list(client=client)]
        client.post_metric(run.id, "loss @ 0", 0.5).result()
        client.post_metric(run.id, "loss @ 0", 0.25).result()
        client.post_metric(run.id, "phase @ 0", "warmup").result()
    metrics = run.metrics()
    assert [v for _, v in metrics["loss @ 0"]] == [0.5, 0.25]
    assert metrics["phase @ 0"][0][1] == "warmup"
    assert all(isinstance(d, dt.datetime) and d.tzinfo is not None for d, _ in metrics["loss @ 0"])
    assert list(run.metrics(metric_filter="phase @ 0")) == ["phase @ 0"]
    assert [v for _, v in run.metrics(last_n=1)["loss @ 0"]] == [0.25]
    path = run.download(tmp_path / "m.zip")
    with zipfile.ZipFile(path) as z:
        assert any("loss" in n for n in z.namelist())
    assert run.mark_finished().state == "finished" and run.refresh().finished_at is not None
    run.delete()
    with pytest.raises(ClientApiError, match="404"):
        run.refresh()


def test_wait_times_out_and_reports_progress(server: ServerHandle) -> None:
    run = Run.create(
        unique_name(), custom_image_name="x", custom_image_command="true", backend="gloo", url=server.address
    )
    seen: list[str] = []
    with pytest.raises(TimeoutError, match="still initialized"):
        run.wait(timeout=0.3, poll=0.1, progress=lambda r: seen.append(r.state))
    assert seen and set(seen) == {"initialized"}
    with pytest.raises(ValueError, match="poll"):
        run.wait(poll=0)


def test_wait_says_when_the_server_will_never_start_the_run(server: ServerHandle) -> None:
    # As the README shows it, run.wait(timeout=3600) against `serve` (no --exec) waited an hour.
    run = Run.create(
        unique_name(), custom_image_name="x", custom_image_command="true", backend="gloo", url=server.address
    )
    with pytest.raises(ConfigError, match=r"will stay initialized.*does not run runs.*--exec"):
        run.wait(timeout=120, poll=0.2)


def test_bad_arguments_are_refused_before_sending(server: ServerHandle) -> None:
    with pytest.raises(ValueError, match="invalid run name"):
        Run.create(
            "Not A Name!", url=server.address, custom_image_name="x", custom_image_command="true", backend="gloo"
        )
    with pytest.raises(ValueError, match="image"):
        Run.create(unique_name(), url=server.address, image="no such benchmark", backend="gloo")


def test_a_local_run_finishes_with_its_output_and_metrics(exec_server: ServerHandle) -> None:
    run = create_local(
        exec_server,
        """
        import sys, mlbench_metrics
        log = mlbench_metrics.init()
        for i in range(50):
            log.log("loss", 1 / (i + 1), step=i)
        mlbench_metrics.finish()
        print("args", sys.argv[1:])
        print("to stderr", file=sys.stderr)
        """,
        num_workers=2,
        run_all_nodes=True,
    )
    run.wait(timeout=120, poll=0.1)
    assert run.state == "finished", run.job_metadata
    assert run.finished_at is not None
    meta = run.job_metadata
    assert meta["exit_codes"] == [0, 0] and len(meta["pids"]) == 2
    assert any(line.endswith("to stderr") for line in meta["stderr"])
    assert {line[:3] for line in meta["stdout"] if "args" in line} == {"[0]", "[1]"}  # both ranks ran
    metrics = run.metrics()
    assert sorted(metrics) == ["loss @ 0", "loss @ 1"]  # the environment told each process its rank
    assert len(metrics["loss @ 1"]) == 50


def test_placeholders_are_filled_as_the_dashboard_fills_them(exec_server: ServerHandle, tmp_path: Path) -> None:
    run = Run.create(
        unique_name(),
        3,
        custom_image_name="local",
        custom_image_command=python_command("import sys; print(sys.argv[1:])") + " {run_id} {rank} {hosts} {backend}",
        custom_backend="mybackend",
        light_target=True,
        url=exec_server.address,
    )
    run.wait(timeout=60, poll=0.1)
    assert run.state == "finished"
    expected = [str(run.id), "0", "127.0.0.1,127.0.0.1,127.0.0.1", "mybackend", "--light"]
    assert str(expected) in run.job_metadata["stdout"]  # rank 0 only: run_all_nodes is off
    assert len(run.job_metadata["pids"]) == 1


def test_a_failing_command_fails_the_run(exec_server: ServerHandle) -> None:
    run = create_local(exec_server, "import sys; print('about to fail'); sys.exit(3)")
    run.wait(timeout=60, poll=0.1)
    assert run.state == "failed" and run.finished_at is not None
    assert run.job_metadata["exit_codes"] == [3]
    assert "Run failed: exit codes [3]" in run.job_metadata["stderr"]
    missing = Run.create(
        unique_name(),
        custom_image_name="x",
        custom_image_command="/no/such/program",
        backend="gloo",
        url=exec_server.address,
    )
    missing.wait(timeout=60, poll=0.1)
    assert missing.state == "failed" and "cannot start" in " ".join(missing.job_metadata["stderr"])


def test_deleting_a_run_stops_its_processes(exec_server: ServerHandle, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    run = create_local(
        exec_server,
        f"""
        import pathlib, threading
        pathlib.Path({str(marker)!r}).write_text("yes")
        threading.Event().wait()  # run until stopped
        """,
    )
    wait_until(marker.exists, what="the run's process to start")
    pid = run.refresh().job_metadata["pids"][0]
    run.delete()
    with pytest.raises(psutil.NoSuchProcess):
        psutil.Process(pid).status()  # reaped, not a zombie


def test_a_run_gets_sigterm_and_sigint_unblocked_so_it_can_flush_when_stopped(
    exec_server: ServerHandle, tmp_path: Path
) -> None:
    # The executor's thread blocks both (as the library's threads do); a child inherits a
    # thread's mask through fork and exec, so a run's script could never handle SIGTERM:
    # deleting the run, or stopping the server, always ended in SIGKILL, its logger unflushed.
    marker = tmp_path / "handler ran"
    run = create_local(
        exec_server,
        f"""
        import pathlib, signal, sys, threading
        print(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])), flush=True)
        def stop(signum, frame):
            pathlib.Path({str(marker)!r}).write_text("yes")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("ready", flush=True)
        threading.Event().wait()
        """,
    )
    wait_until(lambda: "ready" in run.refresh().job_metadata.get("stdout", []), what="the run's process to start")
    assert run.job_metadata["stdout"][-2] == "[]", "the run's process starts with signals blocked"
    run.delete()
    assert marker.read_text() == "yes", "SIGTERM did not reach the run's handler"


def test_a_run_left_started_by_a_server_that_died_is_failed_when_a_server_opens_the_file(tmp_path: Path) -> None:
    # Was: after kill -9 of serve --exec, its runs stayed "started" for ever: the page showed
    # them live, and `runs wait` waited until its timeout.
    server = spawn(str(tmp_path / "m.db"), args=["--exec", "--token", "t0k"])
    try:
        marker = tmp_path / "started"
        code = f"import pathlib, threading; pathlib.Path({str(marker)!r}).touch(); threading.Event().wait()"
        run = Run.create(
            unique_name(),
            custom_image_name="local",
            custom_image_command=python_command(code),
            backend="gloo",
            url=server.address,
            token="t0k",
        )
        wait_until(lambda: bool(run.refresh().job_metadata.get("pids")), what="the run's process to start")
        server.kill()
        for pid in run.job_metadata["pids"]:  # its orphan, killed too: nothing runs it any more
            process = psutil.Process(pid)
            process.kill()
            process.wait(30)
        server.start()
        run.refresh()
        assert run.state == "failed" and run.finished_at is not None
        assert "the server stopped while it ran" in run.job_metadata["stderr"][-1]
    finally:
        server.close()


def test_official_images_are_refused_with_a_clear_400(exec_server: ServerHandle) -> None:
    with pytest.raises(ClientApiError, match="official images need Kubernetes") as info:
        Run.create(unique_name(), image="PyTorch Cifar-10 ResNet-20", backend="gloo", url=exec_server.address)
    assert info.value.status_code == 400


def test_a_command_with_stray_braces_is_refused_before_it_is_stored(exec_server: ServerHandle) -> None:
    before = len(Run.list(url=exec_server.address))
    with pytest.raises(ClientApiError, match="write other braces twice") as info:
        create_local(exec_server, "print({'a': 1})")
    assert info.value.status_code == 400 and len(Run.list(url=exec_server.address)) == before
    doubled = create_local(exec_server, "print({{'a': 1}})")  # as with the dashboard, doubled braces are literal
    assert doubled.wait(timeout=60, poll=0.1).state == "finished"
    assert "{'a': 1}" in doubled.job_metadata["stdout"]


@pytest.mark.parametrize(
    "backend",
    ["gloo --injected /etc/passwd", 'a"b', "it's", "$(touch x) `y` ; z", "{rank}"],
    ids=["spaces", "double-quote", "single-quote", "shell", "braces"],
)
def test_fields_fill_arguments_and_never_add_split_or_quote_them(exec_server: ServerHandle, backend: str) -> None:
    """Placeholders are filled after the command is split: a value is one argument, verbatim."""
    run = Run.create(
        unique_name(),
        custom_image_name="local",
        custom_image_command=python_command("import sys; print(sys.argv[1:])") + " {backend} --backend={backend}",
        custom_backend=backend,
        url=exec_server.address,
    )
    run.wait(timeout=60, poll=0.1)
    assert run.state == "finished", run.job_metadata  # before: a 500 after the run was stored, for ever initialized
    assert str([backend, f"--backend={backend}"]) in run.job_metadata["stdout"]


@pytest.mark.parametrize(
    "command",
    ["true {run_id[0]}", "true {rank.real}", "true {0}", "true {}", "true {rank:s}", "true {nope}", "true 'open", "  "],
)
def test_a_command_that_cannot_be_filled_is_a_400_before_the_run_is_stored(
    exec_server: ServerHandle, command: str
) -> None:
    before = len(Run.list(url=exec_server.address))
    with pytest.raises(ClientApiError, match="custom_image_command") as info:
        Run.create(
            unique_name(), custom_image_name="x", custom_image_command=command, backend="gloo", url=exec_server.address
        )
    assert info.value.status_code == 400
    assert len(Run.list(url=exec_server.address)) == before


def test_a_local_run_has_a_bounded_number_of_workers(exec_server: ServerHandle) -> None:
    with pytest.raises(ClientApiError, match="num_workers") as info:
        Run.create(
            unique_name(),
            10**6,
            custom_image_name="x",
            custom_image_command="true",
            backend="gloo",
            url=exec_server.address,
        )
    assert info.value.status_code == 400 and Run.list(url=exec_server.address) == []


def test_exec_is_refused_on_a_public_address_without_a_token() -> None:
    with pytest.raises(ValueError, match="loopback"):
        serve(host="0.0.0.0", exec_runs=True)  # refused before anything is bound


def test_a_logger_that_creates_its_run_marks_it_finished_or_failed(server: ServerHandle) -> None:
    with MetricsLogger(new_run=unique_name("own"), url=server.address) as log:
        log.log("x", 1)
    assert Run.get(log.run_id, url=server.address).state == "finished"
    with pytest.raises(RuntimeError), MetricsLogger(new_run=unique_name("own"), url=server.address) as failing:
        failing.log("x", 1)
        raise RuntimeError("training diverged")
    assert Run.get(failing.run_id, url=server.address).state == "failed"
    with pytest.raises(ValueError, match="not both"):
        MetricsLogger(7, new_run="x", url=server.address)


def test_an_uncaught_exception_fails_the_loggers_own_run(server: ServerHandle, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import mlbench_metrics
            log = mlbench_metrics.init(new_run="crashing-run", url={server.address!r})
            print(log.run_id, flush=True)
            log.log("x", 1)
            raise RuntimeError("boom")
            """
        )
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "boom" in result.stderr
    run = Run.get(int(result.stdout.split()[0]), url=server.address)
    assert run.state == "failed"
    assert [v for _, v in run.metrics()["x"]] == [1]  # what was logged got there first


def test_sigterm_fails_the_loggers_own_run(server: ServerHandle, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import threading, mlbench_metrics
            log = mlbench_metrics.init(new_run="terminated-run", url={server.address!r})
            log.log("x", 1)
            print(log.run_id, flush=True)
            threading.Event().wait()
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        run_id = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
    assert Run.get(run_id, url=server.address).state == "failed"


@pytest.mark.parametrize("name", ["python", "python3"])
def test_a_python_command_runs_with_the_servers_own_interpreter(
    exec_server: ServerHandle, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: ``python`` was looked up in PATH, which may find another interpreter (or none)."""
    other = tmp_path / name
    other.write_text("#!/bin/sh\necho exe another-python\n")
    other.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    run = Run.create(
        unique_name(),
        1,
        custom_image_name="local",
        custom_image_command=f"{name} -c 'import sys; print(\"exe\", sys.executable)'",
        backend="gloo",
        url=exec_server.address,
    )
    run.wait(timeout=60, poll=0.1)
    assert run.state == "finished", run.job_metadata
    assert f"exe {sys.executable}" in run.job_metadata["stdout"]

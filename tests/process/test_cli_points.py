"""``metrics show --follow``, ``plot`` and ``serve``'s page address, as subprocesses."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from mlbench_metrics import ApiClient, MetricsLogger
from mlbench_metrics.server import ServerHandle, serve, spawn

from helpers import create_run

METRIC_FORM = {"name": "loss", "value": "1.5", "date": "2021-01-02 03:04:05", "metadata": "", "cumulative": "False"}


def _cli(*args: str, code: str = "from mlbench_metrics.cli import main; raise SystemExit(main())") -> list[str]:
    return [sys.executable, "-c", code, *args]


def _follow(run_id: int, address: str, *more: str) -> subprocess.Popen[str]:
    """``metrics show RUN --follow`` polling every 0.1 s, its output in pipes."""
    return subprocess.Popen(
        _cli("metrics", "show", str(run_id), "--follow", "--interval", "0.1", "--url", address, *more),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _readline(stream: object, timeout: float = 30.0) -> str:
    """One line from a pipe, waiting on a thread with a deadline (never on luck)."""
    got: list[str] = []
    done = threading.Event()

    def read() -> None:
        got.append(stream.readline())  # type: ignore[attr-defined]
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout), "no line within the timeout"
    return got[0]


def test_follow_every_point_prints_new_points_until_ctrl_c(server: ServerHandle) -> None:
    run_id = create_run(server.url)["id"]
    with ApiClient(url=server.address) as client, MetricsLogger(run_id, client=client, rank=1) as log:
        log.log("loss", 0.5, step=1)
        log.flush()
        proc = _follow(run_id, server.address, "--every-point")
        try:
            assert _readline(proc.stderr).startswith(f"following run {run_id}")
            first = _readline(proc.stdout)
            assert "loss @ 1" in first and "step 1" in first and first.rstrip().endswith("0.5")
            log.log("loss", 0.25, step=2)
            log.log("acc", 0.75, step=2)
            log.flush()
            later = {_readline(proc.stdout).split("  ", 1)[1].strip() for _ in range(2)}
            assert later == {"loss @ 1  step 2  epoch 0  0.25", "acc @ 1  step 2  epoch 0  0.75"}
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err


def test_follow_prints_one_line_per_interval_with_each_series_latest_value(server: ServerHandle) -> None:
    # Was: every point on its own line (4,498 lines in 12 s of a small training script).
    run_id = create_run(server.url)["id"]
    client = ApiClient(url=server.address)
    # No interval tick: what is logged goes in one batch when flushed (or full).
    with client, MetricsLogger(run_id, client=client, rank=1, flush_interval=3600) as log:
        log.log("loss", 0.5, step=1)
        log.log("note", "warming up", step=1)
        log.flush()
        proc = _follow(run_id, server.address)
        try:
            assert _readline(proc.stderr).startswith(f"following run {run_id}")
            first = _readline(proc.stdout)
            assert first.split("  ", 1)[1].strip() == "latest  loss @ 1 = 0.5 (step 1), note @ 1 = warming up (step 1)"
            for step in range(2, 502):  # one batch: one poll sees all of it
                log.log_many({"loss": 1 / step, "acc": step / 1000}, step=step)
            log.flush()
            line = _readline(proc.stdout).split("  ", 1)[1].strip()
            assert line == "+1000 points  acc @ 1 = 0.501 (step 501), loss @ 1 = 0.00199601 (step 501)"
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err and out == ""


def test_follow_against_the_dashboard_prints_a_line_per_interval() -> None:
    with serve(extensions=False) as dashboard_like:
        run_id = create_run(dashboard_like.url)["id"]
        post = f"{dashboard_like.url}/api/metrics/"
        requests.post(post, data=dict(METRIC_FORM, run_id=run_id))
        proc = _follow(run_id, dashboard_like.address)
        try:
            assert _readline(proc.stderr).startswith(f"following run {run_id}")
            assert _readline(proc.stdout).split("  ", 1)[1].strip() == "latest  loss = 1.5"
            dates = ["2021-01-02 03:04:06", "2021-01-02 03:04:07"]
            for date, value in zip(dates, ("2.5", "3.5")):  # may arrive in one poll or two
                requests.post(post, data=dict(METRIC_FORM, run_id=run_id, date=date, value=value))
            lines = [_readline(proc.stdout).split("  ", 1)[1].strip()]
            if lines[0].startswith("+1 point "):
                lines.append(_readline(proc.stdout).split("  ", 1)[1].strip())
            assert lines in (["+2 points  loss = 3.5"], ["+1 point  loss = 2.5", "+1 point  loss = 3.5"])
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err


def test_plot_writes_a_png(server: ServerHandle, tmp_path: Path) -> None:
    image = pytest.importorskip("matplotlib.image", reason="the plot extra is not installed")
    run_id = create_run(server.url)["id"]
    with ApiClient(url=server.address) as client:
        for rank in (0, 1):
            with MetricsLogger(run_id, client=client, rank=rank) as log:
                for step in range(20):
                    log.log("loss", 1 / (step + 1), step=step)
                    log.increment("samples", 8)
                    log.log_many({f"m{k:02d}": step * k for k in range(10)}, step=step)
    out = tmp_path / "run.png"
    done = subprocess.run(
        _cli("plot", str(run_id), "-o", str(out), "--url", server.address), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and out.stat().st_size > 10_000
    assert "wrote" in done.stdout and "12 metrics" in done.stdout
    # Was: with a dozen metrics, tight_layout left the figure's title inside the first panel.
    dark = image.imread(str(out))[:, :, :3].mean(axis=2) < 0.5
    width = dark.shape[1]
    spine = next(y for y in range(dark.shape[0]) if dark[y].sum() > 0.6 * width)  # the first panel's top edge
    middle = dark[:spine, int(0.3 * width) : int(0.7 * width)]  # the title is centred; panel titles are left
    assert middle.any(), "the figure's title is not above the first panel"
    missing = subprocess.run(
        _cli("plot", str(run_id), "--metric", "nope", "-o", str(out), "--url", server.address),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "no metric named nope" in missing.stderr


def test_plot_without_matplotlib_names_the_extra(tmp_path: Path) -> None:
    # matplotlib made unimportable, as on an install without the plot extra.
    code = (
        "import sys; sys.modules['matplotlib'] = None; from mlbench_metrics.cli import main; raise SystemExit(main())"
    )
    done = subprocess.run(
        _cli("plot", "1", "-o", str(tmp_path / "x.png"), "--url", "127.0.0.1:9", code=code),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "mlbench-metrics: error: plot needs matplotlib: pip install 'mlbench-metrics[plot]'"


def test_serve_prints_the_page_address_with_its_token(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        _cli("serve", "--port", "0", "--db", str(tmp_path / "m.db"), "--token", "t0k"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready = _readline(proc.stdout)
        url = ready.rsplit(" ", 1)[1].strip()
        assert _readline(proc.stdout).strip() == f"web UI: {url}/?token=t0k"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_runs_show_prints_the_config(server: ServerHandle) -> None:
    run_id = create_run(server.url)["id"]
    with ApiClient(url=server.address) as client:
        client.set_run_config(run_id, {"lr": 0.1, "optimizer": {"name": "sgd"}}).result()
    shown = subprocess.run(
        _cli("runs", "show", str(run_id), "--url", server.address), capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split("config:\n", 1)[1].splitlines() == ["  lr = 0.1", "  optimizer.name = sgd"]


def test_control_characters_in_names_values_and_config_are_shown_escaped(server: ServerHandle) -> None:
    # A metric named "\x1b[2J" cleared the terminal of whoever ran `metrics show`; an OSC
    # sequence could retitle it. The terminal gets the characters' escapes instead.
    run_id = create_run(server.url)["id"]
    evil = "x\x1b[2J\x1b]0;owned\x07"
    with ApiClient(url=server.address) as client:
        client.post_metric(run_id, evil, "\x1b[31mred").result()
        client.set_run_config(run_id, {evil: evil}).result()
    for command in (["metrics", "show", str(run_id)], ["runs", "show", str(run_id)]):
        shown = subprocess.run(_cli(*command, "--url", server.address), capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
        assert "x\\x1b[2J\\x1b]0;owned\\x07" in shown.stdout


def test_follow_keeps_following_across_a_server_restart(tmp_path: Path) -> None:
    # Was: the first poll while the server restarted ended `--follow` (exit 3), as `tail -f`
    # would not; the web page carries on too.
    server = spawn(str(tmp_path / "m.db"))
    try:
        run_id = create_run(server.url)["id"]
        proc = _follow(run_id, server.address)
        try:
            assert _readline(proc.stderr).startswith(f"following run {run_id}")
            server.kill()
            assert "does not answer" in _readline(proc.stderr)
            server.start()
            requests.post(f"{server.url}/api/metrics/", data=dict(METRIC_FORM, run_id=run_id))
            assert "loss" in _readline(proc.stdout)
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "Traceback" not in err
    finally:
        server.close()

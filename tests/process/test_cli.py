"""Every ``mlbench-metrics`` command end to end, as a subprocess, against the embedded server."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from mlbench_metrics import ApiClient
from mlbench_metrics.server import ServerHandle, serve

from helpers import create_run, port_8080_free, unique_name


def cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlbench_metrics.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error a failed command printed: one line, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("mlbench-metrics: error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_runs_create_list_show_wait_delete(exec_server: ServerHandle) -> None:
    url = ["--url", exec_server.address]
    code = 'print("hello from the run")'
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"
    name = unique_name("cli")
    created = cli("runs", "create", name, "--custom-image", "local", "--command", command, "--json", *url)
    assert created.returncode == 0, created.stderr
    run_id = json.loads(created.stdout)["id"]

    waited = cli("runs", "wait", str(run_id), "--poll", "0.1", "--timeout", "60", *url)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.strip() == f"run {run_id} ({name}) finished"
    assert f"run {run_id} ({name}): finished" in waited.stderr  # progress

    listed = cli("runs", "list", *url)
    assert listed.returncode == 0
    header, rule, *rows = listed.stdout.splitlines()
    assert header.split()[:4] == ["id", "name", "state", "workers"] and set(rule) <= {"-", " "}
    assert any(row.split()[:3] == [str(run_id), name, "finished"] for row in rows)
    assert any(r["id"] == run_id for r in json.loads(cli("runs", "list", "--json", *url).stdout))

    shown = cli("runs", "show", str(run_id), *url)
    assert shown.returncode == 0 and "hello from the run" in shown.stdout
    assert json.loads(cli("runs", "show", str(run_id), "--json", *url).stdout)["job_metadata"]["exit_codes"] == [0]

    deleted = cli("runs", "delete", str(run_id), *url)
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"deleted run {run_id}"
    gone = cli("runs", "show", str(run_id), *url)
    assert gone.returncode == 1 and "404" in one_line_error(gone)


def test_a_failing_run_makes_wait_exit_1(exec_server: ServerHandle) -> None:
    url = ["--url", exec_server.address]
    command = f"{shlex.quote(sys.executable)} -c 'raise SystemExit(2)'"
    created = cli("runs", "create", unique_name("cli"), "--custom-image", "x", "--command", command, "--json", *url)
    run_id = json.loads(created.stdout)["id"]
    waited = cli("runs", "wait", str(run_id), "--poll", "0.1", *url)
    assert waited.returncode == 1 and waited.stdout.strip().endswith("failed")


def test_wait_times_out_with_exit_4(server: ServerHandle) -> None:
    run = create_run(server.url)  # no --exec: it stays initialized
    waited = cli("runs", "wait", str(run["id"]), "--timeout", "0.5", "--poll", "0.1", "--url", server.address)
    assert waited.returncode == 4 and "still initialized" in one_line_error(waited)


def test_usage_errors_exit_2_with_one_line(server: ServerHandle) -> None:
    url = ["--url", server.address]
    bad_name = cli("runs", "create", "Bad Name", "--custom-image", "x", "--command", "true", *url)
    assert bad_name.returncode == 2 and "invalid run name" in one_line_error(bad_name)
    neither = cli("runs", "create", "ok-name", *url)
    assert neither.returncode == 2 and "--image" in one_line_error(neither)
    official = cli("runs", "create", unique_name("cli"), "--image", "PyTorch Cifar-10 ResNet-20", *url)
    assert official.returncode == 0  # without --exec the server records official runs as the dashboard does
    bad_since = cli("metrics", "show", "1", "--since", "yesterday", *url)
    assert bad_since.returncode == 2 and "date" in one_line_error(bad_since)
    assert cli("runs", "frobnicate").returncode == 2  # argparse's own usage error


def test_an_unreachable_server_exits_3(server: ServerHandle) -> None:
    with ApiClient(url=server.address):
        pass
    port = serve()  # a port that was free a moment ago and is closed again
    address = port.address
    port.stop()
    result = cli("runs", "list", "--url", address)
    assert result.returncode == 3
    assert f"nothing answers at {address} (connection refused)" in one_line_error(result)  # not urllib3's pool


def test_metrics_show_and_download(server: ServerHandle, tmp_path: Path) -> None:
    run = create_run(server.url)
    start = dt.datetime.now(dt.timezone.utc)  # the zip keeps only points after the run's creation
    with ApiClient(url=server.address) as client:
        for i in range(10):
            client.post_metric(run["id"], "loss @ 0", 1.0 / (i + 1), date=start + dt.timedelta(seconds=i)).result()
        client.post_metric(run["id"], "acc @ 0", 0.9, date=start + dt.timedelta(hours=1)).result()
    url = ["--url", server.address]
    rid = str(run["id"])

    shown = cli("metrics", "show", rid, *url)
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0] + " " + line.split()[1]: line.split() for line in shown.stdout.splitlines()[2:]}
    assert rows["loss @"][3:6] == ["10", "0.1", "0.1"]  # points, last, min
    as_json = json.loads(cli("metrics", "show", rid, "--json", "--filter", "loss @ 0", "--last-n", "3", *url).stdout)
    assert list(as_json) == ["loss @ 0"] and [p["value"] for p in as_json["loss @ 0"]] == [
        0.125,
        0.1111111111111111,
        0.1,
    ]
    later = (start + dt.timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    since = json.loads(cli("metrics", "show", rid, "--json", "--since", later, *url).stdout)
    assert list(since) == ["acc @ 0"]

    out = tmp_path / "m.csv"
    downloaded = cli("metrics", "download", rid, "--format", "csv", "-o", str(out), *url)
    assert downloaded.returncode == 0 and f"wrote {out}" in downloaded.stdout
    assert "downloading the metrics" in downloaded.stderr  # progress
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(table) == 11 and list(table[0]) == [
        "name",
        "date",
        "step",
        "epoch",
        "rank",
        "value",
        "cumulative",
        "metadata",
    ]

    out = tmp_path / "m.json"
    assert cli("metrics", "download", rid, "--format", "json", "--summarize", "5", "-o", str(out), *url).returncode == 0
    assert len([row for row in json.loads(out.read_text()) if row["name"] == "loss @ 0"]) == 5

    out = tmp_path / "m.zip"
    assert cli("metrics", "download", rid, "-o", str(out), *url).returncode == 0
    with zipfile.ZipFile(out) as z:
        assert len(z.namelist()) == 2
    both = cli("metrics", "download", rid, "--format", "zip", "--filter", "x", *url)
    assert both.returncode == 2 and "zip" in one_line_error(both)


def test_demo_exits_0_and_prints_its_summary() -> None:
    result = cli("demo", "--seconds", "2", timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in ("metric", "count", "last", "min", "max", "train_loss @ 0", "fwd_pass @ 0", "samples_seen @ 0"):
        assert expected in out
    assert "0 dropped" in out and "cost of one logging call" in out and "train_loss" in out
    assert any(ch in out for ch in "▁▂▃▄▅▆▇█")  # the sparkline
    # The README says the demo's server serves the web page too: the demo says where.
    assert re.search(r"web UI: http://127\.0\.0\.1:\d+/#/run/1 ", out), out
    assert "mlbench-metrics demo --url" in out  # and how to keep a run to look at


def test_serve_refuses_exec_on_a_public_address_without_a_token() -> None:
    result = cli("serve", "--host", "0.0.0.0", "--port", "0", "--exec")
    assert result.returncode == 2 and "loopback" in one_line_error(result)


def test_version_and_help() -> None:
    assert cli("--version").stdout.startswith("mlbench-metrics ")
    helped = cli("--help")
    assert helped.returncode == 0 and "exit codes" in helped.stdout


# -- the command line as a new user meets it ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["runs", "list", "--url", "127.0.0.1:99999"], "port out of range"),
        (["--url", "http://[", "runs", "list"], "invalid ipv6 url"),
        (["metrics", "show", "1", "--url", "http://:80"], "names no host"),
        (["serve", "--db", "/nonexistent/x.db", "--port", "0"], "the folder /nonexistent does not exist"),
    ],
)
def test_bad_addresses_and_databases_are_one_line_errors(args: list[str], expected: str) -> None:
    result = cli(*args)  # before: 20-27 lines of traceback
    assert result.returncode == 2 and expected in one_line_error(result).lower()


def test_server_options_work_before_or_after_the_command(server: ServerHandle) -> None:
    run = create_run(server.url)
    outputs = [
        cli("--url", server.address, "--json", "runs", "list"),
        cli("runs", "--url", server.address, "list", "--json"),
        cli("runs", "list", "--json", "--url", server.address),
        cli("--json", "runs", "list", "--url", server.address),
    ]
    for result in outputs:
        assert result.returncode == 0, result.stderr
        assert run["id"] in [r["id"] for r in json.loads(result.stdout)]


def test_without_a_server_the_error_says_how_to_give_one(tmp_path: Path) -> None:
    if not port_8080_free():  # the CLI's fallback address would answer
        pytest.skip("something else listens on 127.0.0.1:8080 on this machine")
    env = {"HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none"), "MLBENCH_METRICS_URL": ""}
    result = cli("runs", "list", env=env)
    message = one_line_error(result)
    assert result.returncode == 3 and "--url" in message and "MLBENCH_METRICS_URL" in message


@pytest.mark.parametrize(
    "args", [["runs", "show", "1", "--lines", "x"], ["runs", "show", "x"], ["metrics", "show", "1", "--last-n", "-2"]]
)
def test_messages_name_no_internals(args: list[str]) -> None:
    result = cli(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert not re.search(r"\b_[a-z]", result.stderr), result.stderr  # was: invalid _non_negative_int value
    assert "expected a whole number" in result.stderr


@pytest.mark.parametrize("command", [["show"], ["download", "--format", "json"]])
def test_a_filter_that_names_no_metric_suggests_the_per_rank_names(
    server: ServerHandle, command: list[str], tmp_path: Path
) -> None:
    run = create_run(server.url)
    with ApiClient(url=server.address) as client:
        for rank in (0, 1):
            client.post_metric(run["id"], f"loss @ {rank}", 0.5).result()
        client.post_metric(run["id"], "acc @ 0", 0.9).result()
    output = ["-o", str(tmp_path / "out")] if command[0] == "download" else []
    result = cli("metrics", *command, str(run["id"]), "--filter", "loss", "--url", server.address, *output)
    message = one_line_error(result)
    assert result.returncode == 1 and "'loss @ 0'" in message and "'loss @ 1'" in message, message
    assert "acc" not in message and not (tmp_path / "out").exists()


def test_runs_wait_says_when_the_server_does_not_run_runs(server: ServerHandle) -> None:
    run = create_run(server.url)  # this server has no --exec: nothing will ever start it
    result = cli("runs", "wait", str(run["id"]), "--poll", "0.2", "--url", server.address, timeout=60)
    message = one_line_error(result)  # before: "initialized" until the timeout, or for ever
    assert result.returncode == 1 and "does not run runs" in message and "--exec" in message


def _start_serve(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], list[str]]:
    """``serve`` in a child; its output up to the line that says how to stop it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlbench_metrics.cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
        env=None if env is None else {**os.environ, **env},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Ctrl-C"):
            break
    assert lines and lines[0].startswith("mlbench-metrics server listening on "), lines
    return proc, lines


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=30) == 0
    if proc.stdout is not None:
        proc.stdout.close()


def test_serve_keeps_its_data_in_a_default_file_and_says_where(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "data")}
    proc, lines = _start_serve(env=env)
    expected = tmp_path / "data" / "mlbench-metrics" / "metrics.db"
    try:
        assert f"database: {expected}" in "".join(lines)
        url = lines[0].rsplit(" ", 1)[1].strip()
        run = create_run(url)
    finally:
        _stop(proc)  # before: a temporary database, deleted here without a word
    assert expected.exists()
    proc, lines = _start_serve(env=env)
    try:
        url = lines[0].rsplit(" ", 1)[1].strip()
        assert [r["id"] for r in requests.get(f"{url}/api/runs/").json()] == [run["id"]]
    finally:
        _stop(proc)


def test_serve_exec_prints_its_token_with_a_ready_url_and_allow_host_admits_a_name(tmp_path: Path) -> None:
    proc, lines = _start_serve("--exec", "--allow-host", "ml-box", "--db", str(tmp_path / "m.db"))
    try:
        url = lines[0].rsplit(" ", 1)[1].strip()
        text = "".join(lines)
        match = re.search(re.escape(url) + r"/\?token=(\S+)", text)
        assert match, text
        token = match.group(1)
        assert f"MLBENCH_METRICS_TOKEN={token}" in text
        assert requests.get(f"{url}/api/runs/").status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert requests.get(f"{url}/api/runs/", headers=auth).status_code == 200
        port = url.rsplit(":", 1)[1]
        assert requests.get(f"{url}/api/runs/", headers={**auth, "Host": f"ml-box:{port}"}).status_code == 200
        assert requests.get(f"{url}/api/runs/", headers={**auth, "Host": "evil.example"}).status_code == 403
        listed = cli("runs", "list", "--url", url, "--token", token)
        assert listed.returncode == 0 and listed.stdout.strip() == "no runs"
    finally:
        _stop(proc)

"""deploy/: the Kubernetes manifests and the container recipe agree with each other and with the server.

They cannot run here (no container engine, no cluster); what can be checked is that they
parse, and that the names they share (image, port, probe paths, environment variables,
secret keys, labels) are the ones the other files and the server use.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import requests

from mlbench_metrics.cli.team import DB_ENV, TOKEN_ENV
from mlbench_metrics.server import ServerHandle
from mlbench_metrics.server.health import PROBE_PATHS

yaml = pytest.importorskip("yaml")  # PyYAML comes with the kubernetes package

DEPLOY = Path(__file__).parent.parent.parent / "deploy"


def _manifests() -> dict[str, Any]:
    found = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[doc["kind"]] = doc
    return found


def test_the_manifests_parse_and_name_one_image_port_and_secret() -> None:
    m = _manifests()
    assert set(m) == {"Deployment", "Service", "Secret"}
    pod = m["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    recipe = (DEPLOY / "Containerfile").read_text()
    assert f"-t {container['image']} " in recipe  # the tag the recipe's build line gives
    (port,) = container["ports"]
    assert f"EXPOSE {port['containerPort']}" in recipe and f'"--port", "{port["containerPort"]}"' in recipe
    assert m["Service"]["spec"]["ports"][0]["targetPort"] == port["name"]
    assert m["Service"]["spec"]["ports"][0]["port"] == 80  # what in-cluster discovery dials
    labels = pod["metadata"]["labels"]
    assert m["Deployment"]["spec"]["selector"]["matchLabels"] == labels == m["Service"]["spec"]["selector"]
    assert m["Deployment"]["spec"]["replicas"] >= 2
    assert container["resources"]["requests"] and container["resources"]["limits"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert set(env) == {DB_ENV, TOKEN_ENV}
    for ref in env.values():
        assert ref["name"] == m["Secret"]["metadata"]["name"] and ref["key"] in m["Secret"]["stringData"]
    workers = container["args"][container["args"].index("--workers") + 1]
    assert int(workers) == int(float(container["resources"]["requests"]["cpu"]))  # a process per core


def test_the_probes_are_paths_the_server_answers_without_a_token(server: ServerHandle) -> None:
    (container,) = _manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    probes = [container["livenessProbe"], container["readinessProbe"]]
    assert {p["httpGet"]["port"] for p in probes} == {container["ports"][0]["name"]}
    assert [p["httpGet"]["path"] for p in probes] == list(PROBE_PATHS)
    for probe in probes:
        answer = requests.get(server.url + probe["httpGet"]["path"], timeout=10)
        assert answer.status_code == 200, probe
    healthcheck = re.search(r"HEALTHCHECK .*(/healthz)", (DEPLOY / "Containerfile").read_text())
    assert healthcheck and healthcheck.group(1) == container["livenessProbe"]["httpGet"]["path"]

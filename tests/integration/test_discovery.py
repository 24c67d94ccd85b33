"""Kubernetes discovery with the real ``kubernetes`` client, pointed at a local fake API.

Out of cluster the client reads a kubeconfig; in cluster it reads the service host and
port from the environment and the token and CA from files, as in a pod. The addresses
the fake API hands out are loopback ones, so nothing ever leaves this machine.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import kubernetes.config.incluster_config
import kubernetes.config.kube_config
import pytest
import trustme

from fakes import KubeApi, k8s_list, k8s_node, k8s_pod, k8s_service
from mlbench_metrics import ApiClient, DiscoveryError
from mlbench_metrics.server import ServerHandle

SELECTOR = "component=master,app=mlbench"
PODS = "/api/v1/namespaces/default/pods"
SERVICES = "/api/v1/services"


def use_kubeconfig(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Point the kubernetes client at ``path``, as ``KUBECONFIG`` would.

    The client reads ``KUBECONFIG`` once, when it is imported; what it reads into is the
    module's default location, so that is what a test sets.
    """
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


def kubeconfig(path: Path, server: str, token: str = "t0k3n") -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: fake\n  cluster:\n    server: {server}\n"
        f"users:\n- name: me\n  user:\n    token: {token}\n"
        "contexts:\n- name: here\n  context:\n    cluster: fake\n    user: me\n"
        "current-context: here\n"
    )
    return path


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeApi]:
    """A fake API server and a kubeconfig (via KUBECONFIG) that points at it."""
    with KubeApi(token="t0k3n") as api:
        use_kubeconfig(monkeypatch, kubeconfig(tmp_path / "kubeconfig", api.url))
        monkeypatch.delenv("MLBENCH_METRICS_URL", raising=False)
        yield api


def out_of_cluster(**kwargs: Any) -> ApiClient:
    return ApiClient(in_cluster=False, **kwargs)


def test_cluster_ip_found_by_label_selector(kube: KubeApi) -> None:
    kube.routes[SERVICES] = k8s_list(
        "ServiceList", [k8s_service("rel-mlbench-master", "ClusterIP", ports=[{"port": 8080}])]
    )
    with out_of_cluster() as client:
        assert client.endpoint == "http://127.0.0.10:8080/api/"
        assert client.port == 8080  # as upstream sets it
    path, query, auth = kube.seen[-1]
    assert path == SERVICES
    assert query == {"labelSelector": [SELECTOR]}
    assert auth == "Bearer t0k3n"


def test_discovered_cluster_ip_reaches_the_dashboard(kube: KubeApi, server: ServerHandle) -> None:
    service = k8s_service("m", "ClusterIP", cluster_ip="127.0.0.1", ports=[{"port": server.port}])
    kube.routes[SERVICES] = k8s_list("ServiceList", [service])
    with out_of_cluster() as client:
        assert client.get_runs().result().status_code == 200


def test_node_port_with_external_ips(kube: KubeApi) -> None:
    ports = [{"port": 443, "nodePort": 30443}, {"port": 80, "nodePort": 30080}]
    service = k8s_service("m", "NodePort", ports=ports, external_ips=["127.0.0.11"])
    kube.routes[SERVICES] = k8s_list("ServiceList", [service])
    with out_of_cluster() as client:
        assert client.endpoint == "http://127.0.0.11:30080/api/"
        assert client.port == 30080  # upstream: the node port of service port 80


def test_node_port_uses_the_nodes_external_ip(kube: KubeApi) -> None:
    kube.routes[SERVICES] = k8s_list(
        "ServiceList", [k8s_service("m", "NodePort", ports=[{"port": 80, "nodePort": 30080}])]
    )
    kube.routes[PODS] = k8s_list("PodList", [k8s_pod("master-0", "127.0.0.20", node="node-7")])
    kube.routes["/api/v1/nodes/node-7"] = k8s_node(
        "node-7", [("InternalIP", "127.0.0.13"), ("ExternalIP", "127.0.0.12")]
    )
    with out_of_cluster() as client:
        assert client.endpoint == "http://127.0.0.12:30080/api/"
        assert client.port == 30080


def test_node_port_falls_back_to_the_internal_ip_with_a_warning(
    kube: KubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    kube.routes[SERVICES] = k8s_list(
        "ServiceList", [k8s_service("m", "NodePort", ports=[{"port": 80, "nodePort": 30080}])]
    )
    kube.routes[PODS] = k8s_list("PodList", [k8s_pod("master-0", "127.0.0.20", node="node-7")])
    kube.routes["/api/v1/nodes/node-7"] = k8s_node("node-7", [("InternalIP", "127.0.0.13")])
    with caplog.at_level(logging.WARNING, logger="mlbench_metrics.client.discovery"), out_of_cluster() as client:
        assert client.endpoint == "http://127.0.0.13:30080/api/"
    assert "InternalIP" in caplog.text


def test_node_port_node_without_addresses(kube: KubeApi) -> None:
    kube.routes[SERVICES] = k8s_list(
        "ServiceList", [k8s_service("m", "NodePort", ports=[{"port": 80, "nodePort": 30080}])]
    )
    kube.routes[PODS] = k8s_list("PodList", [k8s_pod("master-0", "127.0.0.20", node="node-7")])
    kube.routes["/api/v1/nodes/node-7"] = k8s_node("node-7", [("Hostname", "node-7")])
    with pytest.raises(DiscoveryError, match="no ExternalIP or InternalIP"):
        out_of_cluster()


def test_load_balancer_ip_and_hostname(kube: KubeApi) -> None:
    kube.routes[SERVICES] = k8s_list("ServiceList", [k8s_service("m", "LoadBalancer", ingress=[{"ip": "127.0.0.14"}])])
    with out_of_cluster() as client:
        assert client.endpoint == "http://127.0.0.14:80/api/"
        assert client.port == 80
    kube.routes[SERVICES] = k8s_list(
        "ServiceList", [k8s_service("m", "LoadBalancer", ingress=[{"hostname": "lb.invalid"}])]
    )
    with out_of_cluster() as client:
        assert client.endpoint == "http://lb.invalid:80/api/"


def test_load_balancer_without_ingress(kube: KubeApi) -> None:
    kube.routes[SERVICES] = k8s_list("ServiceList", [k8s_service("rel-master", "LoadBalancer")])
    with pytest.raises(DiscoveryError, match="'rel-master' has no ingress"):
        out_of_cluster()


def test_unsupported_service_type(kube: KubeApi) -> None:
    kube.routes[SERVICES] = k8s_list("ServiceList", [k8s_service("m", "ExternalName")])
    with pytest.raises(DiscoveryError, match="ExternalName"):
        out_of_cluster()


def test_no_service_or_several(kube: KubeApi) -> None:
    kube.routes[SERVICES] = k8s_list("ServiceList", [])
    with pytest.raises(DiscoveryError, match="no dashboard service matches 'component=master,app=mlbench'"):
        out_of_cluster()
    kube.routes[SERVICES] = k8s_list(
        "ServiceList", [k8s_service("a", "ClusterIP"), k8s_service("b", "ClusterIP", namespace="other")]
    )
    with pytest.raises(DiscoveryError, match=r"2 services match .*default/a, other/b.*service_name="):
        out_of_cluster()


def test_service_by_name(kube: KubeApi) -> None:
    kube.routes["/api/v1/namespaces/bench/services/rel-mlbench-master"] = k8s_service(
        "rel-mlbench-master", "ClusterIP", ports=[{"port": 9000}], namespace="bench"
    )
    with out_of_cluster(service_name="rel-mlbench-master", k8s_namespace="bench") as client:
        assert client.endpoint == "http://127.0.0.10:9000/api/"
    with pytest.raises(DiscoveryError, match="no service named 'nope' in namespace 'bench'"):
        out_of_cluster(service_name="nope", k8s_namespace="bench")


def test_wrong_credentials_and_unreachable_api(kube: KubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_kubeconfig(monkeypatch, kubeconfig(tmp_path / "bad", kube.url, token="wrong"))
    with pytest.raises(DiscoveryError, match="401"):
        out_of_cluster()
    kube_url = kube.url
    kube.stop()
    use_kubeconfig(monkeypatch, kubeconfig(tmp_path / "gone", kube_url))
    with pytest.raises(DiscoveryError, match="asking the Kubernetes API"):
        out_of_cluster()


def test_missing_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_kubeconfig(monkeypatch, tmp_path / "does-not-exist")
    monkeypatch.delenv("MLBENCH_METRICS_URL", raising=False)
    with pytest.raises(DiscoveryError, match="cannot load the Kubernetes kubeconfig configuration"):
        out_of_cluster()


def test_url_from_the_environment_skips_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLBENCH_METRICS_URL", "127.0.0.1:9999")
    with ApiClient() as client:
        assert client.endpoint == "http://127.0.0.1:9999/api/"
        assert client.port is None  # as upstream: set by discovery only


# -- in cluster -----------------------------------------------------------------------


@pytest.fixture
def in_cluster_kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeApi]:
    """A fake API over TLS, and the environment and files a pod would have."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    with KubeApi(token="pod-token", tls=server_ctx) as api:
        token_file = tmp_path / "token"
        token_file.write_text("pod-token")
        ca_file = tmp_path / "ca.crt"
        ca.cert_pem.write_to_path(str(ca_file))
        monkeypatch.setattr(kubernetes.config.incluster_config, "SERVICE_TOKEN_FILENAME", str(token_file))
        monkeypatch.setattr(kubernetes.config.incluster_config, "SERVICE_CERT_FILENAME", str(ca_file))
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
        monkeypatch.delenv("MLBENCH_METRICS_URL", raising=False)
        yield api


def test_in_cluster_uses_the_master_pods_ip(in_cluster_kube: KubeApi) -> None:
    in_cluster_kube.routes["/api/v1/namespaces/bench/pods"] = k8s_list("PodList", [k8s_pod("master-0", "127.0.0.21")])
    with ApiClient(k8s_namespace="bench") as client:
        assert client.endpoint == "http://127.0.0.21:80/api/"
        assert client.port is None  # upstream sets it only out of cluster
    path, query, auth = in_cluster_kube.seen[-1]
    assert path == "/api/v1/namespaces/bench/pods"
    assert query == {"labelSelector": [SELECTOR]}
    assert auth.lower() == "bearer pod-token"


def test_in_cluster_needs_exactly_one_pod_with_an_ip(in_cluster_kube: KubeApi) -> None:
    in_cluster_kube.routes[PODS] = k8s_list("PodList", [])
    with pytest.raises(
        DiscoveryError,
        match="exactly one dashboard pod matching 'component=master,app=mlbench' in namespace 'default', found 0",
    ):
        ApiClient()
    in_cluster_kube.routes[PODS] = k8s_list("PodList", [k8s_pod("a", "127.0.0.21"), k8s_pod("b", "127.0.0.22")])
    with pytest.raises(DiscoveryError, match=r"found 2 \(a, b\)"):
        ApiClient()
    in_cluster_kube.routes[PODS] = k8s_list("PodList", [k8s_pod("pending", None)])
    with pytest.raises(DiscoveryError, match="'pending' has no IP yet"):
        ApiClient()


def test_in_cluster_outside_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("MLBENCH_METRICS_URL", raising=False)
    with pytest.raises(DiscoveryError, match="in-cluster"):
        ApiClient()


# -- upstream test suites ---------------------------------------------------------------


def test_suites_that_patch_the_upstream_names_keep_working() -> None:
    """mlbench-core's own tests patch these names with mocks; they must still take effect.

    This is the one place mocks are used: it checks that our lookups go through the
    module attributes those suites patch.
    """
    with mock.patch("kubernetes.config.load_kube_config") as load, mock.patch("kubernetes.client.CoreV1Api") as core:
        service = core.return_value.read_namespaced_service.return_value
        service.spec.type = "NodePort"
        service.spec.ports.__getitem__.return_value.node_port = 12345
        core.return_value.list_namespaced_pod.return_value.items.__len__.return_value = 1
        addresses = core.return_value.read_node.return_value.status.addresses
        addresses.__iter__.return_value = [mock.MagicMock(type="ExternalIP", address="127.1.1.1")]
        with mock.patch("concurrent.futures.ThreadPoolExecutor") as pool:
            pool.return_value.submit.return_value.result.return_value.json.return_value = "a"
            client = ApiClient(in_cluster=False, service_name="rel-mlbench-master")
            assert client.endpoint == "http://127.1.1.1:12345/api/"
            assert client.port == 12345  # as upstream sets it
            assert client.get_runs().result().json() == "a"
        load.assert_called_once()
    with mock.patch("kubernetes.config.load_incluster_config"), mock.patch("kubernetes.client.CoreV1Api") as core:
        core.return_value.list_namespaced_pod.return_value.items.__len__.return_value = 1
        core.return_value.list_namespaced_pod.return_value.items.__getitem__.return_value.status.pod_ip = "127.1.1.1"
        assert ApiClient(in_cluster=True).endpoint == "http://127.1.1.1:80/api/"


class IterableOnly:
    """A sequence a test suite might hand out: it can be iterated, nothing else."""

    def __init__(self, items: list[Any]) -> None:
        self._items = items

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)


def _iterable_mock(items: list[Any]) -> mock.MagicMock:
    ports = mock.MagicMock()
    ports.__iter__.return_value = items
    return ports


@pytest.mark.parametrize("make_ports", [IterableOnly, _iterable_mock, iter], ids=["class", "magicmock", "iterator"])
def test_suites_whose_service_ports_are_only_iterable(make_ports: Callable[[list[Any]], Any]) -> None:
    """Upstream read ``next(p.node_port for p in spec.ports if p.port == 80)``: iterating is enough."""
    with mock.patch("kubernetes.config.load_kube_config"), mock.patch("kubernetes.client.CoreV1Api") as core:
        service = core.return_value.read_namespaced_service.return_value
        service.spec.type = "NodePort"
        service.spec.external_ips = ["127.1.1.2"]
        service.spec.ports = make_ports(
            [mock.MagicMock(port=443, node_port=30443), mock.MagicMock(port=80, node_port=30080)]
        )
        with ApiClient(in_cluster=False, service_name="rel-mlbench-master") as client:
            assert client.endpoint == "http://127.1.1.2:30080/api/"
            assert client.port == 30080


def test_upstream_style_mocks_set_the_port_as_upstream_does() -> None:
    """The other service types of mlbench-core's ``tests/test_api.py`` mocks."""
    with mock.patch("kubernetes.config.load_kube_config"), mock.patch("kubernetes.client.CoreV1Api") as core:
        service = core.return_value.read_namespaced_service.return_value
        service.spec.type = "ClusterIP"
        service.spec.cluster_ip = "127.1.1.3"
        service.spec.ports.__getitem__.return_value.port = 8080
        with ApiClient(in_cluster=False, service_name="rel-mlbench-master") as client:
            assert (client.endpoint, client.port) == ("http://127.1.1.3:8080/api/", 8080)
        service.spec.type = "LoadBalancer"
        service.status.load_balancer.ingress.ip = "127.1.1.4"
        with ApiClient(in_cluster=False, service_name="rel-mlbench-master") as client:
            assert (client.endpoint, client.port) == ("http://127.1.1.4:8080/api/", 8080)

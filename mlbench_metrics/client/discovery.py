"""Find the MLBench dashboard through Kubernetes.

In the cluster, the dashboard is the one master pod matching the label selector, on port
80. Outside, it is the master service (found by label selector across namespaces, or by
name), reached according to its type: ClusterIP, NodePort or LoadBalancer. The port is
reported apart as well, because upstream's client sets ``client.port`` from it.

``kubernetes.config.load_incluster_config``, ``kubernetes.config.load_kube_config`` and
``kubernetes.client.CoreV1Api`` are looked up on their modules at call time, so test
suites written for the upstream client, which patch those names, keep working; what they
return is read as loosely as upstream read it (a service's ``spec.ports`` may be any
iterable, or an object that only answers ``[0]``). The
``kubernetes`` package is imported only when discovery runs (it is slow to import).
No threads are started here.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple, Sequence

from ..errors import DiscoveryError

__all__ = ["Discovered", "discover"]

_log = logging.getLogger("mlbench_metrics.client.discovery")


def _k8s_error(what: str, exc: BaseException) -> DiscoveryError:
    status = getattr(exc, "status", None)
    text = str(exc).strip()
    reason = getattr(exc, "reason", None) or (text.splitlines()[0] if text else type(exc).__name__)
    detail = f"HTTP {status}: {reason}" if status else f"{type(exc).__name__}: {reason}"
    return DiscoveryError(f"{what} failed ({detail})")


def _first(items: Any) -> Any:
    """The first element of a list, or the object itself (upstream treated some lists as objects)."""
    if isinstance(items, (list, tuple)):
        return items[0] if items else None
    return items


def _ports(service: Any) -> list[Any]:
    """A service's ports: ``spec.ports`` as a list, whatever iterable or sequence it is.

    The kubernetes client gives a list. Test doubles in suites written for the upstream
    client are often iterable only (a ``MagicMock`` whose ``__iter__`` is set), or answer
    only ``ports[0]`` (a ``MagicMock`` whose ``__getitem__`` is set, where iterating gives
    nothing): both are read as upstream read them.
    """
    ports = service.spec.ports
    if ports is None:
        return []
    try:
        found = list(ports)
    except TypeError:
        found = []
    if not found:
        try:
            found = [ports[0]]
        except (TypeError, IndexError, KeyError):
            return []
    return found


def _port(service: Any, wanted: int | None = None) -> Any:
    """The service port numbered ``wanted``, else the first one."""
    ports = _ports(service)
    if not ports:
        raise DiscoveryError(f"the dashboard service {service.metadata.name!r} exposes no port")
    return next((p for p in ports if wanted is not None and p.port == wanted), ports[0])


class Discovered(NamedTuple):
    """Where the dashboard was found.

    Attributes:
        address: ``host:port``, what ``ApiClient(url=...)`` takes.
        port: the port as upstream's client records it in ``client.port``: out of
            cluster, the service port (ClusterIP, LoadBalancer) or the node port
            (NodePort); in the cluster, None (upstream leaves it unset there).
    """

    address: str
    port: int | None


def discover(
    *,
    in_cluster: bool,
    label_selector: str,
    namespace: str,
    service_name: str | None = None,
    load_config: bool = True,
) -> Discovered:
    """Where the dashboard is, found through the Kubernetes API.

    Args:
        in_cluster: running inside the cluster (use the master pod's IP).
        label_selector: selects the master pod (and the service, out of cluster).
        namespace: where the master pod runs.
        service_name: out of cluster, the master service's name (instead of the selector).
        load_config: load the in-cluster or kubeconfig configuration first.

    Returns:
        The dashboard's ``host:port``, and the port as upstream reports it.

    Raises:
        DiscoveryError: nothing, or more than one thing, matches; the service type is not
            reachable from here; the Kubernetes API cannot be reached or configured.
    """
    import kubernetes.client
    import kubernetes.config

    try:
        if load_config:
            if in_cluster:
                kubernetes.config.load_incluster_config()
            else:
                kubernetes.config.load_kube_config()
        k8s = kubernetes.client.ApiClient()
    except Exception as exc:
        kind = "in-cluster" if in_cluster else "kubeconfig"
        raise DiscoveryError(f"cannot load the Kubernetes {kind} configuration: {exc}") from exc
    try:
        api = kubernetes.client.CoreV1Api(k8s)
        if in_cluster:
            return _in_cluster(api, label_selector, namespace)
        return _out_of_cluster(api, label_selector, namespace, service_name)
    except DiscoveryError:
        raise
    except Exception as exc:
        raise _k8s_error("asking the Kubernetes API for the dashboard", exc) from exc
    finally:
        k8s.close()


def _master_pod(api: Any, label_selector: str, namespace: str) -> Any:
    pods = api.list_namespaced_pod(namespace, label_selector=label_selector).items
    count = len(pods)
    if count != 1:
        names = ", ".join(str(p.metadata.name) for p in pods) if isinstance(pods, list) else ""
        found = f"{count} ({names})" if names else str(count)
        raise DiscoveryError(
            f"expected exactly one dashboard pod matching {label_selector!r} in namespace {namespace!r}, found {found}"
        )
    return pods[0]


def _in_cluster(api: Any, label_selector: str, namespace: str) -> Discovered:
    pod = _master_pod(api, label_selector, namespace)
    ip = pod.status.pod_ip if pod.status is not None else None
    if not ip:
        raise DiscoveryError(f"the dashboard pod {pod.metadata.name!r} has no IP yet")
    return Discovered(f"{ip}:80", None)


def _find_service(api: Any, label_selector: str, namespace: str, service_name: str | None) -> Any:
    if service_name:
        try:
            return api.read_namespaced_service(service_name, namespace)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                raise DiscoveryError(f"no service named {service_name!r} in namespace {namespace!r}") from exc
            raise
    services: Sequence[Any] = api.list_service_for_all_namespaces(label_selector=label_selector).items
    if len(services) == 0:
        raise DiscoveryError(f"no dashboard service matches {label_selector!r} in any namespace")
    if len(services) > 1:
        names = ", ".join(f"{s.metadata.namespace}/{s.metadata.name}" for s in services)
        raise DiscoveryError(
            f"{len(services)} services match {label_selector!r}: {names}; pass service_name= to choose one"
        )
    return services[0]


def _out_of_cluster(api: Any, label_selector: str, namespace: str, service_name: str | None) -> Discovered:
    service = _find_service(api, label_selector, namespace, service_name)
    spec = service.spec
    kind = spec.type
    if kind == "ClusterIP":
        # Reachable only where the cluster network is (a VPN, kubectl port-forward, ...).
        port = _port(service).port
        return Discovered(f"{spec.cluster_ip}:{port}", port)
    if kind == "NodePort":
        node_port = _port(service, wanted=80).node_port
        # Renamed from external_i_ps (what upstream read) in kubernetes client 13.
        external = getattr(spec, "external_ips", None) or getattr(spec, "external_i_ps", None)
        if external and len(external) > 0:
            return Discovered(f"{external[0]}:{node_port}", node_port)
        return Discovered(f"{_node_ip(api, label_selector, namespace)}:{node_port}", node_port)
    if kind == "LoadBalancer":
        port = _port(service).port
        lb = service.status.load_balancer if service.status is not None else None
        ingress = _first(lb.ingress) if lb is not None and lb.ingress is not None else None
        host = (ingress.ip or ingress.hostname) if ingress is not None else None
        if not host:
            raise DiscoveryError(
                f"the LoadBalancer service {service.metadata.name!r} has no ingress IP or hostname yet"
            )
        return Discovered(f"{host}:{port}", port)
    raise DiscoveryError(f"the dashboard service has type {kind!r}; only ClusterIP, NodePort and LoadBalancer work")


def _node_ip(api: Any, label_selector: str, namespace: str) -> str:
    """The external IP of the master pod's node, else its internal IP (with a warning)."""
    pod = _master_pod(api, label_selector, namespace)
    node = api.read_node(pod.spec.node_name)
    external = internal = None
    for address in node.status.addresses or []:
        if address.type == "ExternalIP" and external is None:
            external = address.address
        elif address.type == "InternalIP" and internal is None:
            internal = address.address
    if external:
        return str(external)
    if internal:
        _log.warning(
            "no ExternalIP found for the NodePort service's node %s; trying its InternalIP %s, "
            "which works only where the cluster's internal addresses are reachable",
            pod.spec.node_name,
            internal,
        )
        return str(internal)
    raise DiscoveryError(f"the node {pod.spec.node_name!r} of the dashboard pod has no ExternalIP or InternalIP")

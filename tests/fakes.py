"""Local servers that misbehave on purpose, and a Kubernetes-shaped API server.

* :class:`ScriptedServer` answers each HTTP request as a test's script says: raw bytes
  (a 503 with ``Retry-After``, a 204 followed by a body), a reset, a silent close, or no
  answer at all until the server stops. It records every request and connection.
* :class:`KubeApi` serves Kubernetes-shaped JSON over HTTP or HTTPS, so the real
  ``kubernetes`` client can be pointed at it with a kubeconfig or in-cluster settings.

Both listen on 127.0.0.1 only, on threads they own and join on ``stop()``.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

RESET = "reset"
CLOSE = "close"
HANG = "hang"


@dataclass
class Seen:
    """A request as the scripted server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    connection: int


def http_response(
    status: int, body: bytes | str = b"", headers: dict[str, str] | None = None, *, reason: str = "X"
) -> bytes:
    """A complete HTTP/1.1 answer; ``Content-Length`` is added unless given."""
    data = body.encode() if isinstance(body, str) else body
    head = {"Content-Type": "application/json"}
    if status not in (204, 304):
        head["Content-Length"] = str(len(data))
    head.update(headers or {})
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in head.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


Script = Callable[[Seen, int], Any]


def forward(target: str, seen: Seen) -> bytes:
    """Send ``seen`` on to the real server at ``target`` (``http://host:port``) and
    return its answer as raw bytes: what a proxy script returns to pass a request on."""
    r = requests.request(
        seen.method,
        target + seen.path,
        params={k: v[0] for k, v in seen.query.items()},
        data=seen.body,
        headers={"Content-Type": seen.headers.get("content-type", "application/octet-stream")},
    )
    return http_response(r.status_code, r.content, {"Content-Type": r.headers.get("Content-Type", "")})


class ScriptedServer:
    """An HTTP server on 127.0.0.1 whose answers a test scripts.

    Args:
        script: called with each request and its 0-based number; returns the raw bytes
            to send, or :data:`RESET`, :data:`CLOSE` or :data:`HANG`.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[Seen] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._acceptor = threading.Thread(target=self._accept, name="scripted-server", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn, number), name="scripted-conn", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        rfile = conn.makefile("rb")
        try:
            while not self._stop.is_set():
                line = rfile.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (raw := rfile.readline()) not in (b"\r\n", b"\n", b""):
                    key, _, value = raw.decode().partition(":")
                    headers[key.strip().lower()] = value.strip()
                body = rfile.read(int(headers.get("content-length", "0") or 0))
                parts = urlsplit(target)
                seen = Seen(method, parts.path, parse_qs(parts.query, keep_blank_values=True), headers, body, number)
                with self._lock:
                    self.requests.append(seen)
                    index = len(self.requests) - 1
                    self._arrived.notify_all()
                answer = self.script(seen, index)
                if answer == RESET:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if answer == CLOSE:
                    return
                if answer == HANG:
                    self._stop.wait()
                    return
                conn.sendall(answer)
        except OSError:
            return
        finally:
            rfile.close()
            conn.close()

    def wait_for_requests(self, count: int, timeout: float = 30.0) -> bool:
        """Wait until ``count`` requests have arrived; False if ``timeout`` passes first."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.requests) >= count, timeout)

    def stop(self) -> None:
        """Release hanging answers, close every connection, join every thread."""
        self._stop.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        except OSError:
            pass
        self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._acceptor.join(5)
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- Kubernetes ------------------------------------------------------------------------


def k8s_pod(name: str, ip: str | None, node: str = "node-1", namespace: str = "default") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "mlbench", "component": "master"}},
        "spec": {"nodeName": node, "containers": [{"name": "master", "image": "mlbench/mlbench_master"}]},
        "status": {"podIP": ip, "phase": "Running"},
    }


def k8s_service(
    name: str,
    kind: str,
    *,
    ports: list[dict[str, Any]] | None = None,
    cluster_ip: str = "127.0.0.10",
    external_ips: list[str] | None = None,
    ingress: list[dict[str, str]] | None = None,
    namespace: str = "default",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": kind, "clusterIP": cluster_ip, "ports": ports or [{"port": 80, "protocol": "TCP"}]}
    if external_ips is not None:
        spec["externalIPs"] = external_ips
    status: dict[str, Any] = {"loadBalancer": {}}
    if ingress is not None:
        status["loadBalancer"]["ingress"] = ingress
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec, "status": status}


def k8s_node(name: str, addresses: list[tuple[str, str]]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]}}


def k8s_list(kind: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}


@dataclass
class KubeApi:
    """A Kubernetes API server on 127.0.0.1 that serves fixed JSON per path.

    Attributes:
        routes: path -> JSON body; paths not in it get a Kubernetes 404 ``Status``.
        token: when set, requests must carry ``Authorization: Bearer <token>``.
        seen: ``(path, query, authorization header)`` of each request.
    """

    routes: dict[str, Any] = field(default_factory=dict)
    token: str | None = None
    tls: ssl.SSLContext | None = None
    seen: list[tuple[str, dict[str, list[str]], str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                auth = self.headers.get("Authorization", "")
                api.seen.append((parts.path, parse_qs(parts.query), auth))
                if api.token is not None and auth.lower() != f"bearer {api.token}":
                    self._send(
                        401,
                        {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "status": "Failure",
                            "reason": "Unauthorized",
                            "code": 401,
                        },
                    )
                    return
                if parts.path in api.routes:
                    self._send(200, api.routes[parts.path])
                    return
                self._send(
                    404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
                )

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        scheme = "https" if self.tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-kube-api", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> KubeApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Together:
    """A proxy script: the first ``n`` batch posts are held until all ``n`` are waiting at
    once (proof that a client keeps that many in flight), then everything is forwarded to
    ``target``. A post that waited in vain (the barrier's ``timeout`` passed) is answered
    503 and noted in :attr:`alone`."""

    def __init__(self, n: int, target: str, timeout: float = 15.0) -> None:
        self.alone: list[int] = []
        self._n = n
        self._target = target
        self._barrier = threading.Barrier(n, timeout=timeout)
        self._count = 0
        self._lock = threading.Lock()

    def __call__(self, seen: Seen, index: int) -> bytes:
        if seen.method == "POST" and seen.path.rstrip("/").endswith("/metrics/batch"):
            with self._lock:
                number, self._count = self._count, self._count + 1
            if number < self._n:
                try:
                    self._barrier.wait()
                except threading.BrokenBarrierError:
                    self.alone.append(number)
                    return http_response(503, "{}")
        return forward(self._target, seen)

"""Who may ask: the ``Host``, ``Origin`` and bearer-token rules every request passes first.

A server on 127.0.0.1 is still reachable from every web page the user opens: a page can
post a form to ``http://127.0.0.1:8080/api/runs/`` (a cross-site request), or rebind its
own domain name to 127.0.0.1 and then talk to the server as if same-origin (DNS
rebinding). With ``serve --exec`` either would run commands. So, as Jupyter does:

* ``Host`` must name this server: a loopback name or address (``localhost``,
  ``*.localhost``, ``127.0.0.0/8``, ``::1``), the address the server was bound to, or a
  name given with ``--allow-host`` (``*`` accepts any). A rebound domain fails here.
* ``Origin``, when a browser sends one, must be the server's own (the ``Host`` the
  request was sent to); ``Origin: null`` (sandboxed frames, files) is foreign too.
* With a token, every request carries ``Authorization: Bearer <token>``, except routes
  registered as public: pages whose HTML, CSS and JavaScript carry no data and which read
  the token from ``?token=`` to send it themselves.

Refusals are 403 (401 for the token) with the usual JSON ``{"status", "message"}``.
Non-browser clients (the upstream client, ``curl``) send no ``Origin`` and a loopback
``Host``, so nothing changes for them. No threads, no I/O.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

from ._http import Request, Response
from .parsing import error_response

__all__ = ["AccessPolicy", "is_loopback"]

_ANY_HOST: Final = "*"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is loopback."""
    host = host.strip().lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``Host`` header -> (lowercased name, port or None); None when malformed."""
    try:
        parts = urlsplit("//" + value.strip())
        name = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if not name or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    return name.rstrip("."), port


class AccessPolicy:
    """The Host, Origin and token checks, in one place for every route.

    Args:
        token: the bearer token every non-public request needs, or None.
        allowed_hosts: names (or addresses) accepted in ``Host`` besides loopback ones;
            ``"*"`` accepts any.
        bind_host: the address the server listens on; accepted in ``Host`` too (a
            wildcard such as ``0.0.0.0`` reaches only this machine as a destination).
    """

    def __init__(self, *, token: str | None = None, allowed_hosts: Iterable[str] = (), bind_host: str = "") -> None:
        self.token = token
        self._any_host = any(h.strip() == _ANY_HOST for h in allowed_hosts)
        names = {bind_host.strip().lower().strip("[]")} - {""}  # an address or a name, never with a port
        for given in allowed_hosts:
            split = _split_host(given) if given.strip() != _ANY_HOST else None
            if split is not None:  # "name", "name:port", "10.0.0.1", "[::1]": the name counts
                names.add(split[0].strip("[]"))
        self._names = frozenset(names)

    def refuse(self, request: Request, *, public: bool = False) -> Response | None:
        """The error answer for a request that may not pass, or None when it may.

        Args:
            request: the request, before any route sees it.
            public: the route carries no data (a static page): no token needed. The
                Host and Origin rules still apply.
        """
        host = request.headers.get("host")
        if host is not None and not self._host_allowed(host):
            name = (_split_host(host) or (host[:100], None))[0]
            return error_response(
                403,
                f"Host {host[:100]!r} is not this server's; if you reach it by that name, start it with "
                f"--allow-host {name}",
            )
        origin = request.headers.get("origin")
        if origin is not None and not self._same_origin(origin, host):
            return error_response(
                403, f"cross-origin request from {origin[:100]!r} refused: only this server's own pages may call it"
            )
        if self.token is not None and not public and not self._authorized(request):
            return error_response(
                401,
                "missing or wrong bearer token: this server was started with one (serve printed it); "
                "clients take it as --token or MLBENCH_METRICS_TOKEN",
                headers=[("WWW-Authenticate", 'Bearer realm="mlbench"')],
            )
        return None

    def _host_allowed(self, value: str) -> bool:
        split = _split_host(value)
        if split is None:
            return False
        name = split[0]
        return self._any_host or is_loopback(name) or name.strip("[]") in self._names

    @staticmethod
    def _same_origin(origin: str, host: str | None) -> bool:
        """Whether ``Origin`` is ``http(s)://`` + the ``Host`` the request was sent to."""
        if host is None:
            return False
        try:
            parts = urlsplit(origin.strip())
            scheme = parts.scheme.lower()
            origin_name, origin_port = parts.hostname, parts.port
        except ValueError:
            return False
        if scheme not in _DEFAULT_PORTS or not origin_name or parts.path not in ("", "/"):
            return False
        target = _split_host(host)
        if target is None:
            return False
        target_name, target_port = target
        default = _DEFAULT_PORTS[scheme]
        return origin_name.rstrip(".") == target_name and (origin_port or default) == (target_port or default)

    def _authorized(self, request: Request) -> bool:
        assert self.token is not None
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self.token.encode())

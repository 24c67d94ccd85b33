"""The web UI's static files: the page at ``/`` and its scripts and styles under ``/static/``.

The files are package data (``server/web/``), read once when the server starts. They
carry no data: the page's JavaScript reads everything through the API, sending the
token (when the server has one) as ``Authorization: Bearer``. So these routes need no
token, and only these: :func:`is_public` says which paths they are. A ``?token=`` in
the page's address is kept by the browser for this server's origin and removed from the
address bar at once (see ``web/js/api.js``).

Answers carry a Content-Security-Policy that allows scripts, styles, images and
connections from this server only, so nothing is fetched from outside and an injected
tag could not run even if a value were ever shown unescaped. No threads are started here.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Callable, Final

from ._http import Request, Response
from .parsing import error_response

__all__ = ["Pages", "is_public", "page_url"]

_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
_SECURITY_HEADERS: Final = [
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
]
_STATIC: Final = re.compile(r"/static/(?P<path>[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*)")


def is_public(path: str) -> bool:
    """Whether ``path`` is one of the page's static files, which need no token."""
    return path == "/" or _STATIC.fullmatch(path) is not None


def page_url(base_url: str, token: str | None = None) -> str:
    """The address to open in a browser; with a token, one that logs the browser in once."""
    return f"{base_url}/?token={token}" if token else f"{base_url}/"


def _load() -> dict[str, tuple[bytes, str]]:
    """Every file under ``web/`` by its path there, with its content type."""
    files: dict[str, tuple[bytes, str]] = {}
    root = resources.files(__package__ or "mlbench_metrics.server").joinpath("web")
    stack = [("", root)]
    while stack:
        prefix, folder = stack.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                stack.append((f"{prefix}{entry.name}/", entry))
                continue
            suffix = entry.name[entry.name.rfind(".") :] if "." in entry.name else ""
            files[prefix + entry.name] = (entry.read_bytes(), _TYPES.get(suffix, "application/octet-stream"))
    return files


class Pages:
    """Serves ``GET /`` and ``GET /static/<path>`` from the package's ``web/`` folder."""

    def __init__(self) -> None:
        self._files = _load()

    def routes(self) -> list[tuple[re.Pattern[str], dict[str, Callable[..., Response]]]]:
        """``(path pattern, {method: handler})`` pairs for :class:`~.routes.App`."""
        return [(re.compile("/"), {"GET": self.index}), (_STATIC, {"GET": self.static})]

    def _file(self, path: str) -> Response:
        found = self._files.get(path)
        if found is None:
            return error_response(404, f"no such file: /static/{path[:100]}")
        body, content_type = found
        return Response(200, body, content_type, list(_SECURITY_HEADERS))

    def index(self, request: Request) -> Response:
        """``GET /``: the single page; it routes by the address's ``#`` part."""
        return self._file("index.html")

    def static(self, request: Request, path: str) -> Response:
        """``GET /static/<path>``: a script, style sheet or image of the page."""
        return self._file(path)

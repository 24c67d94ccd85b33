"""What every ``mlbench-metrics`` command shares: exit codes, one-line errors, the client, progress.

The command modules (``main.py``, ``runs.py``, ``sync.py``, ``points.py``) import from here, never from each
other's internals. No threads.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from ..env import ENV_URL, env_str
from ..errors import ApiTimeout, DiscoveryError, TransportError

if TYPE_CHECKING:
    from ..client.api import ApiClient

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CliError",
    "describe_discovery_error",
    "describe_transport_error",
    "open_client",
    "print_json",
    "progress",
    "progress_done",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_TIMEOUT: Final = 4
EXIT_INTERRUPTED: Final = 130


class CliError(Exception):
    """A failure reported as one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@contextmanager
def open_client(args: argparse.Namespace) -> Iterator[ApiClient]:
    """An :class:`ApiClient` for the global options (``--url``, ``--token``, discovery); closed after."""
    from ..client.api import ApiClient  # imported when needed: --help and --version stay fast

    client = ApiClient(
        url=args.url,
        token=args.token,
        in_cluster=args.in_cluster,
        k8s_namespace=args.namespace,
        service_name=args.service,
        strict=True,
    )
    try:
        yield client
    finally:
        client.close()


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout."""
    print(json.dumps(data, indent=2, default=str))


def progress(text: str) -> None:
    """A progress line on stderr: redrawn in place on a terminal, else one line per call."""
    if sys.stderr.isatty():
        print(f"\r{text}\033[K", end="", file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


def progress_done() -> None:
    """End a progress line redrawn in place."""
    if sys.stderr.isatty():
        print(file=sys.stderr)


# -- errors people can act on ---------------------------------------------------------------


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps (causes, contexts, ``reason``s and arguments)."""
    stack, seen = [exc], set()
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        for sub in (getattr(e, "reason", None), e.__cause__, e.__context__, *getattr(e, "args", ())):
            if isinstance(sub, BaseException):
                stack.append(sub)


def _why(exc: BaseException) -> str:
    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "the host name does not resolve"
        if isinstance(cause, ConnectionResetError):
            return "the connection was reset"
        if isinstance(cause, OSError) and cause.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "no route to the host"
    return "no answer in time" if isinstance(exc, ApiTimeout) else "the connection failed"


def describe_transport_error(exc: TransportError) -> str:
    """ "nothing answers at 127.0.0.1:8080 (connection refused)" rather than urllib3's pool message."""
    try:
        parts = urlsplit(exc.url)
        where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    except ValueError:
        where = exc.url
    why = _why(exc)
    if why == "no answer in time" and exc.sent:
        return f"the server at {where} did not answer in time"
    hint = "; is `mlbench-metrics serve` running there?" if why == "connection refused" else ""
    return f"nothing answers at {where} ({why}){hint}"


def describe_discovery_error(exc: DiscoveryError, args: argparse.Namespace) -> str:
    """Without a URL, discovery failing usually means none was given: say how to give one."""
    if getattr(args, "url", None) or env_str(ENV_URL):
        return str(exc)
    return (
        f"no server given: pass --url HOST:PORT (for example --url 127.0.0.1:8080 for `mlbench-metrics serve`) "
        f"or set {ENV_URL}; to find the MLBench dashboard in Kubernetes instead, configure kubectl ({exc})"
    )

"""What every ``mlbench-metrics`` command shares: exit codes, one-line errors, the client, progress.

The command modules (``main.py``, ``runs.py``, ``sync.py``, ``points.py``) import from here, never from each
other's internals. No threads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..env import ENV_URL, env_str
from ..errors import DiscoveryError, describe_transport_error

if TYPE_CHECKING:
    from ..client.api import ApiClient

__all__ = [
    "DEFAULT_URL",
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
    "server_url",
    "unreachable_hint",
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


DEFAULT_URL: Final = "127.0.0.1:8080"
"""Where ``mlbench-metrics serve`` listens by default, and so where a command looks when
nothing (``--url``, ``$MLBENCH_METRICS_URL``, a Kubernetes configuration) says otherwise."""


def server_url(args: argparse.Namespace) -> str | None:
    """The server a command talks to: ``--url``, else ``$MLBENCH_METRICS_URL``, else None
    (Kubernetes discovery) when Kubernetes is configured here, else :data:`DEFAULT_URL`
    (``args.url_defaulted`` then says so, for the message when nothing answers there)."""
    url: str | None = args.url or env_str(ENV_URL)
    if url or args.in_cluster or _kubernetes_configured():
        return url
    args.url_defaulted = True
    return DEFAULT_URL


def _kubernetes_configured() -> bool:
    """In a pod, or a kubeconfig file (``$KUBECONFIG``'s, else ``~/.kube/config``) exists."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p] or ["~/.kube/config"]
    return any(Path(p).expanduser().is_file() for p in paths)


def unreachable_hint(args: argparse.Namespace) -> str:
    """What to add to "nothing answers at ..." when the address was the default."""
    if not getattr(args, "url_defaulted", False):
        return ""
    return (
        f" (no --url, ${ENV_URL} or Kubernetes configuration was given, so {DEFAULT_URL} was tried: start "
        "`mlbench-metrics serve` there, or pass --url HOST:PORT)"
    )


@contextmanager
def open_client(args: argparse.Namespace) -> Iterator[ApiClient]:
    """An :class:`ApiClient` for the global options (``--url``, ``--token``, discovery); closed after."""
    from ..client.api import ApiClient  # imported when needed: --help and --version stay fast

    client = ApiClient(
        url=server_url(args),
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


def describe_discovery_error(exc: DiscoveryError, args: argparse.Namespace) -> str:
    """Without a URL, discovery failing usually means none was given: say how to give one."""
    if getattr(args, "url", None) or env_str(ENV_URL):
        return str(exc)
    return (
        f"no server given: pass --url HOST:PORT (for example --url 127.0.0.1:8080 for `mlbench-metrics serve`) "
        f"or set {ENV_URL}; to find the MLBench dashboard in Kubernetes instead, configure kubectl ({exc})"
    )

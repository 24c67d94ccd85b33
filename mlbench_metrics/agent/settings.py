"""What a delivery agent is told: where the log is, where to deliver, and how.

The training process writes :class:`AgentSettings` as one JSON line on the agent's
standard input (not its command line: the token would show in ``ps``). No threads.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..client.api import ApiClient
from ..client.retry import RetryPolicy
from ..env import ENV_AGENT_LINGER, env_float
from ..logger.settings import LoggerConfig

__all__ = ["PROTOCOL", "AgentSettings"]

PROTOCOL: Final = 1
"""The version of the settings and of the status area an agent understands."""

_LINGER: Final = 600.0


@dataclass(frozen=True)
class AgentSettings:
    """Everything an agent needs, as plain data.

    Attributes:
        path: the writer directory whose log it delivers.
        run_id: the run the records belong to.
        url: the server's root (``http://host:port[/path]``).
        token: a bearer token, if any.
        timeouts: connect and read timeouts of its client.
        retry: its client's retry policy, as the policy's fields.
        batch_size, flush_interval, max_in_flight, max_buffer, shutdown_timeout: the
            logger's, for the agent's dispatcher.
        linger: seconds it keeps trying without progress after the training process is gone.
        adopt: deliver what dead processes of the same run left in the spool root too.
        version: :data:`PROTOCOL`.
    """

    path: str
    run_id: int
    url: str
    token: str | None
    timeouts: tuple[float, float]
    retry: dict[str, Any]
    batch_size: int
    flush_interval: float
    max_in_flight: int
    max_buffer: int
    shutdown_timeout: float
    linger: float
    adopt: bool = True
    version: int = PROTOCOL

    @classmethod
    def of(cls, path: Path, config: LoggerConfig, run_id: int, client: ApiClient, token: str | None) -> AgentSettings:
        """The settings for delivering ``path`` as a logger with ``config`` and ``client`` would.

        The client's endpoint, timeouts and retry policy are taken; a session of its own
        (certificates, proxies) cannot be: the agent makes its own from the environment.
        """
        retry = {f.name: getattr(client.retry_policy, f.name) for f in dataclasses.fields(RetryPolicy)}
        retry.pop("sleep", None)
        return cls(
            path=str(path),
            run_id=run_id,
            url=client.endpoint.removesuffix("/").removesuffix("/api"),
            token=token,
            timeouts=(client.timeouts.connect, client.timeouts.read),
            retry=retry,
            batch_size=config.batch_size,
            flush_interval=config.flush_interval,
            max_in_flight=config.max_in_flight,
            max_buffer=config.max_buffer,
            shutdown_timeout=config.shutdown_timeout,
            linger=env_float(ENV_AGENT_LINGER, _LINGER),
        )

    def to_json(self) -> str:
        """One line of JSON."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> AgentSettings:
        """The settings a training process sent.

        Raises:
            ValueError: the text is not settings of this :data:`PROTOCOL`.
        """
        try:
            fields = json.loads(text)
            if fields.get("version") != PROTOCOL:
                raise ValueError(f"protocol {fields.get('version')!r}, this agent speaks {PROTOCOL}")
            fields["timeouts"] = tuple(fields["timeouts"])
            return cls(**fields)
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not agent settings: {exc}") from None

    def client(self) -> ApiClient:
        """A client for the server, as the training process's was configured."""
        return ApiClient(
            url=self.url,
            token=self.token,  # None: MLBENCH_METRICS_TOKEN, as the trainer's own client
            timeout=self.timeouts,
            retry=RetryPolicy(**self.retry),
        )

"""A server that writes its answer in several segments (as Django's runserver) is not slowed.

Such a server holds the body back until the client ACKs the headers; on a kept-alive
connection the client's kernel delays that ACK by ~40 ms. The client asks for prompt ACKs
(``TCP_QUICKACK``) after each request it sends: that is the mechanism asserted here, per
request, on the kept-alive connection; the speed itself is measured in
``benchmarks/client_throughput.py`` (about 44 ms per request before, under 1 ms after).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from mlbench_metrics import ApiClient, Metric
from segmented import SegmentedServer

QUICKACK = getattr(socket, "TCP_QUICKACK", None)
pytestmark = pytest.mark.skipif(QUICKACK is None, reason="TCP_QUICKACK is Linux's")


@pytest.fixture
def quickacks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The file numbers of the sockets on which TCP_QUICKACK was switched on, one per call."""
    calls: list[int] = []
    real = socket.socket.setsockopt

    def spy(self: socket.socket, level: int, option: int, *value: object) -> None:
        if level == socket.IPPROTO_TCP and option == QUICKACK:
            calls.append(self.fileno())
        real(self, level, option, *value)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "setsockopt", spy)
    yield calls


@pytest.mark.parametrize("segments", [2, 3])
def test_each_request_on_a_kept_alive_connection_asks_for_prompt_acks(quickacks: list[int], segments: int) -> None:
    with SegmentedServer(segments) as server, ApiClient(url=server.address, max_workers=1) as client:
        for i in range(5):
            assert client.post_metric(1, "loss @ 0", i).result().status_code == 201
            assert client.get_run(1).result().status_code == 200
        assert server.stored == 5
    assert len(quickacks) >= 10, "every request must ask for prompt ACKs of its answer"
    assert len(set(quickacks)) == 1, "the connection is kept alive (pooling is not given up)"


def test_batch_posts_on_the_lean_path_ask_for_prompt_acks(quickacks: list[int], server: object) -> None:
    from helpers import create_run

    url = server.url  # type: ignore[attr-defined]
    run = create_run(url)
    with ApiClient(url=url, max_workers=1) as client:
        for i in range(3):
            result = client.post_metrics(run["id"], [Metric("x", i)]).result()
            assert result.ok and result.stored == 1
    assert len(quickacks) >= 3

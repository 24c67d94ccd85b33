"""``sync`` against live delivery, to a dashboard-like server (issue 21, item 2).

The server answers in several segments as Django's ``runserver`` does and spends ``--work``
seconds per metric post (``tests/segmented.py``); it has no batch endpoint, so both sides
send single posts. Measured in the same run:

* live: ``--ranks`` processes, each a ``MetricsLogger(aggregate="off")`` logging
  ``--records`` records at once and flushing: records stored per second, all ranks;
* sync: the same number of records left in ``--ranks`` writer directories (as dead
  processes leave them), delivered by ``mlbench-metrics sync``: records per second.

Target: sync at least as fast as live delivery.

    python benchmarks/sync_rate.py [--ranks 2] [--records 2000] [--work 0.015]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from segmented import SegmentedServer

from _common import verdict, write_results
from helpers import spool_batches

RANK = textwrap.dedent(
    """
    import sys
    from mlbench_metrics import MetricsLogger
    url, rank, n, spool = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    with MetricsLogger(1, url=url, rank=rank, aggregate="off", spool_dir=spool) as log:
        for i in range(n):
            log.log("x", i)
        assert log.flush(3600), log.stats
    """
)


def live(address: str, ranks: int, records: int) -> float:
    with tempfile.TemporaryDirectory() as spool:
        start = time.perf_counter()
        procs = [
            subprocess.Popen([sys.executable, "-c", RANK, address, str(r), str(records), spool]) for r in range(ranks)
        ]
        assert all(p.wait() == 0 for p in procs)
        return ranks * records / (time.perf_counter() - start)


def synced(server: SegmentedServer, ranks: int, records: int) -> float:
    with tempfile.TemporaryDirectory() as root:
        for r in range(ranks):
            spool_batches(Path(root), 1, f"{server.url}/api/", r * records, records // 1000, 1000)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "mlbench_metrics.cli", "sync", root], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return ranks * records / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--records", type=int, default=2000, help="records per rank (a multiple of 1,000)")
    parser.add_argument("--work", type=float, default=0.015, help="the server's seconds per metric post")
    args = parser.parse_args()
    with SegmentedServer(work=args.work) as server:
        rate_live = live(server.address, args.ranks, args.records)
        rate_sync = synced(server, args.ranks, args.records)
    ratio = rate_sync / rate_live
    print(f"{args.ranks} ranks x {args.records:,} records, server {args.work * 1000:.0f} ms per post, records/s:")
    print(f"  live delivery (aggregate='off'):  {rate_live:8,.0f}")
    print(f"  sync of the same, left on disk:   {rate_sync:8,.0f}  = {ratio:.2f}x -> {verdict(ratio, 1.0)} (>= 1x)")
    write_results("sync_rate", {**vars(args), "live": rate_live, "sync": rate_sync, "ratio": ratio})


if __name__ == "__main__":
    main()

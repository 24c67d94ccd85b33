"""``python -m mlbench_metrics.server [serve options]``: the same as ``mlbench-metrics serve``.

The command line owns the options; the server package never imports it (that would
make the circle cli -> server -> cli).
"""

import sys

from ..cli import main

raise SystemExit(main(["serve", *sys.argv[1:]]))

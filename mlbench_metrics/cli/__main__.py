"""``python -m mlbench_metrics.cli [command ...]``: the same as ``mlbench-metrics``."""

import sys

from .main import main

sys.exit(main())

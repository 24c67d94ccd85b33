"""``python -m mlbench_metrics.server [serve options]``: run the embedded server."""

from . import main

raise SystemExit(main())

"""``python -m benchmarks prepare|run ...``: the benchmarks' command line."""

import sys

from benchmarks.cli import main

sys.exit(main())

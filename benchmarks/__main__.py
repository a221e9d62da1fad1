"""``python -m benchmarks prepare|run ...``: the same commands as ``loka bench``."""

import sys

from benchmarks.cli import main

sys.exit(main())

"""``python -m loka_client``: the same as the ``loka-client`` command."""

import sys

from loka_client.cli import main

sys.exit(main())

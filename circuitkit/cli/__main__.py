"""``python -m circuitkit.cli``: the same as the ``circuitkit`` command."""

import sys

from circuitkit.cli.entry import main

sys.exit(main())

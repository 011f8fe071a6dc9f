"""``python -m peftkit``: the ``peftkit`` command line."""

import sys

from peftkit.cli import main

sys.exit(main())

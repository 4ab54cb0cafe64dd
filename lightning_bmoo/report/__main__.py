"""``python -m lightning_bmoo.report``: the ``bmoo-report`` command (:mod:`.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m mmo_operator.cli``: the same as the ``mmo`` command."""

import sys

from mmo_operator.cli import main

sys.exit(main())

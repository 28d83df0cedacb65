"""``python -m annealvi_lib``: see :mod:`annealvi_lib.cli`."""

import sys

from .cli import main

sys.exit(main())

"""``python -m mmadapter.cli``: the console script."""

import sys

from mmadapter.cli import main

sys.exit(main())

"""``python export.py`` / ``mmadapter export``: one parser and one error contract, both defined in
:mod:`mmadapter.cli` (this module only names them for ``export.py``)."""

from __future__ import annotations

import sys

from mmadapter.cli import build_export_parser, export_main

main = export_main

__all__ = ["build_export_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())

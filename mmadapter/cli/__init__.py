"""The ``mmadapter`` console script and ``python export.py``: subcommands (:mod:`.commands`) with checked
argument types (:mod:`.arguments`), all run under one error contract (:mod:`.contract`)."""

from __future__ import annotations

from collections.abc import Sequence

from mmadapter.cli.commands import build_export_parser, build_parser
from mmadapter.cli.contract import run


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


def export_main(argv: Sequence[str] | None = None) -> int:
    """``python export.py ...``: the same arguments and contract as ``mmadapter export ...``."""
    return run(build_export_parser(), argv)



__all__ = ["build_export_parser", "build_parser", "export_main", "main"]

"""Argument types of the command line: checked at parse time, so a bad value never reaches expensive work."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from mmadapter.cli.contract import UsageError
from mmadapter.errors import MMAdapterError

SEED_RANGE = (0, 2**32 - 1)  # what numpy and torch generators accept




def _int_in(text: str, lo: int, hi: int | None, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < lo or (hi is not None and value > hi):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_in(text, 1, None, "a whole number >= 1")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def seed_int(text: str) -> int:
    return _int_in(text, *SEED_RANGE, f"a seed in {SEED_RANGE[0]}..{SEED_RANGE[1]}")


def template_text(text: str) -> str:
    from mmadapter.runtime.labels import check_template

    try:
        return check_template(text)
    except MMAdapterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def device_name(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``; whether a GPU is there is checked when the command runs."""
    name = text.strip().lower()
    if name == "cpu" or name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")


def check_device(device: str) -> None:
    if device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is visible here")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA GPUs")


def existing_file(path: Path | None, flag: str) -> None:
    if path is not None and not path.is_file():
        raise UsageError(f"{flag} {path}: " + ("is a folder, not a file" if path.is_dir() else "file not found"))



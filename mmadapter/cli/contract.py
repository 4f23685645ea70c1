"""The command line's one error contract (:func:`run`), shared by every subcommand and ``python export.py``:

- a problem with what the user gave or with their machine (an :class:`MMAdapterError`, any
  ``OSError``, safetensors' and PIL's own errors, ONNX Runtime rejecting an input, a bad argument)
  is ONE line ``error: ...`` on stderr and exit status 2, never a traceback;
- Ctrl-C exits 130 and SIGTERM 143, after the command's own cleanup ran (both arrive as exceptions
  derived from ``BaseException``, so every ``try/finally`` and ``except BaseException`` cleans up).
  Signals are recorded as well as raised (:mod:`mmadapter.interrupts`): a command that returns after a
  library swallowed the exception still ends with 130/143, and finished work is put in place only if no
  signal came;
- anything else is a bug of ours: one line naming it, exit status 1 (``MMADAPTER_DEBUG=1`` shows
  the traceback).

Arguments are checked before any expensive work (models, embeddings, exports).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from mmadapter import interrupts
from mmadapter.errors import MMAdapterError
from mmadapter.files import first_line
from mmadapter.interrupts import Terminated

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class UsageError(MMAdapterError):
    """A command line argparse could not parse, or an argument value out of range."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors raised (one line, exit 2 through :func:`run`) instead of printing
    the usage and exiting from deep inside."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


# -- the error contract ----------------------------------------------------------------------------------


def _is_user_fault(exc: BaseException) -> bool:
    """Errors of libraries we call that mean "this input or this machine cannot be used", not a bug:
    safetensors' SafetensorError, PIL's DecompressionBombError, ONNX Runtime's input errors."""
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    return (name in {"SafetensorError", "DecompressionBombError", "UnidentifiedImageError"}
            or module.startswith("onnxruntime") or isinstance(exc, MemoryError))


def _one_line_warnings(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                       file: Any = None, line: str | None = None) -> None:
    print(f"warning: {first_line(Exception(str(message)))}", file=file or sys.stderr)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run the chosen command under the error contract (module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    previous_showwarning = warnings.showwarning
    warnings.showwarning = _one_line_warnings
    # Libraries log retries and fallbacks (huggingface_hub, open_clip) over many lines; the command
    # reports what matters in its own lines. MMADAPTER_DEBUG=1 shows them.
    quiet_logs = not os.environ.get("MMADAPTER_DEBUG")
    if quiet_logs:
        logging.disable(logging.CRITICAL)
    try:
        with interrupts.raising():
            try:
                args = parser.parse_args(argv)
            except SystemExit as exc:  # --help / --version printed their text
                return exc.code if isinstance(exc.code, int) else EXIT_OK
            func: Callable[[argparse.Namespace], int] = args.func
            code = func(args)
            interrupts.check()  # a signal whose exception something along the way caught and went on from
            late = interrupts.too_late()
            if late is not None:
                what = "interrupted" if late == signal.SIGINT else "terminated"
                print(f"warning: {what} while the finished result was put in place; it is complete and was kept",
                      file=sys.stderr)
            return code
    except BrokenPipeError:  # `mmadapter predict ... | head`: the reader chose to stop reading
        return EXIT_OK
    except (MMAdapterError, OSError) as exc:
        print(f"error: {_describe(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted (nothing half-written was left behind)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("error: terminated (nothing half-written was left behind)", file=sys.stderr)
        return EXIT_TERMINATED
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        hint = _missing_install(exc, parser, argv)
        if hint is not None:
            print(f"error: {hint}", file=sys.stderr)
            return EXIT_USER_ERROR
        if os.environ.get("MMADAPTER_DEBUG"):
            raise
        if _is_user_fault(exc):
            print(f"error: {_describe(exc)}", file=sys.stderr)
            return EXIT_USER_ERROR
        print(f"error: internal error ({type(exc).__name__}: {first_line(exc)}); please report it, with the "
              "traceback from MMADAPTER_DEBUG=1", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    finally:
        warnings.showwarning = previous_showwarning
        if quiet_logs:
            logging.disable(logging.NOTSET)
        _flush_stdout()


# Top-level modules of the optional installs (pyproject.toml's extras): a serving install has none of the first.
_EXTRA_OF_MODULE = {**dict.fromkeys(("torch", "torchvision", "open_clip", "safetensors", "tqdm", "onnx", "onnxscript"),
                                    "train"), "onnxruntime": "runtime"}
# Commands that build with torch and then run ONNX Runtime.
_NEEDS_TRAIN_AND_RUNTIME = frozenset({"export", "demo"})


def _missing_install(exc: BaseException, parser: argparse.ArgumentParser, argv: Sequence[str]) -> str | None:
    """One line naming the install a command needs, for an import of a module that an extra provides."""
    module = (getattr(exc, "name", None) or "").split(".")[0] if isinstance(exc, ModuleNotFoundError) else ""
    extra = _EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    words = [a for a in argv if not a.startswith("-")]
    # The export parser (`python export.py`) has no subcommand: it is the export command itself.
    subcommand = (words[0] if words else "") if parser.prog == "mmadapter" else "export"
    command = f"{parser.prog} {words[0]}" if parser.prog == "mmadapter" and words else parser.prog
    # Export (and the demo, which exports) validates its graphs with ONNX Runtime after building them with
    # torch: it needs both installs, whichever one is missing now, so the hint names both at once.
    if subcommand in _NEEDS_TRAIN_AND_RUNTIME:
        what, extras = "the training install and ONNX Runtime", "train,runtime"
    else:
        what, extras = ("the training install" if extra == "train" else "ONNX Runtime"), extra
    return f"`{command}` needs {what} ({module} is not installed): pip install 'mmadapter[{extras}]'"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MMAdapterError):
        return first_line(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    if isinstance(exc, MemoryError):
        return "out of memory (the input is too large for this machine)"
    return first_line(exc)


def _flush_stdout() -> None:
    # `mmadapter predict ... | head` closes the pipe early: that is not an error worth a traceback.
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass



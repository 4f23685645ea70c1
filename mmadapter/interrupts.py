"""SIGINT and SIGTERM while a command runs: raised as exceptions *and* recorded, so that a signal wins
even when the code it lands in catches the exception.

A Python signal handler raises in whatever frame the main thread is running. Deep inside a library
(torch.export and ONNX tracing try one capture path, catch what it raised, and try the next) that
exception can be caught and the work goes on as if nothing happened. So the handler also records the
signal, and long pipelines call :func:`check` between steps; the owned-folder helper checks once more
before it puts anything in place, and the CLI's contract checks when a command returns. A recorded
signal is raised again there as :class:`KeyboardInterrupt` (exit 130) or :class:`Terminated` (143).

:func:`committing` is the one place where signals wait: the renames that put finished work in place
run with SIGINT and SIGTERM blocked, after a last check, so that a run is either wholly in place or
not at all. A signal that arrives during those renames comes too late to undo them; it is consumed
and remembered (:func:`too_late`), and the command reports that it finished.

Torch-free: the serving runtime's commands use it too.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

STOPPING = (signal.SIGINT, signal.SIGTERM)


class Terminated(BaseException):  # noqa: N818 - named like KeyboardInterrupt, its sibling
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C."""


_received: list[int] = []  # the signals recorded since the command started, first first
_late: list[int] = []  # the signals that arrived while finished work was being put in place


def exception_for(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def record(signum: int) -> BaseException:
    """Note ``signum``; returns the exception to raise for it."""
    _received.append(signum)
    return exception_for(signum)


def received() -> int | None:
    """The first stopping signal recorded and not yet cleared, if any."""
    return _received[0] if _received else None


def check() -> None:
    """Raise the recorded signal's exception, if one came (whoever caught its first raise)."""
    if _received:
        raise exception_for(_received[0])


def too_late() -> int | None:
    """A signal that arrived while finished work was put in place (it could not stop it)."""
    return _late[0] if _late else None


def clear() -> None:
    _received.clear()
    _late.clear()


def _handler(signum: int, frame: object) -> None:
    raise record(signum)


def _unraisable(previous: Callable[[Any], object]) -> Callable[[Any], object]:
    """A signal that lands in a weakref callback or a ``__del__`` raises where Python cannot propagate
    it: Python prints "Exception ignored in ..." and a traceback, and goes on. The signal is recorded
    (and raised again at the next check), so that report is noise on the one-line stderr."""
    def hook(unraisable: Any) -> object:
        if isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)) and _received:
            return None
        return previous(unraisable)

    return hook


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """While the block runs, SIGTERM (and SIGINT, unless it is ignored: a job started in the background
    inherits SIGINT ignored, and stays deaf to it) raise and are recorded; nothing recorded outlives it."""
    clear()
    if threading.current_thread() is not threading.main_thread():  # a test harness's thread: hands off
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOPPING}
    wanted = [s for s in STOPPING if s == signal.SIGTERM or previous[s] is signal.default_int_handler]
    for s in wanted:
        signal.signal(s, _handler)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _unraisable(previous_hook)
    try:
        yield
    except BaseException as exc:
        # A library that caught the signal's exception may fail later with an error of its own (an
        # exporter wraps it in "export failed"): the signal is what ended the run.
        if _received and not isinstance(exc, (KeyboardInterrupt, Terminated)):
            raise exception_for(_received[0]) from None
        raise
    finally:
        for s in wanted:
            signal.signal(s, previous[s])
        sys.unraisablehook = previous_hook
        clear()


@contextlib.contextmanager
def committing() -> Iterator[None]:
    """Put finished work in place inside this block: a signal recorded before it stops the run here;
    during it, SIGINT and SIGTERM wait (the renames complete or roll back as a whole); one that came
    meanwhile is consumed afterwards and remembered by :func:`too_late`, unless the block failed, when
    it is raised (signals win over errors)."""
    check()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING)
    failed = True
    try:
        yield
        failed = False
    finally:
        pending = [s for s in STOPPING if s in signal.sigpending()]
        for s in pending:
            signal.sigwait([s])  # consumed while still blocked: its handler would raise after the renames
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if pending and failed:
            raise record(pending[0])  # a signal wins over the error it interrupted
        _late.extend(pending)


__all__ = ["STOPPING", "Terminated", "check", "clear", "committing", "exception_for", "raising", "received",
           "record", "too_late"]

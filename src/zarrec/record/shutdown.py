"""What happens to open recorders when the process stops before closing them.

Every open :class:`~zarrec.Recorder` registers itself here (as anything with
``close(reason)``: the registry needs no import of the recorder). While one is open:

- SIGTERM, when the process has no handler of its own, raises ``SystemExit(143)`` in the
  main thread, so ``finally`` blocks and context managers run, as Ctrl-C
  (``KeyboardInterrupt``) already does;
- at interpreter exit, every recorder still open is closed: its staged steps are
  written and its store is marked interrupted, with the reason;
- a SIGTERM that comes while a recorder closes (a launcher such as torchrun stops the other
  ranks when one fails) waits until the store is marked, then stops the process.

``kill -9`` runs nothing: the store keeps its last commit (README, "What survives a crash").

The threads a recorder starts (its writer, and zarr's I/O threads when the recorder is the
first to use zarr) block SIGINT and SIGTERM, so that the kernel delivers those to the main
thread or to a thread started before (``import torch`` starts one). A signal that lands on
another thread is acted upon when the main thread next runs Python code: at once in a
training loop, only on return from a long wait in C (a ``time.sleep``, a device sync).
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Protocol


class Closable(Protocol):
    """What the registry closes: an open recorder."""

    def close(self, reason: str | None = None) -> None: ...


_open: dict[int, Closable] = {}  # strong references: an unclosed recorder still holds steps to write
_previous_sigterm: object = None
_received: str | None = None  # the signal that is stopping the process
_closing = 0  # recorders closing now: a SIGTERM waits for them
_deferred: int | None = None  # a SIGTERM that came while they closed


def register(recorder: Closable) -> None:
    _open[id(recorder)] = recorder
    _install_sigterm()


def unregister(recorder: Closable) -> None:
    _open.pop(id(recorder), None)
    if not _open:
        _restore_sigterm()


@contextlib.contextmanager
def closing(recorder: Closable) -> Iterator[None]:
    """While ``recorder`` closes, a SIGTERM is held back; it is unregistered once closed.

    Unregistering last keeps this module's SIGTERM handler in place throughout: restored to the
    default action, a SIGTERM would kill the process before the store says why it stopped.
    """
    with _sigterm_held():
        try:
            yield
        finally:
            unregister(recorder)


@contextlib.contextmanager
def _sigterm_held() -> Iterator[None]:
    """A SIGTERM that comes inside stops the process on the way out (unless an exception is
    already on its way: the process is stopping then)."""
    global _closing, _deferred
    _closing += 1
    try:
        yield
    finally:
        _closing -= 1
    if _deferred is not None and not _closing:
        signum, _deferred = _deferred, None
        raise SystemExit(128 + signum)


def received_signal() -> str | None:
    """The name of the signal that is stopping the process (SIGTERM), if one is."""
    return _received


def stop_reason(exc: BaseException | None) -> str:
    """Why a recording stopped early, for the store's status: the signal or the exception."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by SIGINT (Ctrl-C)"
    if _received and (exc is None or isinstance(exc, SystemExit)):
        return f"terminated by {_received}"
    if exc is not None and not isinstance(exc, SystemExit):
        return f"{type(exc).__name__}: {exc}"
    return "the process exited without closing the recorder"


def close_open_recorders() -> None:
    """Close every recorder still open in this process, marking its store interrupted.

    Runs at interpreter exit; call it yourself after a failed run in a notebook, where the
    process lives on and the failed run's recorder would otherwise keep the store locked.
    """
    reason = stop_reason(getattr(sys, "last_exc", None) or getattr(sys, "last_value", None))
    with _sigterm_held():  # a SIGTERM waits until every store is marked
        for recorder in list(_open.values()):
            try:
                recorder.close(reason=reason)
            except Exception as error:  # report and go on: the other stores must be closed too
                print(f"zarrec: error: {error}", file=sys.stderr)


# Before the interpreter shuts down the thread pools that zarr writes through, which happens
# ahead of ordinary atexit functions: threading's own exit hooks run first, latest first.
getattr(threading, "_register_atexit", atexit.register)(close_open_recorders)


_STOPPING_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def signals_stay_with_the_main_thread() -> Iterator[None]:
    """Threads started inside block SIGINT and SIGTERM (they inherit this thread's mask)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a signal that came meanwhile is delivered now


def _on_sigterm(signum: int, frame: object) -> None:
    global _received, _deferred
    _received = signal.Signals(signum).name
    if _closing:
        _deferred = signum
        return
    raise SystemExit(128 + signum)


def _install_sigterm() -> None:
    global _previous_sigterm
    if _previous_sigterm is not None or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        _previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)


def _restore_sigterm() -> None:
    global _previous_sigterm
    if _previous_sigterm is not None and threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, _previous_sigterm)
        _previous_sigterm = None

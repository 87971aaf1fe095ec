"""Where a step's device work runs, and how the writer waits for it.

Per step the capture queues work on the device that holds the values: copies into host
staging, the health statistics. The training thread only queues it; whoever reads the result
(the writer thread, once per part of a chunk) waits for a *marker* placed after it:

- on an accelerator (CUDA, MPS, any ``torch.accelerator`` device), :class:`OnTheDevice`: the
  work's kernels are queued on the device's current stream as they are called, copies into
  host memory are non-blocking, and a marker is an event of that device. The stream's order
  keeps the live tensors as they were until the work has read them;
- on a CPU, :class:`OnAWorkerThread`: the work runs on a thread of its own, in order, the way
  a stream runs kernels; a marker is that thread reaching it. The training thread calls
  :meth:`~OnAWorkerThread.drain` where the live tensors are about to change (the optimizer's
  next step), which returns at once when the work is done, as it is after a forward and a
  backward;
- :class:`Immediate`: the work runs when it is queued (a CPU recording of values that their
  caller may change right after).

Nothing here synchronises the training thread with a device.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import torch

from zarrec.record import shutdown

Work = Callable[[], None]


def _done() -> None:
    """A marker of work already done."""


class Immediate:
    """Work runs on the calling thread when queued; markers have nothing to wait for."""

    def run(self, work: Work) -> None:
        work()

    def marker(self) -> Callable[[], None]:
        return _done

    def drain(self) -> None:
        """Nothing is pending."""

    def close(self) -> None:
        """Nothing to stop."""


class OnTheDevice(Immediate):
    """Work whose kernels ``device`` runs in its stream's order; a marker is an event of it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def marker(self) -> Callable[[], None]:
        event = torch.Event(device=self.device)
        event.record()
        return event.synchronize


class OnAWorkerThread:
    """Work run in order on a thread of its own (a CPU's stream). An exception in the work is
    raised on the training thread by its next :meth:`run` or :meth:`drain`; the work queued
    after it is skipped, its markers are reached."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Work | threading.Event | None] = queue.SimpleQueue()
        self._pending = 0  # work queued and not finished (changed under _lock)
        self._lock = threading.Condition(threading.Lock())  # (not reentrant: cheaper, taken twice a step)
        self.error: BaseException | None = None
        with shutdown.signals_stay_with_the_main_thread():
            self._thread = threading.Thread(target=self._work, name=name, daemon=True)
            self._thread.start()

    def run(self, work: Work) -> None:
        if self.error is not None:
            self._raise()
        self._put(work)

    def marker(self) -> Callable[[], None]:
        reached = threading.Event()
        self._put(reached)
        return reached.wait

    def drain(self) -> None:
        """Return when every queued work is done."""
        if self._pending == 0 and self.error is None:  # (the common case, without the lock)
            return
        with self._lock:
            self._lock.wait_for(lambda: self._pending == 0)
        self._raise()

    def close(self) -> None:
        """Finish the queued work and stop the thread (an error of the work is raised)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()

    def _put(self, item: Work | threading.Event) -> None:
        with self._lock:
            self._pending += 1
        self._queue.put(item)

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _work(self) -> None:
        failed = False
        while (item := self._queue.get()) is not None:
            try:
                if isinstance(item, threading.Event):
                    item.set()
                elif not failed:
                    item()
            except BaseException as error:  # handed to the training thread
                failed, self.error = True, error
            finally:
                with self._lock:
                    self._pending -= 1
                    self._lock.notify_all()


def accelerator_of(values: object) -> torch.device | None:
    """The device of the first tensor among ``values`` that does not live on the CPU, if any."""
    for value in values:
        if isinstance(value, torch.Tensor) and value.device.type != "cpu":
            return value.device
    return None


def pinned_memory_for(device: torch.device | None) -> bool:
    """Whether host memory can be pinned for ``device`` here (CUDA; other accelerators where
    their backend gives pinned memory): copies from it into pinned memory do not block."""
    if device is None:
        return False
    try:
        torch.empty(1, pin_memory=True)
    except RuntimeError:
        return False
    return True

"""Where a step's device work runs: a CPU's worker thread keeps the order, its markers and its
errors as a device's stream would."""

from __future__ import annotations

import threading

import pytest
import torch

from zarrec.record.device_queue import (
    Immediate,
    OnAWorkerThread,
    accelerator_of,
    pinned_memory_for,
)


def test_a_worker_thread_runs_work_in_order_and_its_markers_wait_for_what_came_before():
    queue, done, release = OnAWorkerThread("test-queue"), [], threading.Event()
    queue.run(lambda: release.wait(5))
    queue.run(lambda: done.append(1))
    reached = queue.marker()
    queue.run(lambda: done.append(2))
    assert done == []  # (the first work is still waiting)
    release.set()
    reached()
    assert done[:1] == [1]
    queue.drain()
    assert done == [1, 2]
    queue.close()


def test_an_error_in_queued_work_is_raised_by_the_next_call_and_the_work_after_it_is_skipped():
    queue, done = OnAWorkerThread("test-queue"), []
    queue.run(lambda: 1 / 0)
    queue.run(lambda: done.append("skipped"))
    reached = queue.marker()
    reached()  # (a marker is reached even after a failure: the writer waiting on it is not stuck)
    with pytest.raises(ZeroDivisionError):
        queue.drain()
    assert done == []
    queue.close()


def test_work_on_the_cpu_runs_now_and_host_memory_is_pinned_only_for_an_accelerator():
    done = []
    Immediate().run(lambda: done.append(1))
    assert done == [1] and Immediate().marker()() is None
    assert accelerator_of([1.0, torch.zeros(2)]) is None and pinned_memory_for(None) is False

"""The writers, thread and process: order, waiting, and a failure that never blocks the producer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from zarrec import WriterError, contract
from zarrec.chunk import Block, Chunk
from zarrec.store import RunStore
from zarrec.writer import ThreadWriter
from zarrec.writer_process import ProcessWriter, _WriterProcess, shared_memory


def make_store(path) -> RunStore:
    store = RunStore.create(path)
    store.create_variable("x", (3,), ("x_dim0",), 2, {}, contract.default_compressor())
    return store


def start_writer(kind: str, store: RunStore, path) -> tuple[ThreadWriter | ProcessWriter, list[np.ndarray]]:
    """A writer of ``kind`` with two slabs of two steps of ``x``, as a recorder makes them."""
    writer = ThreadWriter(store) if kind == "thread" else ProcessWriter(store, str(path))
    slabs = []
    for _ in range(2):
        if kind == "thread":
            memory = np.zeros(24, dtype=np.uint8)
            writer.add_slab(memory)
        else:
            mapping, fd = shared_memory(24)
            memory = np.frombuffer(mapping, dtype=np.uint8)
            writer.add_slab(memory, fd)
            os.close(fd)
        slabs.append(memory.view(np.float32).reshape(2, 3))
    return writer, slabs


def chunk(slab: int, steps: list[int]) -> Chunk:
    return Chunk(np.array(steps), slab, (Block("x", 0, 2, (3,), "float32"),))


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_chunks_are_written_in_order_and_released(tmp_path, kind):
    path = tmp_path / "run.zarr"
    store = make_store(path)
    writer, slabs = start_writer(kind, store, path)
    released = []
    free = threading.Semaphore(2)
    for start in (0, 2, 4):
        free.acquire()  # a slab is reused only once it is released, as in a recorder
        slab = (start // 2) % 2
        slabs[slab][:] = np.arange(start, start + 2)[:, None]
        writer.submit(chunk(slab, [start, start + 1]), lambda s=start: (released.append(s), free.release()))
    writer.wait()
    assert released == [0, 2, 4] and store.last_step == 5
    writer.close()
    assert writer.error is None and store.rows == 6  # picked up from the writer process
    stored = zarr.open_group(path, mode="r")["x"][:]
    np.testing.assert_array_equal(stored, np.repeat(np.arange(6.0)[:, None], 3, axis=1))


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_after_a_failure_chunks_are_released_but_not_written(tmp_path, kind):
    path = tmp_path / "run.zarr"
    store = make_store(path)
    writer, _ = start_writer(kind, store, path)
    released = []
    # A block the array does not have: the write fails, in the writer.
    writer.submit(Chunk(np.array([0]), 0, (Block("y", 0, 2, (3,), "float32"),)), lambda: released.append(0))
    writer.submit(chunk(1, [1]), lambda: released.append(1))
    writer.close()
    assert isinstance(writer.error, KeyError) and "y" in str(writer.error)
    assert released == [0, 1] and store.rows == 0


def test_a_writer_process_that_dies_releases_everything_and_says_so(tmp_path):
    path = tmp_path / "run.zarr"
    store = make_store(path)
    writer, _ = start_writer("process", store, path)
    writer.submit(chunk(0, [0, 1]), lambda: None)
    writer.wait()
    os.kill(_WriterProcess.shared().process.pid, signal.SIGKILL)
    released = threading.Event()
    writer.submit(chunk(1, [2, 3]), released.set)
    assert released.wait(10)
    assert isinstance(writer.error, WriterError) and "writer process exited unexpectedly" in str(writer.error)
    writer.close()  # returns: nothing is left to wait for
    assert store.rows == 2 and store.last_step == 1  # what was committed before stays
    new_store = make_store(tmp_path / "next.zarr")
    next_writer, _ = start_writer("process", new_store, tmp_path / "next.zarr")  # a new writer process
    next_writer.close()
    assert next_writer.error is None


KILLED_TRAINING = """
import sys, torch
from zarrec import Recorder
recorder = Recorder(sys.argv[1], chunk_steps=2)
for step in range(4):
    recorder.record(step, x=torch.full((3,), float(step)))
recorder.flush(wait=True)
print("committed", flush=True)
recorder.record(4, x=torch.full((3,), 4.0))  # half a chunk: staged, never committed
input()
"""


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (exited, not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def test_the_writer_process_exits_with_a_killed_training_process_leaving_the_committed_steps(tmp_path):
    path = tmp_path / "run.zarr"
    training = subprocess.Popen([sys.executable, "-c", KILLED_TRAINING, str(path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    assert training.stdout.readline().strip() == "committed"
    (writer_pid,) = [
        int(pid) for task in Path(f"/proc/{training.pid}/task").iterdir() for pid in (task / "children").read_text().split()
    ]
    assert b"zarrec.writer_process" in Path(f"/proc/{writer_pid}/cmdline").read_bytes()
    training.kill()
    training.wait()
    deadline = time.monotonic() + 10
    while running(writer_pid):
        assert time.monotonic() < deadline, "the writer process outlived its training process"
        time.sleep(0.05)
    ds = xr.open_zarr(path)  # a consistent prefix: the committed steps, nothing of the staged ones
    np.testing.assert_array_equal(ds.step, [0, 1, 2, 3])
    np.testing.assert_array_equal(ds.x.values[:, 0], [0, 1, 2, 3])

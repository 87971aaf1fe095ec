"""ChunkWriter: order, waiting, and a failure that never blocks the producer."""

from __future__ import annotations

import threading

import numpy as np
import zarr

from zarrec import contract
from zarrec.chunk import Block, Chunk
from zarrec.store import RunStore
from zarrec.writer import ChunkWriter


def make_store(path) -> RunStore:
    store = RunStore.create(path)
    store.create_variable("x", (3,), ("x_dim0",), 2, {}, contract.default_compressor())
    return store


def start_writer(store: RunStore) -> tuple[ChunkWriter, list[np.ndarray]]:
    """A writer with two slabs of two steps of ``x``, as a recorder makes them."""
    writer = ChunkWriter(store)
    slabs = []
    for _ in range(2):
        memory = np.zeros(24, dtype=np.uint8)
        writer.add_slab(memory)
        slabs.append(memory.view(np.float32).reshape(2, 3))
    return writer, slabs


def chunk(slab: int, steps: list[int]) -> Chunk:
    return Chunk(np.array(steps), slab, (Block("x", 0, 2, (3,), "float32"),))


def test_chunks_are_written_in_order_and_released(tmp_path):
    path = tmp_path / "run.zarr"
    store = make_store(path)
    writer, slabs = start_writer(store)
    released = []
    free = threading.Semaphore(2)
    for start in (0, 2, 4):
        free.acquire()  # a slab is reused only once it is released, as in a recorder
        slab = (start // 2) % 2
        slabs[slab][:] = np.arange(start, start + 2)[:, None]
        writer.submit(chunk(slab, [start, start + 1]), lambda s=start: (released.append(s), free.release()))
    writer.wait()
    assert released == [0, 2, 4] and store.rows == 6 and store.last_step == 5
    writer.close()
    assert writer.error is None
    stored = zarr.open_group(path, mode="r")["x"][:]
    np.testing.assert_array_equal(stored, np.repeat(np.arange(6.0)[:, None], 3, axis=1))


def test_after_a_failure_chunks_are_released_but_not_written(tmp_path):
    store = make_store(tmp_path / "run.zarr")
    writer, _ = start_writer(store)
    released = []
    # A block the array does not have: the write fails, in the writer.
    writer.submit(Chunk(np.array([0]), 0, (Block("y", 0, 2, (3,), "float32"),)), lambda: released.append(0))
    writer.submit(chunk(1, [1]), lambda: released.append(1))
    writer.close()
    assert isinstance(writer.error, KeyError) and "y" in str(writer.error)
    assert released == [0, 1] and store.rows == 0

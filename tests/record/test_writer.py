"""ChunkWriter: order, waiting, and a failure that never blocks the producer."""

from __future__ import annotations

import numpy as np
import zarr

from zarrec.store import contract
from zarrec.store.run_store import RunStore
from zarrec.record.writer import Chunk, ChunkWriter


def make_store(path) -> RunStore:
    store = RunStore.create(path)
    store.create_variable("x", (), (), 2, {}, contract.default_compressor())
    return store


def test_chunks_are_written_in_order_and_released(tmp_path):
    store = make_store(tmp_path / "run.zarr")
    writer = ChunkWriter(store)
    released = []
    for start in (0, 2, 4):
        steps = np.arange(start, start + 2)
        values = {"x": steps.astype(np.float32)}
        writer.submit(Chunk(steps, lambda v=values: v, release=lambda s=start: released.append(s)))
    writer.wait()
    assert released == [0, 2, 4] and store.rows == 6
    writer.close()
    assert writer.error is None
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "run.zarr", mode="r")["x"][:], np.arange(6))


def test_after_a_failure_chunks_are_released_but_not_written(tmp_path):
    store = make_store(tmp_path / "run.zarr")
    writer = ChunkWriter(store)
    released = []

    def fail():
        raise OSError("device went away")

    writer.submit(Chunk(np.array([0]), fail, release=lambda: released.append(0)))
    writer.submit(Chunk(np.array([1]), lambda: {"x": np.zeros(1, np.float32)}, release=lambda: released.append(1)))
    writer.close()
    assert isinstance(writer.error, OSError)
    assert released == [0, 1] and store.rows == 0

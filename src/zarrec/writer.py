"""The background thread that compresses and writes staged chunks, in order.

It knows nothing of what is recorded: it receives :class:`~zarrec.chunk.Chunk` objects
(rows of a slab of host memory, plus their step labels), writes them through
:meth:`zarrec.store.RunStore.write` and :meth:`~zarrec.store.RunStore.commit`, and calls
each chunk's ``release`` whether the write succeeded or not, so the producer never waits
forever on a writer that has failed. The first failure is kept in :attr:`ChunkWriter.error`
for the producer to raise in its own thread.

A thread, not a process: a writer process with shared-memory staging was built and measured
against it, and cost as much on a fast step and more on a large one (benchmarks/README.md,
"The writer: thread or process").
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from zarrec.chunk import Chunk, Float32Scratch, float32_values
from zarrec.store import RunStore


class ChunkWriter:
    """Writes :class:`~zarrec.chunk.Chunk` objects to a :class:`RunStore` from one daemon thread, in order."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.error: BaseException | None = None
        self.written_bytes = 0  # of values (as float32), and the seconds spent writing them
        self.writing_seconds = 0.0
        self._slabs: list[np.ndarray] = []
        self._scratch = Float32Scratch()  # float32 conversions, reused chunk after chunk
        # Unbounded: the producer bounds memory by the number of slabs it owns.
        self._queue: queue.Queue[tuple[Chunk, Callable[[], None]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"zarrec-writer[{store.name}]", daemon=True)
        self._thread.start()

    def add_slab(self, memory: np.ndarray) -> int:
        """Make the slab ``memory`` (uint8) known to the writer; chunks name it by the number returned."""
        self._slabs.append(memory)
        return len(self._slabs) - 1

    def submit(self, chunk: Chunk, release: Callable[[], None]) -> None:
        """Queue a chunk for writing; returns at once. ``release`` hands its slab back to the producer."""
        self._queue.put((chunk, release))

    def wait(self) -> None:
        """Block until every chunk submitted so far is written (or has failed)."""
        self._queue.join()

    def close(self) -> None:
        """Write everything queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            chunk, release = item
            try:
                if self.error is None:
                    start = time.perf_counter()
                    if chunk.ready is not None:
                        chunk.ready()
                    values = float32_values(chunk, self._slabs[chunk.slab], self._scratch)
                    self.store.write(values, chunk.starts)
                    if chunk.commits:
                        self.store.commit(chunk.steps)
                    self.writing_seconds += time.perf_counter() - start
                    self.written_bytes += sum(v.nbytes for v in values.values())
            except BaseException as exc:  # kept for the producer thread, which raises it
                self.error = exc
            finally:
                release()
                self._queue.task_done()

"""The background thread that compresses and writes whole step-chunks.

It knows nothing of what is recorded: it receives :class:`Chunk` objects (rows of
numpy arrays plus their step labels), writes them in order through
:meth:`zarrec.store.run_store.RunStore.write` and
:meth:`~zarrec.store.run_store.RunStore.commit`, and hands each chunk back through its
``release`` callback whether the write succeeded or not, so the producer never
waits forever on a writer that has failed. The first failure is kept in
:attr:`ChunkWriter.error` for the producer to raise in its own thread.

A thread, not a process: a writer process with shared-memory staging was built and measured
against it, and cost as much on a fast step and more on a large one (benchmarks/README.md,
"The writer: thread or process").
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from zarrec.errors import WriterError
from zarrec.record.ranks import Ranks, SumsOverRanks
from zarrec.store.run_store import RunStore


@dataclass
class Chunk:
    """Rows to write: ``values()[name][i]`` belongs to step ``steps[i]``.

    ``values`` is called in the writer thread, so the producer can leave work to it
    (waiting for an accelerator's copies, converting to float32). A large step-chunk comes
    in parts: ``values()[name]`` then begins at row ``starts[name]`` of the array's first
    non-step dim, and only the last part ``commits`` the steps.
    """

    steps: np.ndarray
    values: Callable[[], dict[str, np.ndarray]]
    release: Callable[[], None] = lambda: None  # hands the staging memory back to the producer
    starts: dict[str, int] = field(default_factory=dict)
    commits: bool = True


class ChunkWriter:
    """Writes :class:`Chunk` objects to a :class:`RunStore` from one daemon thread, in order.

    In a sharded run (``ranks``) every rank's writer writes its own shards of a chunk, then the
    ranks agree that all of them did (one all-reduce a chunk) before rank 0 commits it; a rank
    that failed makes every rank's writer fail, so none goes on waiting for it. The values of
    ``over_ranks`` (:class:`~zarrec.record.ranks.SumsOverRanks`) are each rank's addends: held
    back until that all-reduce has summed them over the ranks, then written by rank 0 as what
    they finish to. ``shapes``: each variable's shape at one step.
    """

    def __init__(self, store: RunStore, ranks: Ranks | None = None, over_ranks: SumsOverRanks | None = None,
                 shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
        self.store = store
        self.ranks = ranks
        self.over_ranks = over_ranks or SumsOverRanks((), dict)
        self.shapes = shapes or {}
        self.error: BaseException | None = None
        self.written_bytes = 0  # of values (as float32), and the seconds spent writing them
        self.writing_seconds = 0.0
        # Unbounded: the producer bounds memory by the number of staging buffers it owns.
        self._queue: queue.Queue[Chunk | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"zarrec-writer[{store.name}]", daemon=True)
        self._thread.start()

    def submit(self, chunk: Chunk) -> None:
        """Queue a chunk for writing; returns at once."""
        self._queue.put(chunk)

    def wait(self) -> None:
        """Block until every chunk submitted so far is written (or has failed)."""
        self._queue.join()

    def close(self) -> None:
        """Write everything queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        agreeing = self.ranks is not None  # until the ranks have agreed on a failure
        names = self.over_ranks.names
        addends: dict[str, np.ndarray] = {}  # of over_ranks, held until the chunk commits
        while (chunk := self._queue.get()) is not None:
            start = time.perf_counter()
            try:
                if self.error is None:
                    values = chunk.values()
                    addends.update({name: np.array(values.pop(name), dtype=np.float64) for name in names if name in values})
                    self.store.write(values, chunk.starts)
                    self.written_bytes += sum(v.nbytes for v in values.values())
            except BaseException as exc:  # kept for the producer thread, which raises it
                self.error = exc
            try:
                summed = {}
                if chunk.commits and agreeing:
                    shapes = [(len(chunk.steps), *self.shapes[name]) for name in names]
                    held = [addends.get(name, np.zeros(shape)).reshape(-1) for name, shape in zip(names, shapes)]
                    ok, sums = self.ranks.agree_summing(self.error is None, np.concatenate([np.zeros(0), *held]))
                    parts = np.split(sums, np.cumsum([math.prod(shape) for shape in shapes])[:-1]) if names else []
                    summed = {name: part.reshape(shape) for name, part, shape in zip(names, parts, shapes)}
                    if not ok:
                        agreeing = False
                        self.error = self.error or WriterError(f"another rank could not write its rows of {self.store.name}")
                if chunk.commits and self.error is None:
                    if summed and self.ranks.writes_whole_values:
                        self.store.write({name: np.asarray(value, dtype=np.float32)
                                          for name, value in self.over_ranks.finish(summed).items()})
                    self.store.commit(chunk.steps)
                self.writing_seconds += time.perf_counter() - start
            except BaseException as exc:
                agreeing = False  # the group is broken: a rank has gone
                self.error = self.error or exc
            finally:
                if chunk.commits:
                    addends.clear()
                chunk.release()
                self._queue.task_done()

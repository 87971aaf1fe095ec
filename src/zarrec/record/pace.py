"""The writer's pace: whether training waits for the background writer, and a warning that
says how to record less when it does."""

from __future__ import annotations

import time
import warnings

from zarrec.errors import ZarrecWarning
from zarrec.record.staging import human_size
from zarrec.record.writer import ChunkWriter
from zarrec.store import contract


class WriterPace:
    """Times each chunk from its first slab taken to its hand-over, and the part of it the
    training thread spent waiting for a free slab; warns once when that part is more than
    :data:`~zarrec.store.contract.SLOW_WRITER_FRACTION` of the chunk's time."""

    def __init__(self, store_name: str, step_bytes: int) -> None:
        self.store_name = store_name
        self.step_bytes = step_bytes  # of a recorded step, as float32
        self._chunk_began: float | None = None  # when the chunk being filled began
        self._waited = 0.0  # seconds spent waiting for a free slab since the last chunk was handed over
        self._warned = False

    def slab_wanted(self) -> float:
        """A slab is wanted now (the chunk begins, if it has not); returns the time."""
        now = time.perf_counter()
        if self._chunk_began is None:
            self._chunk_began = now
        return now

    def waited_since(self, start: float) -> None:
        """The training thread waited for a slab from ``start`` until now."""
        self._waited += time.perf_counter() - start

    def check(self, rows: int, writer: ChunkWriter) -> None:
        """A chunk of ``rows`` steps was handed over: warn once if training waited for the writer
        too long over it, naming the writer's rate, the run's, and the levers."""
        now = time.perf_counter()
        elapsed, waited = now - (self._chunk_began or now), self._waited
        self._chunk_began, self._waited = None, 0.0
        if self._warned or elapsed <= 0 or waited <= contract.SLOW_WRITER_FRACTION * elapsed:
            return
        self._warned = True
        rate = writer.written_bytes / writer.writing_seconds if writer.writing_seconds else float("nan")
        produced = rows * self.step_bytes / max(elapsed - waited, 1e-9)
        warnings.warn(
            f"zarrec: training waited for the writer of {self.store_name} {waited / elapsed:.0%} of the last chunk's "
            f"time: it writes {human_size(rate)}/s, the run makes {human_size(produced)}/s of "
            "recorded values. Record less: every=N (a step in N), fewer params (params=[...]), or mantissa_bits=7 "
            "(bfloat16's precision, smaller on disk)",
            ZarrecWarning, stacklevel=4,
        )

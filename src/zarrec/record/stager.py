"""The per-step path: each step's values copied into a slab of host staging memory, and each
slab handed to the writer when its chunk (or its part of a large step's chunk) is full.

On the training thread a step costs one fused copy of its tensors (:func:`~zarrec.record.staging.copy_row`,
non-blocking from an accelerator, into pinned memory where it has it); the writer thread waits
for those copies once per part (a marker of :mod:`~zarrec.record.device_queue`: an event of the
device), converts to float32, rounds, compresses and writes. When every slab is still
being written, the training thread waits for one (back-pressure: memory stays bounded).
"""

from __future__ import annotations

import queue
from collections.abc import Mapping

import numpy as np
import torch

from zarrec.record.device_queue import Immediate, OnTheDevice, pinned_memory_for
from zarrec.record.pace import WriterPace
from zarrec.record.rounding import round_mantissa, round_mantissa_on_device
from zarrec.record.staging import (
    SLABS,
    Float32Scratch,
    Piece,
    Slab,
    copy_row,
    slab_bytes,
)
from zarrec.record.writer import Chunk, ChunkWriter

Value = torch.Tensor | np.ndarray | float | int
_MISSING = float("nan")  # what a step that does not pass a variable records for it


class ChunkStager:
    """Stages steps into slabs, a chunk in ``parts``, and hands them to ``writer``.

    ``rows``: the rows the store holds already (a resumed store), so that chunks end on the
    store's chunk boundaries; ``flush_every``: also hand the chunk over after that many steps;
    ``rounded``: the variables rounded to ``mantissa_bits`` (the tensors, not the scalars: on
    an accelerator, its float32 tensors there, before the copy; the rest by the writer);
    ``device``: the accelerator the values live on (None: the CPU).
    """

    def __init__(
        self,
        parts: list[list[Piece]],
        chunk_steps: int,
        writer: ChunkWriter,
        pace: WriterPace,
        *,
        rows: int,
        device: torch.device | None,
        flush_every: int | None,
        mantissa_bits: int | None,
        rounded: set[str],
    ) -> None:
        self.parts = parts
        self.chunk_steps = chunk_steps
        self.handed_rows = rows  # rows given to the writer so far (committed ones included)
        self._writer = writer
        self._pace = pace
        self._device = OnTheDevice(device) if device is not None else Immediate()
        self._non_blocking = device is not None  # (the writer waits for a marker of the device)
        self._pinned = pinned_memory_for(device)
        self._flush_every = flush_every
        self._mantissa_bits = mantissa_bits
        self._rounded = rounded
        self._rounded_on_device = {piece.name for part in parts for piece in part
                                   if device is not None and piece.name in rounded and piece.dtype == torch.float32}
        self._slab_bytes = slab_bytes(parts, chunk_steps)
        self._filling: list[Slab | None] = [None] * len(parts)  # per part, the slab being filled
        self._free: queue.Queue[Slab] = queue.Queue()
        self.slabs: list[Slab] = []
        self._scratch = Float32Scratch()  # float32 conversions, used by the writer thread only
        self._unflushed = 0

    @property
    def staged_rows(self) -> int:
        """Steps staged and not yet handed to the writer."""
        return self._filling[0].rows if self._filling[0] is not None else 0

    def stage(self, step: int, values: Mapping[str, Value]) -> int | None:
        """Copy one step's values into the chunk's slabs; hand them over if the step ends the
        chunk. Returns the chunk's rows if it did (else 0), or None if the writer failed while
        the training thread waited for a slab."""
        rows = self.staged_rows + 1  # in the chunk, with this step
        self._unflushed += 1
        # Chunks end on chunk boundaries of the store, also after a flush or a resume.
        ends = (self.handed_rows + rows) % self.chunk_steps == 0 or self._unflushed == self._flush_every
        for index, part in enumerate(self.parts):
            slab = self._filling[index] or self._take_slab(index)
            if slab is None:
                return None
            copy_row(slab.row_views[slab.rows], [self._on_device(piece, piece.of(values.get(piece.name, _MISSING))) for piece in part],
                     self._non_blocking)
            slab.steps[slab.rows] = step
            slab.rows += 1
            if ends:  # a large step's parts go to the writer one by one, as soon as each is copied
                self._submit(index)
        return rows if ends else 0

    def _on_device(self, piece: Piece, value: Value) -> Value:
        """``value`` of ``piece``, rounded where it lives if the device rounds it."""
        if piece.name in self._rounded_on_device and isinstance(value, torch.Tensor) and value.dtype == torch.float32:
            return round_mantissa_on_device(value, self._mantissa_bits)
        return value

    def submit_partial_chunk(self) -> None:
        """Hand the steps staged so far to the writer (a flush, or the end)."""
        if self.staged_rows:
            for index in range(len(self.parts)):
                self._submit(index)

    def _take_slab(self, index: int) -> Slab | None:
        """A slab for part ``index`` of the chunk: a new one while there are fewer than
        :data:`~zarrec.record.staging.SLABS`, else the next the writer frees (waiting for it);
        None if the writer has failed."""
        start = self._pace.slab_wanted()
        if self._free.empty() and len(self.slabs) < SLABS:
            slab = Slab(self._slab_bytes, self.chunk_steps, pinned=self._pinned)
            self.slabs.append(slab)
        else:
            slab = self._free.get()  # blocks while every slab is being written
            self._pace.waited_since(start)
        if self._writer.error is not None:
            return None
        slab.hold(index, self.parts[index])
        self._filling[index] = slab
        return slab

    def _submit(self, index: int) -> None:
        """Hand part ``index`` of the chunk to the writer; the last part commits the chunk."""
        slab, self._filling[index] = self._filling[index], None
        assert slab is not None
        rows = slab.rows
        commits = index == len(self.parts) - 1
        if commits:
            self.handed_rows += rows
            self._unflushed = 0
        wait = self._device.marker()

        def values() -> dict[str, np.ndarray]:  # runs in the writer thread
            wait()
            arrays = slab.as_float32(rows, self._scratch)
            if self._mantissa_bits is not None:
                for name, array in arrays.items():
                    if name in self._rounded and name not in self._rounded_on_device:
                        round_mantissa(array, self._mantissa_bits)
            return arrays

        starts = {piece.name: piece.start for piece in slab.part if piece.start}
        chunk = Chunk(slab.steps[:rows].copy(), values, lambda: self._release(slab), starts=starts, commits=commits)
        self._writer.submit(chunk)

    def _release(self, slab: Slab) -> None:
        slab.rows = 0
        self._free.put(slab)


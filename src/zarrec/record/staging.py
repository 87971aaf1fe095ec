"""Host staging: the memory a step is copied into on the training thread, bounded in bytes.

A chunk of ``chunk_steps`` steps is staged in one or more *parts*. A part is a list of
*pieces*; a piece is a variable, or a range of its rows that is one column of the store's
shards (format 2 shards split a large array along its rows). A part fits in one *slab*, a
block of host memory (pinned for an accelerator) of at most a third of the budget: one slab is being
filled while the writer works on the others. Most runs stage a whole chunk in one part; a
step larger than a slab (a GPT-2 embedding with its gradient and Adam moments is 618 MB) is
staged a part at a time, each handed to the writer as soon as it is copied, so the training
thread waits for the writer part by part instead of holding whole steps.

The training thread only copies (a bf16 tensor into bf16 memory); the conversion to float32
happens once per part, in the writer thread, into one buffer it reuses (:class:`Float32Scratch`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from zarrec.store.shards import AssemblyBuffer

if TYPE_CHECKING:
    from zarrec.record.ranks import Ranks

# Slabs per recording: one being filled, two being written (or queued).
SLABS = 3
ALIGNMENT = 64  # bytes; each piece starts on this boundary in its slab


@dataclass(frozen=True)
class Piece:
    """Rows ``start:stop`` of variable ``name`` (``stop`` None: the whole variable, any rank)."""

    name: str
    shape: tuple[int, ...]  # one step's shape of the piece
    dtype: torch.dtype
    start: int = 0
    stop: int | None = None
    offset: int = 0  # the row of the variable that the values given begin at (a rank's own rows: its first)

    def nbytes(self, steps: int) -> int:
        return steps * math.prod(self.shape) * self.dtype.itemsize

    def of(self, value: torch.Tensor | np.ndarray | float | int) -> torch.Tensor | np.ndarray | float | int:
        """This piece of a step's ``value`` of the variable (a view)."""
        if self.stop is None or not hasattr(value, "shape"):
            return value
        return value[self.start - self.offset:self.stop - self.offset]


def plan_parts(
    variables: Mapping[str, tuple[tuple[int, ...], torch.dtype, int]], chunk_steps: int, part_bytes: int
) -> list[list[Piece]]:
    """Split a chunk of ``variables`` (``name: (shape, staged dtype, rows per shard)``) into
    parts of at most ``part_bytes`` staged bytes where it can: a variable whose shards hold
    fewer rows than it has is cut into one piece per shard; consecutive pieces share a part
    while they fit (a piece larger than ``part_bytes`` is a part of its own)."""
    pieces = []
    for name, (shape, dtype, shard_rows) in variables.items():
        if shape and shard_rows < shape[0]:
            for start in range(0, shape[0], shard_rows):
                stop = min(start + shard_rows, shape[0])
                pieces.append(Piece(name, (stop - start, *shape[1:]), dtype, start, stop))
        else:
            pieces.append(Piece(name, shape, dtype))
    parts: list[list[Piece]] = []
    size = 0
    for piece in pieces:
        nbytes = aligned(piece.nbytes(chunk_steps))
        if not parts or size + nbytes > part_bytes or any(p.name == piece.name for p in parts[-1]):
            parts.append([])
            size = 0
        parts[-1].append(piece)
        size += nbytes
    return parts


def plan_staging(
    shapes: Mapping[str, tuple[int, ...]],
    staged_dtypes: Mapping[str, torch.dtype],
    shard_rows: Mapping[str, int],
    chunk_steps: int,
    part_bytes: int,
    ranks: Ranks | None = None,
    splits: Mapping[str, tuple[int, ...]] | None = None,
    over_ranks: tuple[str, ...] = (),
) -> list[list[Piece]]:
    """How a chunk is staged (:func:`plan_parts`): every variable (in a sharded run, this rank's
    rows of the variables of ``splits`` (where the ranks split their rows), its addends of the ``over_ranks`` ones, and on rank 0 the others), in parts of at most ``part_bytes``
    where it can. ``shard_rows``: the rows of each variable's shards in the store."""
    whole_values = ranks is None or ranks.writes_whole_values
    splits = splits or {}
    own, staged = {}, {}
    for name, shape in shapes.items():
        if name in splits:
            own[name] = ranks.own_rows(splits[name])
            start, stop = own[name]
            if stop > start:  # (a rank beyond the last row holds none)
                staged[name] = ((stop - start, *shape[1:]), staged_dtypes[name], shard_rows[name])
        elif whole_values or name in over_ranks:
            staged[name] = (shape, staged_dtypes[name], shard_rows[name])
    parts = plan_parts(staged, chunk_steps, part_bytes) or [[]]  # every rank takes part in each commit
    return [[_own_piece(piece, own.get(piece.name)) for piece in part] for part in parts]


def _own_piece(piece: Piece, own: tuple[int, int] | None) -> Piece:
    """A piece planned over this rank's rows, ``own``, placed at them in the variable (its
    values come as the rank's local tensor, which begins at ``own[0]``)."""
    if own is None:
        return piece
    first, last = own
    stop = first + piece.stop if piece.stop is not None else last
    return dataclasses.replace(piece, start=first + piece.start, stop=stop, offset=first)


def slab_bytes(parts: list[list[Piece]], chunk_steps: int) -> int:
    """The bytes of a slab that holds any of ``parts``."""
    return max(sum(aligned(piece.nbytes(chunk_steps)) for piece in part) for part in parts)


class Slab:
    """Host memory for one part of a chunk: ``chunk_steps`` rows of each of its pieces.

    Every row of every piece is written by the recorder (NaN for a variable a step does not
    pass), so a recycled slab needs no clearing.
    """

    def __init__(self, nbytes: int, chunk_steps: int, pinned: bool) -> None:
        self.memory = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
        self.steps = np.full(chunk_steps, -1, dtype=np.int64)
        self.rows = 0
        self.part: list[Piece] = []
        self.tensors: dict[str, torch.Tensor] = {}
        self.row_views: list[list[torch.Tensor]] = []
        self._layouts: dict[int, tuple[dict[str, torch.Tensor], list[list[torch.Tensor]]]] = {}

    def hold(self, index: int, part: list[Piece]) -> None:
        """Lay part number ``index`` out in this slab (views made once per part: for small
        values, indexing costs more than the copy itself)."""
        if index not in self._layouts:
            tensors, offset = {}, 0
            steps = len(self.steps)
            for piece in part:
                nbytes = piece.nbytes(steps)
                tensors[piece.name] = self.memory[offset:offset + nbytes].view(piece.dtype).view(steps, *piece.shape)
                offset += aligned(nbytes)
            self._layouts[index] = (tensors, [[tensor[row] for tensor in tensors.values()] for row in range(steps)])
        self.part = part
        self.tensors, self.row_views = self._layouts[index]

    def as_float32(self, rows: int, scratch: Float32Scratch) -> dict[str, np.ndarray]:
        """The first ``rows`` rows of every piece as float32 numpy arrays, exactly: float32
        staging as it is (a view), anything else converted into ``scratch``."""
        converted = iter(scratch.arrays([(rows, *t.shape[1:]) for t in self.tensors.values() if t.dtype != torch.float32]))
        return {
            name: tensor[:rows].numpy() if tensor.dtype == torch.float32 else _to_float32(tensor[:rows], next(converted))
            for name, tensor in self.tensors.items()
        }


class Float32Scratch:
    """Float32 arrays in one :class:`~zarrec.store.shards.AssemblyBuffer`, reused part after part by
    the writer thread (a fresh array per part costs more in page faults than the conversion itself)."""

    def __init__(self) -> None:
        self.buffer = AssemblyBuffer()

    def arrays(self, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        """Arrays of ``shapes`` in the buffer, valid until the next call."""
        sizes = [math.prod(shape) for shape in shapes]
        memory = self.buffer.reserve(4 * sum(sizes))[:4 * sum(sizes)].view(np.float32)
        offsets = np.cumsum([0, *sizes])
        return [memory[o:o + n].reshape(shape) for o, n, shape in zip(offsets, sizes, shapes)]


def human_size(n: float) -> str:
    """Bytes as a human reads them: 618.4 MB, 5.04 TB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:,.3g} TB"


def aligned(nbytes: int) -> int:
    """The bytes a piece of ``nbytes`` takes in a slab (each starts on an aligned boundary)."""
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


def _to_float32(tensor: torch.Tensor, out: np.ndarray) -> np.ndarray:
    """Convert to float32 into ``out``, exactly for bf16 and fp16.

    In numpy, on this thread only: torch would split the conversion over its intra-op
    threads, whose spin-waiting takes a core from the codec and the training loop. A
    bfloat16 is the upper half of the float32 with the same value, so its bits shifted left
    by 16 are that float32.
    """
    if tensor.dtype == torch.bfloat16:
        bits = out.view(np.int32)
        np.copyto(bits, tensor.view(torch.int16).numpy(), casting="unsafe")  # sign-extended, then shifted out
        np.left_shift(bits, 16, out=bits)
    else:
        np.copyto(out, tensor.numpy(), casting="unsafe")
    return out


@torch.no_grad()
def copy_row(targets: list[torch.Tensor], values: list, non_blocking: bool) -> None:
    """Copy one step's values into their staging rows: tensors in one fused call, the rest one by one."""
    tensor_targets, tensors = [], []
    for target, value in zip(targets, values):
        if isinstance(value, torch.Tensor):
            tensor_targets.append(target)
            tensors.append(value)
        elif isinstance(value, np.ndarray):
            target.copy_(torch.from_numpy(value))
        else:
            target.fill_(value)
    if tensors:
        # The fused copy the optimizers use: a third of the per-call overhead of separate copy_ calls.
        # Non-blocking from an accelerator: the writer waits on one marker per part (see ChunkStager).
        torch._foreach_copy_(tensor_targets, tensors, non_blocking=non_blocking)

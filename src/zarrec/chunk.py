"""A staged part of a step-chunk as a writer receives it, and how it becomes float32 rows.

The training thread copies values into a *slab* of host memory in their own dtype
(:mod:`zarrec.staging`); a :class:`Chunk` says where in which slab each value's rows lie,
and the conversion to float32 and the optional mantissa rounding happen in the writer
thread (:mod:`zarrec.writer`), not on the training thread. Plain numpy, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from zarrec.shards import AssemblyBuffer


@dataclass(frozen=True)
class Block:
    """``capacity`` rows of one variable's values (or of a range of its rows) in a slab:
    ``capacity * prod(shape)`` values of ``dtype`` from byte ``offset``."""

    name: str
    offset: int
    capacity: int
    shape: tuple[int, ...]  # one step's shape
    dtype: str  # "float32", "bfloat16", "float16" or "float64"


@dataclass
class Chunk:
    """Rows to write: the first ``len(steps)`` rows of each block of slab ``slab``, row ``i``
    of step ``steps[i]``. A large step-chunk comes in parts: a block's values then begin at row
    ``starts[name]`` of the array's first non-step dim, and only the last part ``commits``."""

    steps: np.ndarray
    slab: int
    blocks: tuple[Block, ...]
    starts: dict[str, int] = field(default_factory=dict)
    commits: bool = True
    mantissa_bits: int | None = None  # round every non-scalar block to this many bits
    ready: Callable[[], None] | None = None  # waits until the slab holds the values (an accelerator's copies)


def float32_values(chunk: Chunk, memory: np.ndarray, scratch: Float32Scratch) -> dict[str, np.ndarray]:
    """The chunk's rows of each block as float32, exactly: float32 as it lies in ``memory``
    (the slab's bytes), other dtypes converted into ``scratch``; then rounded (``mantissa_bits``)."""
    rows = len(chunk.steps)
    converted = iter(scratch.arrays([(rows, *b.shape) for b in chunk.blocks if b.dtype != "float32"]))
    values = {}
    for block in chunk.blocks:
        nbytes = block.capacity * math.prod(block.shape) * _ITEMSIZE[block.dtype]
        raw = memory[block.offset:block.offset + nbytes].view(_RAW[block.dtype])
        raw = raw.reshape(block.capacity, *block.shape)[:rows]
        array = raw if block.dtype == "float32" else _to_float32(raw, block.dtype, next(converted))
        if chunk.mantissa_bits is not None and block.shape:  # a tensor, not a per-step scalar
            round_mantissa(array, chunk.mantissa_bits)
        values[block.name] = array
    return values


_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
_RAW = {"float32": np.float32, "bfloat16": np.int16, "float16": np.float16, "float64": np.float64}


def _to_float32(raw: np.ndarray, dtype: str, out: np.ndarray) -> np.ndarray:
    """Convert to float32 into ``out``, exactly for bf16 and fp16 (float64 is rounded).

    A bfloat16 is the upper half of the float32 with the same value, so its bits (read as
    int16, sign-extended) shifted left by 16 are that float32.
    """
    if dtype == "bfloat16":
        bits = out.view(np.int32)
        np.copyto(bits, raw, casting="unsafe")
        np.left_shift(bits, 16, out=bits)
    else:
        np.copyto(out, raw, casting="unsafe")
    return out


def round_mantissa(values: np.ndarray, bits: int) -> np.ndarray:
    """Round float32 ``values`` in place to ``bits`` explicit mantissa bits (of float32's 23),
    to nearest, ties to even, as a cast to a narrower float does (``bits=7``: bfloat16's
    precision, so ``|rounded − x| ≤ 2^−(bits+1) · |x|``); NaN and Inf stay. The dropped bits
    become zeros, which compress to almost nothing; the result is still plain float32."""
    if not values.flags.c_contiguous:
        values[...] = round_mantissa(np.ascontiguousarray(values), bits)
        return values
    dropped = 23 - bits
    flat = values.reshape(-1)  # a view of the contiguous values
    for start in range(0, flat.size, _ROUNDING_BLOCK):  # temporaries of a block, not of the array
        block = flat[start:start + _ROUNDING_BLOCK]
        nan = np.isnan(block)
        raw = block.view(np.uint32)
        raw += np.uint32((1 << (dropped - 1)) - 1) + ((raw >> np.uint32(dropped)) & np.uint32(1))
        raw &= np.uint32(~((1 << dropped) - 1) & 0xFFFFFFFF)
        block[nan] = np.nan  # a NaN whose payload lay in the dropped bits would have become Inf
    return values


_ROUNDING_BLOCK = 1 << 20  # elements


class Float32Scratch:
    """Float32 arrays in one :class:`~zarrec.shards.AssemblyBuffer`, reused part after part by
    the writer (a fresh array per part costs more in page faults than the conversion itself)."""

    def __init__(self) -> None:
        self.buffer = AssemblyBuffer()

    def arrays(self, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        """Arrays of ``shapes`` in the buffer, valid until the next call."""
        sizes = [math.prod(shape) for shape in shapes]
        memory = self.buffer.reserve(4 * sum(sizes))[:4 * sum(sizes)].view(np.float32)
        offsets = np.cumsum([0, *sizes])
        return [memory[o:o + n].reshape(shape) for o, n, shape in zip(offsets, sizes, shapes)]

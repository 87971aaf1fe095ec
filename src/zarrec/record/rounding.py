"""Rounding recorded values to fewer mantissa bits (``Recorder(mantissa_bits=...)``): the
dropped bits become zeros, which compress to almost nothing."""

from __future__ import annotations

import numpy as np


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

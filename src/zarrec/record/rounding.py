"""Rounding recorded values to fewer mantissa bits (``Recorder(mantissa_bits=...)``): the
dropped bits become zeros, which compress to almost nothing.

Where the values live on an accelerator, float32 tensors are rounded there, before their copy
to the host (:func:`round_mantissa_on_device`: a few elementwise kernels on the stream); the
rest are rounded by the writer thread (:func:`round_mantissa`). Both give the same bits.
"""

from __future__ import annotations

import numpy as np
import torch


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


def round_mantissa_on_device(values: torch.Tensor, bits: int) -> torch.Tensor:
    """:func:`round_mantissa` of float32 ``values`` as a new tensor where they live (the
    same bits): ``x + 2^(d−1) − 1 + bit_d(x)``, then the low ``d = 23 − bits`` bits cleared,
    on the integer view of the floats; NaN stays NaN."""
    dropped = 23 - bits
    nan = values.isnan()
    raw = values.view(torch.int32).masked_fill(nan, 0)  # (a NaN's payload could overflow int32)
    raw = raw + ((1 << (dropped - 1)) - 1) + ((raw >> dropped) & 1)  # (negatives: two's complement, same bits as uint32)
    rounded = (raw & ~((1 << dropped) - 1)).view(torch.float32)
    return rounded.masked_fill(nan, float("nan"))

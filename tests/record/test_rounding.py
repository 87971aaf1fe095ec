"""Mantissa rounding: on the host (the writer) and where the values live (an accelerator) give the same bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zarrec.record.rounding import round_mantissa, round_mantissa_on_device

# NaNs with payloads in the dropped bits, the largest finite floats (they round to Inf),
# subnormals, and ties between two kept values (to even) of both signs.
_EDGES = np.array([0x7F800001, 0x7FFFFFFF, 0xFFFFFFFF, 0xFF800001, 0x7F7FFFFF, 0xFF7FFFFF, 0x00000001, 0x80000001,
                   0x007FFFFF, 0x3F808000, 0x3F818000, 0xBF808000, 0xBF818000], np.uint32).view(np.float32)


@pytest.mark.parametrize("bits", [1, 7, 10, 22])
def test_rounding_on_the_device_equals_the_writers_bit_for_bit(bits):
    rng = np.random.default_rng(bits)
    values = rng.normal(scale=10.0 ** rng.integers(-44, 38, size=50_000), size=50_000).astype(np.float32)
    values = np.concatenate([values, _EDGES, np.float32([np.inf, -np.inf, 0.0, -0.0, np.nan])])
    on_device = round_mantissa_on_device(torch.from_numpy(values), bits).numpy()
    on_host = round_mantissa(values.copy(), bits)
    np.testing.assert_array_equal(on_device.view(np.uint32), on_host.view(np.uint32))
    normal = np.isfinite(on_host) & (np.abs(values) >= np.finfo(np.float32).tiny)  # (subnormals keep fewer bits)
    assert (np.abs(on_host[normal] - values[normal]) <= 2.0 ** -(bits + 1) * np.abs(values[normal])).all()
    assert (on_host[np.isfinite(on_host)].view(np.uint32) & ((1 << (23 - bits)) - 1) == 0).all()

"""``ds.zarrec`` forwards to each analysis function, and runs on a real recorded run."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import zarrec  # noqa: F401  (registers ds.zarrec)
from zarrec import analysis


def test_accessor_forwards_every_function(ds):
    for name in ("velocity", "speed", "centroid", "spread", "norms", "adam_update", "update_residual",
                 "realized_fraction", "force_decomposition", "logit_stats", "pca"):
        via_accessor = getattr(ds.zarrec, name)()
        direct = getattr(analysis, name)(ds)
        xr.testing.assert_identical(via_accessor.compute(), direct.compute())


def test_on_a_real_float32_run_every_intended_update_landed(float32_run):
    """On a float32 run the AdamW update is reproduced to rounding: residual ≈ 0, fraction ≈ 1."""
    ds = xr.open_zarr(float32_run.path)
    residual = ds.zarrec.update_residual()
    assert float(np.abs(residual).max()) <= 4e-7 * float(np.abs(ds.embeddings).max())
    np.testing.assert_allclose(ds.zarrec.realized_fraction()["overall"], 1, rtol=1e-3)
    for name in ("velocity", "speed", "centroid", "spread", "norms", "force_decomposition", "logit_stats", "pca"):
        result = getattr(ds.zarrec, name)().compute()
        assert result.sizes["step"] >= float32_run.config.steps
    assert ds.zarrec.centroid(split=True).sizes["population"] == 2
    assert float(ds.zarrec.logit_stats()["entropy"][1]) == pytest.approx(np.log(128), abs=1e-3)

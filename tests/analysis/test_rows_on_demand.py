"""A long run's per-row formula, read on demand: a selection of rows reads those rows only,
with the numbers of the formula built from dask operations."""

from __future__ import annotations

import numpy as np
import xarray as xr

from zarrec import analysis
from zarrec.analysis import chunks, rows_on_demand


def test_speed_of_a_long_run_is_read_on_demand_with_the_same_numbers(one_step_chunks, monkeypatch):
    opened = xr.open_zarr(one_step_chunks, chunks={})  # the stored chunks, as xr.open_zarr leaves a large model's
    plain = analysis.speed(opened, "0.weight").compute()  # (13 × 4 chunks: the dask formula)
    monkeypatch.setattr(chunks, "MAX_CHUNKS", 1)  # (as a long run's millions of chunks are)
    monkeypatch.setattr(rows_on_demand, "STEPS_PER_CHUNK", 5)
    on_demand = analysis.speed(opened, "0.weight")
    assert on_demand.data.name.startswith("zarrec-speed-") and on_demand.data.chunks == ((5, 5, 2), (16,) * 4)
    assert on_demand.dims == plain.dims and (on_demand.step == plain.step).all() and set(on_demand.coords) == set(plain.coords)
    np.testing.assert_array_equal(on_demand.values, plain.values)
    for selection in ({"token": 7}, {"token": [3, 40, 41]}, {"step": 6, "token": slice(10, 20)}, {"step": [2, 12]}):
        np.testing.assert_array_equal(on_demand.sel(selection).values, plain.sel(selection).values, err_msg=str(selection))
    W = opened.embeddings.values
    np.testing.assert_allclose(on_demand.sel(token=7), np.linalg.norm(W[1:, 7] - W[:-1, 7], axis=-1), rtol=1e-6)

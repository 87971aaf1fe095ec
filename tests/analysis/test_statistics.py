"""The health statistics read back: the whole model from them, agreeing with the full state's
formulas; a parameter they do not name; a store without them."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import full_state_only, train_tiny_lm

from zarrec import ConfigError


def train(path, **options) -> None:
    train_tiny_lm(path, rows=9, width=4, steps=5, **options)


def test_the_whole_model_from_the_statistics_agrees_with_the_full_state(tmp_path):
    train(tmp_path / "run.zarr", params=["*"])
    ds = xr.open_zarr(tmp_path / "run.zarr")
    statistics, full_state = ds.zarrec.by_parameter(), full_state_only(ds).zarrec.by_parameter()
    np.testing.assert_array_equal(statistics.param, full_state.param)
    np.testing.assert_array_equal(statistics.step, np.arange(1, 6))
    for name in ("realized_fraction", "update_to_weight", "grad_norm"):
        xr.testing.assert_allclose(statistics[name].load(), full_state[name].load(), rtol=1e-5)
    fraction = ds.zarrec.realized_fraction("1.weight")
    xr.testing.assert_allclose(fraction.load(), full_state_only(ds).zarrec.realized_fraction("1.weight").load(), rtol=1e-5)


def test_parameters_are_named_as_in_the_model_or_refused_with_the_names(tmp_path):
    train(tmp_path / "run.zarr")  # the full state of the embedding only; statistics of all three
    ds = xr.open_zarr(tmp_path / "run.zarr")
    assert ds.zarrec.by_parameter(["1.bias", "embeddings"]).param.values.tolist() == ["1.bias", "0.weight"]
    fraction = ds.zarrec.realized_fraction("1.weight")  # no full state: from its statistics
    assert fraction.overall.notnull().all() and "per_row" not in fraction
    assert fraction.attrs["not_computed"]["per_row"].startswith("the rows of 1.weight were not kept: record it")
    assert ds.zarrec.plot.realized_fraction("1.weight").axes[0].lines  # the overall fraction, drawn
    with pytest.raises(ConfigError, match="'nope' is not a trained parameter of this run; its statistics name 0.weight, 1.weight, 1.bias"):
        ds.zarrec.by_parameter(["nope"])


def test_a_store_recorded_without_statistics_is_analysed_from_its_full_state(tmp_path):
    train(tmp_path / "run.zarr", statistics=False)
    ds = xr.open_zarr(tmp_path / "run.zarr")
    assert ds.zarrec.by_parameter().param.values.tolist() == ["0.weight"]
    np.testing.assert_allclose(ds.zarrec.realized_fraction().overall, 1, rtol=1e-5)

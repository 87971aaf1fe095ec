"""A run and its branch side by side: along ``run``, on the union of their steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import zarrec
from zarrec import ConfigError


def _train(model, optimizer, steps, recorder) -> None:
    for step in steps:
        tokens = torch.randint(0, 11, (5,), generator=torch.Generator().manual_seed(step))
        model(tokens).logsumexp(-1).mean().backward()
        optimizer.step()
        recorder.step(loss=torch.tensor(float(step)))
        optimizer.zero_grad()


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 4), torch.nn.Linear(4, 11))
    return model, torch.optim.AdamW(model.parameters(), lr=0.05)


@pytest.fixture(scope="module")
def run_and_branch(tmp_path_factory):
    """A 10-step run of every parameter, and a branch of it at step 5 with twice the learning rate."""
    directory = tmp_path_factory.mktemp("runs")
    model, optimizer = _model()
    with zarrec.ModelRecorder(directory / "run.zarr", model, optimizer, params=["*"]) as recorder:
        _train(model, optimizer, range(1, 11), recorder)
    model, optimizer = _model()
    zarrec.restore(directory / "run.zarr", 5, model, optimizer)
    optimizer.param_groups[0]["lr"] = 0.1
    attrs = {"branched_from": {"store": str(directory / "run.zarr"), "step": 5, "changed": {"lr": [0.05, 0.1]}}}
    with zarrec.ModelRecorder(directory / "branch.zarr", model, optimizer, params=["*"], initial_step=5, attrs=attrs) as recorder:
        _train(model, optimizer, range(6, 11), recorder)
    return {"run": directory / "run.zarr", "lr 0.1": directory / "branch.zarr"}


def test_a_run_and_its_branch_open_along_run_on_the_union_of_their_steps(run_and_branch):
    both = zarrec.open_runs(run_and_branch)
    assert both.loss.dims == ("run", "step") and both["0.weight"].dims == ("run", "step", "_0_weight_row", "_0_weight_col")
    np.testing.assert_array_equal(both.run, ["run", "lr 0.1"])
    np.testing.assert_array_equal(both.step, np.arange(11))
    np.testing.assert_array_equal(both.branch_step, [np.nan, 5])
    branch = xr.open_zarr(run_and_branch["lr 0.1"])
    assert both["0.weight"].sel(run="lr 0.1", step=slice(0, 5)).isnull().all()
    np.testing.assert_array_equal(both["0.weight"].sel(run="lr 0.1", step=slice(6, 10)), branch["0.weight"])
    np.testing.assert_array_equal(both.lr.sel(run="lr 0.1").values[6:], np.float32(0.1))
    assert (both["0.weight"].sel(run="lr 0.1") != both["0.weight"].sel(run="run")).sel(step=slice(6, 10)).all()


def test_any_answer_of_the_analysis_compares_across_runs(run_and_branch):
    fraction = zarrec.compare_runs(run_and_branch, lambda ds: ds.zarrec.realized_fraction("0.weight").overall)
    assert fraction.dims == ("run", "step")
    np.testing.assert_array_equal(fraction.sel(run="lr 0.1").dropna("step").step, np.arange(6, 11))  # from its first step
    np.testing.assert_array_equal(fraction.sel(run="run").dropna("step").step, np.arange(1, 11))  # (step 0: no update)
    for name, store in run_and_branch.items():
        own = xr.open_zarr(store).zarrec.realized_fraction("0.weight").overall
        np.testing.assert_array_equal(fraction.sel(run=name, step=own.step), own)
    with pytest.raises(ConfigError, match="compare_runs needs at least one run"):
        zarrec.compare_runs({}, lambda ds: ds.loss)
    with pytest.raises(ConfigError, match="is not a Zarr store"):
        zarrec.open_runs({"missing": run_and_branch["run"].parent / "missing.zarr"})

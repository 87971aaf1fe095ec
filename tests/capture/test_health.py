"""The health statistics of every trained parameter at every step, against their formulas in
numpy on the recorded full state: AdamW, Adam, SGD with and without momentum, Nesterov; float32
and bf16; eager and compiled; and what is recorded when the update or the copy is not there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import check_health, full_state_only

import zarrec
from zarrec import ConfigError
from zarrec.capture import health, passes

OPTIMIZERS = {
    "AdamW": lambda params: torch.optim.AdamW(params, lr=0.02, weight_decay=0.1),
    "Adam": lambda params: torch.optim.Adam(params, lr=0.02, weight_decay=0.1),
    "SGD with momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=0.1),
    "Nesterov": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
    "SGD": lambda params: torch.optim.SGD(params, lr=0.05, weight_decay=0.1),
}
ROWS = 13


def build(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(ROWS, 6), torch.nn.Linear(6, ROWS)).to(dtype)
    model.get_input_embeddings = lambda: model[0]
    return model


def train(path, optimizer_name: str = "AdamW", dtype: torch.dtype = torch.float32, steps: int = 6, **options) -> None:
    """A plain loop with a decaying learning rate (the statistics use each step's)."""
    model = build(dtype)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    with zarrec.ModelRecorder(path, model, optimizer, **options) as recorder:
        for step in range(1, steps + 1):
            tokens = torch.randint(0, ROWS, (4, 5), generator=torch.Generator().manual_seed(step))
            loss = torch.nn.functional.cross_entropy(model(tokens).float().reshape(-1, ROWS), tokens.reshape(-1))
            loss.backward()
            optimizer.step()
            recorder.step(loss=loss)
            optimizer.zero_grad()
            scheduler.step()


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_every_statistic_equals_its_formula_on_the_full_state(tmp_path, optimizer_name, dtype):
    path = tmp_path / "run.zarr"
    train(path, optimizer_name, dtype, params=["*"])
    for param, per_row in (("0.weight", True), ("1.weight", True), ("1.bias", False)):
        check_health(path, param, per_row)
    stats = xr.open_zarr(path / "statistics")
    assert list(stats.param.values) == ["0.weight", "1.weight", "1.bias"] and stats.sizes["step"] == 7
    assert stats["0.weight.param_norm"].dims == ("step", "token") and stats["1.weight.param_norm"].dims == ("step", "_1_weight_row")
    assert "‖a[t] − u[t]‖" in stats.residual_norm.attrs["description"]
    assert stats.attrs["intended_update"] == health.INTENDED[optimizer_name.split()[0].replace("Nesterov", "SGD")]


def test_the_compiled_pass_gives_the_eager_numbers(tmp_path, monkeypatch):
    """Large parameters are reduced by a torch.compile'd function: the same statistics."""
    monkeypatch.setattr(passes, "COMPILE_FROM_ELEMENTS", 1)  # every parameter alone, compiled
    train(tmp_path / "run.zarr", params=["*"], steps=3)
    for param in ("0.weight", "1.weight", "1.bias"):
        check_health(tmp_path / "run.zarr", param, per_row=param != "1.bias")


def test_a_thinned_schedule_keeps_the_analysis_at_every_step(tmp_path):
    """every=10: the full state at steps 0, 10, 20; the realized fraction, the update-to-weight
    ratio and the gradient norms of every parameter at every step."""
    path = tmp_path / "run.zarr"
    train(path, "AdamW", steps=25, params=["*"], every=10)
    ds = xr.open_zarr(path)
    np.testing.assert_array_equal(ds.step, [0, 10, 20])
    overview = ds.zarrec.by_parameter()
    np.testing.assert_array_equal(overview.step, np.arange(1, 26))
    assert overview.to_array().notnull().all()
    fraction = ds.zarrec.realized_fraction()  # the input embedding's
    np.testing.assert_array_equal(fraction.step, np.arange(1, 26))
    assert fraction.overall.notnull().all() and fraction.per_row.notnull().all()
    np.testing.assert_allclose(fraction.overall, 1, rtol=1e-4)
    with pytest.raises(ConfigError, match="full state at steps 0, 10, 20, no two consecutive"):
        full_state_only(ds).zarrec.realized_fraction()


def test_the_light_setting_keeps_no_copy_and_records_the_norms(tmp_path):
    path = tmp_path / "run.zarr"
    train(path, "AdamW", statistics="norms")
    stats = xr.open_zarr(path / "statistics").sel(step=slice(1, None)).load()
    assert stats.param_norm.notnull().all() and stats.grad_norm.notnull().all() and stats.cos_grad_momentum.notnull().all()
    assert stats.update_norm.isnull().all() and stats.residual_norm.isnull().all() and stats.attrs["light"]


def test_an_optimizer_whose_update_is_unknown_records_the_norms_and_the_analysis_says_why(tmp_path):
    model = build()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=0.01)
    with zarrec.ModelRecorder(tmp_path / "run.zarr", model, optimizer) as recorder:
        for _ in range(3):
            model(torch.tensor([[1, 2, 3]])).sum().backward()
            optimizer.step()
            recorder.step()
            optimizer.zero_grad()
    ds = xr.open_zarr(tmp_path / "run.zarr")
    stats = xr.open_zarr(tmp_path / "run.zarr" / "statistics").sel(step=slice(1, None)).load()
    assert stats.update_norm.notnull().all() and stats.intended_norm.isnull().all()
    assert "RMSprop is not known to zarrec" in stats.attrs["intended_update"]
    with pytest.raises(ConfigError, match="no realized fraction of 0.weight: the intended update of RMSprop is not known"):
        ds.zarrec.realized_fraction()
    assert "RMSprop" in ds.zarrec.by_parameter().attrs["not_computed"]["realized_fraction of 0.weight"]


def test_statistics_off_and_a_bad_setting(tmp_path):
    train(tmp_path / "off.zarr", statistics=False)
    assert not (tmp_path / "off.zarr" / "statistics").exists()
    with pytest.raises(ConfigError, match="statistics='all': pass True"):
        train(tmp_path / "bad.zarr", statistics="all")
    assert not (tmp_path / "bad.zarr").exists()


def test_no_full_state_and_the_statistics_of_every_parameter(tmp_path):
    """params=[]: the scalars and the health statistics only, the cheapest recording of a model."""
    path = tmp_path / "run.zarr"
    train(path, params=[])
    ds = xr.open_zarr(path)
    assert set(ds.data_vars) == {"loss", "lr", "grad_norm", "grad_norm_before_clipping"}
    overview = ds.zarrec.by_parameter()
    assert overview.param.values.tolist() == ["0.weight", "1.weight", "1.bias"] and overview.to_array().notnull().all()
    assert ds.zarrec.realized_fraction().overall.notnull().all()  # the input embedding's, named by the statistics

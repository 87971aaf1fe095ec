"""What the optimizer intended and what landed: each update formula against a hand-computed numpy
reference, and on real Trainer, SGD, Lightning and plain-loop runs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xarray as xr

import zarrec  # noqa: F401  (registers ds.zarrec)
from conftest import LAYER, LAYER_PARAMS, arrays, close, full_state_only, synthetic_dataset
from zarrec import ConfigError, analysis


def adam_reference(ds):
    W, g, m, v, lr, step, live, a = arrays(ds)
    t = step[1:, None, None].astype(np.float64)
    m_hat = m[1:] / (1 - a["adam_beta1"] ** t)
    v_hat = v[1:] / (1 - a["adam_beta2"] ** t)
    adam_step = -lr[1:, None, None] * m_hat / (np.sqrt(v_hat) + a["adam_epsilon"])
    previous = np.where((np.diff(step) == 1)[:, None, None], W[:-1], np.nan)
    decay = -lr[1:, None, None] * a["weight_decay"] * previous
    return adam_step, decay


def test_adam_update_is_the_exact_adamw_formula(ds):
    adam_step, decay = adam_reference(ds)
    update = analysis.adam_update(ds)
    close(update["adam_step"], adam_step)
    close(update["weight_decay"], decay)
    close(update["total"], adam_step + decay)
    np.testing.assert_array_equal(update.step, ds.step[1:])


def test_adam_update_needs_the_previous_step():
    gappy = synthetic_dataset(steps=(0, 1, 2, 4, 5))
    update = analysis.adam_update(gappy)
    total = update["total"].values
    assert np.isnan(total[2]).all()  # step 4: step 3 was not recorded
    assert np.isfinite(total[[0, 1, 3]]).all()
    assert np.isfinite(update["adam_step"].values).all()  # needs no previous step


def test_update_residual_and_realized_fraction(ds):
    W = arrays(ds)[0]
    adam_step, decay = adam_reference(ds)
    intended = adam_step + decay
    actual = W[1:] - W[:-1]
    close(analysis.update_residual(ds), actual - intended, rtol=1e-4, atol=1e-6)
    fraction = analysis.realized_fraction(ds)
    close(fraction["per_row"], (actual * intended).sum(-1) / (intended**2).sum(-1), rtol=1e-4)
    close(fraction["overall"], (actual * intended).sum((1, 2)) / (intended**2).sum((1, 2)), rtol=1e-4)


def test_realized_fraction_is_one_when_the_update_landed_and_zero_when_swallowed(ds):
    adam_step, decay = adam_reference(ds)
    W = ds.embeddings.values.astype(np.float64)
    landed = W.copy()
    for i in range(1, len(W)):
        landed[i] = landed[i - 1] + adam_step[i - 1] - ds.lr.values[i] * ds.attrs["weight_decay"] * landed[i - 1]
    full = ds.copy().assign(embeddings=(("step", "token", "dim"), landed))
    np.testing.assert_allclose(analysis.realized_fraction(full)["overall"], 1, rtol=1e-9)
    frozen = ds.copy().assign(embeddings=(("step", "token", "dim"), np.repeat(W[:1], len(W), axis=0)))
    np.testing.assert_allclose(analysis.realized_fraction(frozen)["per_row"], 0, atol=1e-12)


def test_force_decomposition(ds):
    W, g, m, *_ = arrays(ds)
    motion = W[1:] - W[:-1]
    result = analysis.force_decomposition(ds)
    for name, force in (("grad", g[1:]), ("momentum", m[1:])):
        dot = (motion * -force).sum(-1)
        close(result[f"cos_{name}"], dot / (np.linalg.norm(motion, axis=-1) * np.linalg.norm(force, axis=-1)), rtol=1e-4)
        close(result[f"along_{name}"], dot / np.linalg.norm(force, axis=-1), rtol=1e-4)


def test_force_decomposition_of_a_token_that_does_not_move_is_nan_not_an_error(ds):
    still = ds.copy().assign(embeddings=ds.embeddings * 0)
    result = analysis.force_decomposition(still).compute()
    assert np.isnan(result.cos_grad).all() and (result.along_grad == 0).all()


def adamw_reference(ds: xr.Dataset, param: str) -> np.ndarray:
    """AdamW's intended update of ``param`` from its stored values and hyperparameters, in numpy."""
    W, m, v = (ds[name].values.astype(np.float64) for name in (param, f"{param}.exp_avg", f"{param}.exp_avg_sq"))
    h = ds[param].attrs["optimizer_hyperparameters"]
    lr, (beta1, beta2) = ds.lr.values.astype(np.float64)[1:], h["betas"]
    shape = (-1,) + (1,) * (W.ndim - 1)
    t = ds.step.values[1:].astype(np.float64).reshape(shape)
    m_hat, v_hat = m[1:] / (1 - beta1**t), v[1:] / (1 - beta2**t)
    return -lr.reshape(shape) * (m_hat / (np.sqrt(v_hat) + h["eps"]) + h["weight_decay"] * W[:-1])


def test_every_method_on_a_layer_of_a_trainer_run(layers_run):
    """A matrix and two vectors, not the embedding: AdamW's identity at float32 rounding, and each method's formula."""
    ds = xr.open_zarr(layers_run)
    assert set(ds.zarrec.parameters().param.values) == set(LAYER_PARAMS)
    for param in LAYER_PARAMS:
        W = ds[param].values.astype(np.float64)
        assert ds[f"{param}.grad"].dims == ds[f"{param}.exp_avg"].dims == ds[param].dims  # never broadcasts
        assert all(dim in ds.indexes for dim in ds[param].dims)
        assert float(np.abs(ds.zarrec.update_residual(param)).max()) <= 4e-7 * np.abs(W).max()
        np.testing.assert_allclose(ds.zarrec.realized_fraction(param).overall, 1, rtol=1e-3)
        close(ds.zarrec.intended_update(param).total, adamw_reference(ds, param), rtol=1e-4, atol=1e-9)
        close(ds.zarrec.adam_update(param).total, adamw_reference(ds, param), rtol=1e-4, atol=1e-9)
        rows_last = tuple(range(2, W.ndim))
        close(ds.zarrec.speed(param), np.sqrt(((W[1:] - W[:-1]) ** 2).sum(rows_last)))
        close(ds.zarrec.norms(param), np.sqrt((W**2).sum(rows_last)))
        close(ds.zarrec.velocity(param), W[1:] - W[:-1])
    view = ds.zarrec.parameter(LAYER)
    assert view["param"].dims == ("step", "row", "col") and view.grad.dims == view.param.dims
    assert ds.zarrec.speed(LAYER).sel(row=3).dims == ("step",)  # .sel by keyword, on an index coordinate
    W = ds[LAYER].values.astype(np.float64)
    close(ds.zarrec.centroid(LAYER), W.mean(1))
    close(ds.zarrec.spread(LAYER), np.linalg.norm(W - W.mean(1, keepdims=True), axis=-1).mean(1))
    forces = ds.zarrec.force_decomposition(LAYER)
    g = ds[f"{LAYER}.grad"].values.astype(np.float64)[1:]
    motion = W[1:] - W[:-1]
    close(forces.along_grad, (motion * -g).sum(-1) / np.linalg.norm(g, axis=-1), rtol=1e-4)
    assert ds.zarrec.pca(LAYER, n=2).projection.dims == ("step", "row", "component")
    with pytest.raises(ConfigError, match="records 3 parameters and no input embedding; name one"):
        ds.zarrec.speed()
    with pytest.raises(ConfigError, match="the live/dead split is over tokens"):
        ds.zarrec.norms(LAYER, split=True)


def test_sgd_with_momentum_has_its_own_update_identity(sgd_run):
    ds = xr.open_zarr(sgd_run)
    overview = ds.zarrec.parameters()
    assert set(overview.optimizer.values) == {"SGD"} and "adam_beta1" not in ds.attrs  # only its own hyperparameters
    assert "momentum_buffer" in str(overview.quantities.sel(param=LAYER).values)
    for param in ("transformer.wte.weight", *LAYER_PARAMS):
        W = ds.zarrec.parameter(param).param.values.astype(np.float64)
        assert float(np.abs(ds.zarrec.update_residual(param)).max()) <= 4e-7 * np.abs(W).max()
        if param != "transformer.h.0.ln_1.weight":  # its updates (~1e-9 at 1.0) are below float32's resolution
            np.testing.assert_allclose(ds.zarrec.realized_fraction(param).overall, 1, rtol=1e-3)
    buffer = ds[f"{LAYER}.momentum_buffer"].values.astype(np.float64)
    close(ds.zarrec.intended_update(LAYER).momentum_step, -ds.lr.values[1:, None, None] * buffer[1:], rtol=1e-5)
    assert ds.zarrec.force_decomposition(LAYER).cos_momentum.notnull().any()
    with pytest.raises(ConfigError, match="was recorded with SGD, not Adam; its update is intended_update"):
        ds.zarrec.adam_update(LAYER)
    with pytest.raises(ConfigError, match=f"the store has no momentum_buffer of {LAYER} \\(recorded with SGD: it has param, grad\\)"):
        full_state_only(ds.drop_vars(f"{LAYER}.momentum_buffer")).zarrec.realized_fraction(LAYER)


def test_the_whole_model_at_a_glance_matches_numpy(layers_run):
    ds = xr.open_zarr(layers_run)
    statistics, full_state = ds.zarrec.by_parameter(), full_state_only(ds).zarrec.by_parameter()
    assert statistics.realized_fraction.dims == full_state.realized_fraction.dims == ("step", "param")
    assert list(full_state.param.values) == ds.attrs["recorded_params"]  # model order: ln_1 before attn
    assert list(statistics.param.values)[:2] == ["transformer.wte.weight", "transformer.wpe.weight"]  # every trained one
    for param, overview in itertools.product(LAYER_PARAMS, (statistics, full_state)):
        W, g = ds[param].values.astype(np.float64), ds[f"{param}.grad"].values.astype(np.float64)
        every = tuple(range(1, W.ndim))
        actual, intended = W[1:] - W[:-1], adamw_reference(ds, param)
        column = overview.sel(param=param)
        close(column.realized_fraction, (actual * intended).sum(every) / (intended**2).sum(every), rtol=1e-4)
        moved, norm = np.sqrt((actual**2).sum(every)), np.sqrt((W[:-1] ** 2).sum(every))
        close(column.update_to_weight, np.divide(moved, norm, out=np.full_like(moved, np.nan), where=norm != 0), rtol=1e-5)
        close(column.grad_norm, np.sqrt((g[1:] ** 2).sum(every)), rtol=1e-5)
    assert statistics.attrs["not_computed"] == full_state.attrs["not_computed"] == {}
    ds = full_state_only(ds)
    partial = ds.drop_vars(f"{LAYER}.exp_avg_sq").zarrec.by_parameter()
    assert partial.realized_fraction.sel(param=LAYER).isnull().all()
    assert "no exp_avg_sq of transformer.h.0.attn.c_attn.weight" in partial.attrs["not_computed"][f"realized_fraction of {LAYER}"]
    no_values = ds.drop_vars(LAYER).zarrec.by_parameter()  # its gradient and moments, but not the matrix itself
    assert no_values.grad_norm.sel(param=LAYER).isnull().all() and no_values.grad_norm.notnull().any()
    assert f"the store has no param of {LAYER}" in no_values.attrs["not_computed"][f"grad_norm of {LAYER}"]


@pytest.mark.parametrize(("kind", "param"), [("lightning_run", "out.weight"), ("readme_stores", "1.weight")])
def test_every_method_on_a_layer_of_a_lightning_and_a_plain_loop_store(kind, param, request):
    """The same analysis on a Lightning store and on the README's plain loop: AdamW's identity holds."""
    store = request.getfixturevalue(kind)
    ds = xr.open_zarr(store / "run.zarr" if kind == "readme_stores" else store)
    W = ds[param].values.astype(np.float64)
    assert ds[param].dims == ds[f"{param}.grad"].dims == ds[f"{param}.exp_avg"].dims
    assert float(np.abs(ds.zarrec.update_residual(param)).max()) <= 4e-7 * np.abs(W).max()
    np.testing.assert_allclose(ds.zarrec.realized_fraction(param).overall, 1, rtol=1e-3)
    close(ds.zarrec.adam_update(param).total, adamw_reference(ds, param), rtol=1e-4, atol=1e-9)
    for method in ("velocity", "speed", "norms", "centroid", "spread", "force_decomposition", "pca"):
        result = getattr(ds.zarrec, method)(param).compute()
        assert result.sizes["step"] >= ds.sizes["step"] - 1 and "row" in result.dims or method in ("centroid", "spread")
    overview = ds.zarrec.by_parameter()
    assert param in overview.param.values and overview.attrs["not_computed"] == {}

"""Each analysis function against a hand-computed numpy reference, and on a real recorded run."""

from __future__ import annotations

import shutil

import dask.array
import numpy as np
import pytest
import torch
import xarray as xr
from zarr.storage import LocalStore, WrapperStore

import zarrec  # noqa: F401  (registers ds.zarrec)
from conftest import LAYER, LAYER_PARAMS, synthetic_dataset
from zarrec import ConfigError, analysis


@pytest.fixture
def ds() -> xr.Dataset:
    return synthetic_dataset()


def arrays(ds):
    a = ds.attrs
    return (ds.embeddings.values.astype(np.float64), ds.grads.values.astype(np.float64), ds.momentum.values.astype(np.float64),
            ds.variance.values.astype(np.float64), ds.lr.values.astype(np.float64), ds.step.values, ds.live.values, a)


def close(actual: xr.DataArray, expected: np.ndarray, rtol=1e-5, atol=1e-7):
    assert isinstance(actual.data, dask.array.Array), "results stay lazy"
    np.testing.assert_allclose(actual.values, expected, rtol=rtol, atol=atol)


def test_live_and_dead(ds):
    live = ds.live.values
    np.testing.assert_array_equal(analysis.live(ds).token, np.flatnonzero(live))
    np.testing.assert_array_equal(analysis.dead(ds).token, np.flatnonzero(~live))
    assert ds.zarrec.live().sizes["token"] + ds.zarrec.dead().sizes["token"] == ds.sizes["token"]


def test_velocity_and_speed(ds):
    W = arrays(ds)[0]
    velocity = analysis.velocity(ds)
    assert velocity.dims == ("step", "token", "dim")
    np.testing.assert_array_equal(velocity.step, ds.step[1:])
    close(velocity, W[1:] - W[:-1])
    close(analysis.speed(ds), np.linalg.norm(W[1:] - W[:-1], axis=-1))


def test_centroid_spread_norms_and_their_live_dead_split(ds):
    W, *_, live, _ = arrays(ds)
    close(analysis.centroid(ds), W.mean(1))
    c = W.mean(1, keepdims=True)
    close(analysis.spread(ds), np.linalg.norm(W - c, axis=-1).mean(1))
    close(analysis.norms(ds), np.linalg.norm(W, axis=-1))
    split_centroid = analysis.centroid(ds, split=True)
    assert split_centroid.dims == ("population", "step", "dim")
    close(split_centroid.sel(population="live"), W[:, live].mean(1))
    close(split_centroid.sel(population="dead"), W[:, ~live].mean(1))
    dead = W[:, ~live]
    close(analysis.spread(ds, split=True).sel(population="dead"),
          np.linalg.norm(dead - dead.mean(1, keepdims=True), axis=-1).mean(1))
    close(analysis.norms(ds, split=True).sel(population="live"), np.linalg.norm(W[:, live], axis=-1).mean(1))


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


def test_logit_stats(ds):
    z = ds.logits.values.astype(np.float64)
    live = ds.live.values
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    stats = analysis.logit_stats(ds)
    close(stats["range"], z.max(1) - z.min(1))
    close(stats["std"], z.std(1))
    close(stats["entropy"], -(p * np.log(p)).sum(1))
    close(stats["live_mass"], p[:, live].sum(1))
    close(stats["dead_mass"], p[:, ~live].sum(1))
    assert stats["entropy"].attrs["max_entropy"] == pytest.approx(np.log(ds.sizes["token"]))


def test_uniform_logits_have_zero_range_and_maximal_entropy(ds):
    uniform = ds.copy().assign(logits=ds.logits * 0 + 7.6875)
    stats = analysis.logit_stats(uniform).compute()
    assert (stats["range"] == 0).all()
    np.testing.assert_allclose(stats["entropy"], np.log(ds.sizes["token"]), rtol=1e-6)


def test_pca_matches_numpy_svd(ds):
    W = arrays(ds)[0]
    X = W.reshape(-1, W.shape[-1])
    centred = X - X.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    result = analysis.pca(ds, n=2)
    components = result["components"].values
    for k in range(2):
        sign = np.sign(vt[k][np.abs(vt[k]).argmax()])
        np.testing.assert_allclose(components[k], sign * vt[k], atol=1e-6)
    np.testing.assert_allclose(result["explained_variance_ratio"], (singular**2 / (singular**2).sum())[:2], rtol=1e-6)
    close(result["projection"], (W - X.mean(0)) @ components.T, rtol=1e-5, atol=1e-6)
    assert result["projection"].dims == ("step", "token", "component")
    with pytest.raises(ConfigError, match="pca needs 1 <= n <= 4"):
        analysis.pca(ds, n=5)


def test_missing_variables_and_attributes_are_clear_errors(ds):
    with pytest.raises(ConfigError, match=r"the store has no exp_avg of embeddings \(recorded with AdamW: it has param"):
        analysis.adam_update(ds.drop_vars("momentum"))
    no_attrs = ds.copy()
    no_attrs.attrs = {}
    with pytest.raises(ConfigError, match="embeddings has no recorded optimizer; the intended update is known for AdamW"):
        analysis.adam_update(no_attrs)
    with pytest.raises(ConfigError, match="no 'live' coordinate"):
        analysis.live(ds.drop_vars("live"))
    with pytest.raises(ConfigError, match="'q' is not a recorded parameter; this store records embeddings"):
        analysis.speed(ds, "q")


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


def test_speed_of_one_token_reads_only_the_embeddings(tmp_path, float32_run):
    """Corrupt every chunk of the other variables: speed() still computes, so it never read them."""
    store = tmp_path / "run.zarr"
    shutil.copytree(float32_run.path, store)
    for name in ("grads", "momentum", "variance", "logits", "loss", "lr"):
        for chunk in (store / name / "c").rglob("*"):
            if chunk.is_file():
                chunk.write_bytes(b"not a blosc frame")
    ds = xr.open_zarr(store)
    expected = np.linalg.norm(np.diff(xr.open_zarr(float32_run.path).embeddings.values[:, 5], axis=0), axis=-1)
    np.testing.assert_allclose(ds.zarrec.speed().sel(token=5).values, expected, rtol=1e-6)
    with pytest.raises(Exception):
        ds.grads.values  # the corruption is real


class CountingReads(WrapperStore):
    """A real local store that counts the bytes read from it (whole objects and byte ranges)."""

    def __init__(self, store, counter: dict | None = None) -> None:
        super().__init__(store)
        self.counter = counter if counter is not None else {"bytes": 0}

    def _with_store(self, store):
        return CountingReads(store, self.counter)

    async def get(self, key, prototype, byte_range=None):
        value = await self._store.get(key, prototype, byte_range)
        self.counter["bytes"] += len(value) if value is not None else 0
        return value


@pytest.fixture(scope="module")
def many_rows(tmp_path_factory):
    """A format-2 store whose shards hold 8 inner chunks of rows (16 steps × 256 rows × 256 B = 1 MiB each)."""
    path = tmp_path_factory.mktemp("rows") / "run.zarr"
    rng = np.random.default_rng(0)
    attrs = {"adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "weight_decay": 0.01}
    with zarrec.Recorder(path, chunk_steps=16, attrs=attrs) as recorder:
        for step in range(32):
            values = {name: rng.normal(size=(2048, 64)).astype(np.float32) for name in ("embeddings", "grads", "momentum")}
            values["variance"] = rng.uniform(1e-4, 1e-2, size=(2048, 64)).astype(np.float32)
            recorder.record(step, lr=1e-3, **{name: torch.from_numpy(value) for name, value in values.items()})
    return path


@pytest.mark.parametrize(
    ("expression", "variables"),
    [
        ("ds.embeddings.sel(token=1000)", ["embeddings"]),
        ("ds.zarrec.velocity().sel(token=1000)", ["embeddings"]),
        ("ds.zarrec.speed().sel(token=1000)", ["embeddings"]),
        ("ds.isel(token=[1000, 1001]).zarrec.speed()", ["embeddings"]),
        ("ds.zarrec.norms().sel(token=1000)", ["embeddings"]),
        ("ds.zarrec.adam_update().total.sel(token=1000)", ["embeddings", "momentum", "variance"]),
        ("ds.zarrec.update_residual().sel(token=1000)", ["embeddings", "momentum", "variance"]),
        ("ds.zarrec.realized_fraction().per_row.sel(token=1000)", ["embeddings", "momentum", "variance"]),
        ("ds.isel(token=[1000]).zarrec.realized_fraction().overall", ["embeddings", "momentum", "variance"]),
        ("ds.zarrec.force_decomposition().cos_grad.sel(token=1000)", ["embeddings", "grads", "momentum"]),
    ],
)
def test_a_selection_reads_only_its_rows_inner_chunks(many_rows, expression, variables):
    """Selecting one token (first or last) reads one inner chunk of 8 per shard of what the formula uses."""
    stored = sum(f.stat().st_size for name in variables for f in (many_rows / name / "c").rglob("*") if f.is_file())
    store = CountingReads(LocalStore(many_rows, read_only=True))
    ds = xr.open_zarr(store)
    before = store.counter["bytes"]
    result = eval(expression, {"ds": ds}).values
    read = store.counter["bytes"] - before
    assert np.isfinite(result).any()
    assert read < stored / 8 * 1.2, (read, stored)  # one inner chunk of 8, its shard's index, small arrays
    whole = store.counter["bytes"]
    ds.embeddings.values
    assert store.counter["bytes"] - whole >= stored / len(variables) * 0.99  # the counter sees every byte


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


def test_the_store_says_each_parameters_weight_decay_as_the_trainer_applied_it(layers_run, tiny_config):
    """The Trainer decays matrices, not biases or LayerNorm weights."""
    decay = xr.open_zarr(layers_run).zarrec.parameters().weight_decay
    assert float(decay.sel(param=LAYER)) == tiny_config.weight_decay > 0
    assert float(decay.sel(param="transformer.h.0.attn.c_attn.bias")) == 0.0
    assert float(decay.sel(param="transformer.h.0.ln_1.weight")) == 0.0


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
        ds.drop_vars(f"{LAYER}.momentum_buffer").zarrec.realized_fraction(LAYER)


def test_the_whole_model_at_a_glance_matches_numpy(layers_run):
    ds = xr.open_zarr(layers_run)
    overview = ds.zarrec.by_parameter()
    assert overview.realized_fraction.dims == ("step", "param")
    assert list(overview.param.values) == ds.attrs["recorded_params"]  # model order: ln_1 before attn
    for param in LAYER_PARAMS:
        W, g = ds[param].values.astype(np.float64), ds[f"{param}.grad"].values.astype(np.float64)
        every = tuple(range(1, W.ndim))
        actual, intended = W[1:] - W[:-1], adamw_reference(ds, param)
        column = overview.sel(param=param)
        close(column.realized_fraction, (actual * intended).sum(every) / (intended**2).sum(every), rtol=1e-4)
        moved, norm = np.sqrt((actual**2).sum(every)), np.sqrt((W[:-1] ** 2).sum(every))
        close(column.update_to_weight, np.divide(moved, norm, out=np.full_like(moved, np.nan), where=norm != 0), rtol=1e-5)
        close(column.grad_norm, np.sqrt((g[1:] ** 2).sum(every)), rtol=1e-5)
    assert overview.attrs["not_computed"] == {}
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

"""What the analysis knows of each recorded parameter: the live/dead split, clear errors for what a
store lacks, the hyperparameters it says, and lazy reads of one row's inner chunks only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from zarr.storage import LocalStore, WrapperStore

import zarrec  # noqa: F401  (registers ds.zarrec)
from conftest import LAYER
from zarrec import ConfigError, analysis


def test_live_and_dead(ds):
    live = ds.live.values
    np.testing.assert_array_equal(analysis.live(ds).token, np.flatnonzero(live))
    np.testing.assert_array_equal(analysis.dead(ds).token, np.flatnonzero(~live))
    assert ds.zarrec.live().sizes["token"] + ds.zarrec.dead().sizes["token"] == ds.sizes["token"]


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


def test_the_store_says_each_parameters_weight_decay_as_the_trainer_applied_it(layers_run, tiny_config):
    """The Trainer decays matrices, not biases or LayerNorm weights."""
    decay = xr.open_zarr(layers_run).zarrec.parameters().weight_decay
    assert float(decay.sel(param=LAYER)) == tiny_config.weight_decay > 0
    assert float(decay.sel(param="transformer.h.0.attn.c_attn.bias")) == 0.0
    assert float(decay.sel(param="transformer.h.0.ln_1.weight")) == 0.0


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

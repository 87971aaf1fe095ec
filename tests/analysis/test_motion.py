"""How rows move, against a hand-computed numpy reference, and what speed() reads."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import xarray as xr

import zarrec  # noqa: F401  (registers ds.zarrec)
from conftest import arrays, close
from zarrec import ConfigError, analysis


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

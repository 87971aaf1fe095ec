"""How the rows of a parameter move: velocity and speed between recorded steps, the centroid,
spread and norms of the rows, and their trajectories in principal axes (:func:`pca`)."""

from __future__ import annotations

import dask
import numpy as np
import xarray as xr

from zarrec.analysis import rows_on_demand
from zarrec.analysis.parameters import (
    COMPONENT,
    W,
    find_parameter,
    from_second_row,
    motion,
    norm,
    parameter,
    plain_dims,
    rows_and_features,
    split_live_dead,
    view_of,
)
from zarrec.errors import ConfigError
from zarrec.store import contract


def velocity(ds: xr.Dataset, param: str | None = None) -> xr.DataArray:
    """Motion of every row of ``param`` between consecutive recorded steps.

    ``velocity[t] = W[t] − W[t_prev]``, labelled with ``t`` (``t_prev`` is the previous
    recorded step: ``t − 1`` when every step was recorded).
    """
    return from_second_row(motion(parameter(ds, param))).rename("velocity")


def speed(ds: xr.Dataset, param: str | None = None) -> xr.DataArray:
    """``speed[t, row] = ‖W[t, row] − W[t_prev, row]‖₂`` over the row's entries. Of a long
    run's large parameter as opened from its store, read on demand: a selection of rows reads
    those rows only (:mod:`zarrec.analysis.rows_on_demand`)."""
    found = find_parameter(ds, param)
    stored = found.variables.get(W)
    on_demand = rows_on_demand.on_demand(ds, stored, rows_on_demand.speed_of_rows, "speed") if stored else None
    if on_demand is not None:
        return on_demand.rename(plain_dims(ds[stored].dims[1:]))
    view = view_of(ds, found)
    return norm(from_second_row(motion(view)), rows_and_features(view)[1]).rename("speed")


def centroid(ds: xr.Dataset, param: str | None = None, split: bool = False) -> xr.DataArray:
    """``centroid[t] = mean over rows of W[t]`` (with ``split``, per population of tokens)."""
    view = parameter(ds, param)
    rows = rows_and_features(view)[0]
    return split_live_dead(lambda v: v[W].mean(rows).rename("centroid"), view, split)


def spread(ds: xr.Dataset, param: str | None = None, split: bool = False) -> xr.DataArray:
    """``spread[t] = mean over rows of ‖W[t, row] − centroid[t]‖₂``: mean distance to the centroid."""
    view = parameter(ds, param)
    rows, features = rows_and_features(view)
    return split_live_dead(lambda v: norm(v[W] - v[W].mean(rows), features).mean(rows).rename("spread"), view, split)


def norms(ds: xr.Dataset, param: str | None = None, split: bool = False) -> xr.DataArray:
    """``norm[t, row] = ‖W[t, row]‖₂``; with ``split``, its mean over live and over dead tokens."""
    view = parameter(ds, param)
    rows, features = rows_and_features(view)
    if split:
        return split_live_dead(lambda v: norm(v[W], features).mean(rows).rename("norm"), view, True)
    return norm(view[W], features).rename("norm")


def pca(ds: xr.Dataset, param: str | None = None, n: int = 2) -> xr.Dataset:
    """Project every row's trajectory on the ``n`` principal axes shared by all steps and rows.

    With ``X`` the ``(step·row, entries)`` matrix of ``param`` and ``μ`` its mean row, the axes
    are the top eigenvectors of ``C = (X − μ)ᵀ(X − μ) / N = XᵀX / N − μμᵀ`` (one pass over the
    chunks, in float64);
    ``projection[t, row, k] = ⟨W[t, row] − μ, axis_k⟩``. Returns ``projection``,
    ``components (component, entry)``, ``explained_variance_ratio`` and ``mean``. Each axis is
    signed so that its largest entry is positive. For a parameter with 2 dims.
    """
    view = parameter(ds, param)
    rows, features = rows_and_features(view)
    if len(features) != 1:
        raise ConfigError(f"pca projects rows of a matrix; {view.attrs['name']} has {len(features) + 1} dims")
    (entries,) = features
    X = view[W]
    if not 1 <= n <= X.sizes[entries]:
        raise ConfigError(f"pca needs 1 <= n <= {X.sizes[entries]} (the size of {entries}), got {n}")
    samples, count = [contract.STEP, rows], X.sizes[contract.STEP] * X.sizes[rows]
    wide = X.astype(np.float64)  # (the second moment less the mean's square: float64 keeps it exact enough)
    total, gram = dask.compute(wide.sum(samples), xr.dot(wide, wide.rename({entries: f"{entries}_"}), dim=samples))
    mean = (total / count).astype(X.dtype)
    covariance = gram.values / count - np.outer(total.values, total.values) / count**2
    centred = X - mean
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1][:n]
    axes = eigenvectors[:, order].T
    axes *= np.sign(axes[np.arange(n), np.abs(axes).argmax(axis=1)])[:, None]
    components = xr.DataArray(axes, dims=(COMPONENT, entries), coords={COMPONENT: np.arange(n), entries: X[entries]})
    total = eigenvalues.sum()
    ratio = eigenvalues[order] / total if total > 0 else np.full(n, np.nan)
    return xr.Dataset(
        {
            "projection": xr.dot(centred, components, dim=entries),
            "components": components,
            "explained_variance_ratio": xr.DataArray(ratio, dims=COMPONENT),
            "mean": mean,
        }
    )

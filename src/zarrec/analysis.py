"""Analysis of a recorded run: plain functions from an xarray Dataset to xarray objects.

Each function takes the Dataset of ``xr.open_zarr(store)`` and returns a lazy
(dask-backed) DataArray or Dataset: nothing is read until ``.compute()``, ``.values``
or a plot asks for it, and then only the variables the formula uses, chunk by chunk.
The formulas use the store contract (:mod:`zarrec.contract`): ``W = embeddings``,
``g = grads``, ``m = momentum``, ``v = variance``, and the run's hyperparameters
from the attributes. Quantities about the motion between two steps are labelled
with the later step and start at the second recorded step.

The ``ds.zarrec`` accessor (:mod:`zarrec.accessor`) forwards to these functions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import xarray as xr

from zarrec import contract
from zarrec.errors import ConfigError

POPULATION = "population"  # dimension of the live/dead split
COMPONENT = "component"  # dimension of principal components


def _require(ds: xr.Dataset, *names: str) -> None:
    missing = [name for name in names if name not in ds.variables]
    if missing:
        raise ConfigError(
            f"this dataset has no {', '.join(missing)}; it has {sorted(map(str, ds.variables))}. "
            "Open a store written by zarrec (xr.open_zarr) that recorded them"
        )


def _attr(ds: xr.Dataset, name: str) -> float:
    if name not in ds.attrs:
        raise ConfigError(f"this dataset has no {name!r} attribute; the formula needs the run's {name}")
    return float(ds.attrs[name])


def _norm(da: xr.DataArray, dim: str | list[str] = contract.DIM) -> xr.DataArray:
    return np.sqrt((da**2).sum(dim, skipna=False))


def _safe_ratio(numerator: xr.DataArray, denominator: xr.DataArray) -> xr.DataArray:
    """numerator / denominator, NaN (no warning) where the denominator is 0."""
    return numerator / denominator.where(denominator != 0)


def live_mask(ds: xr.Dataset) -> np.ndarray:
    """The `live` coordinate as a numpy bool array (it is small: one entry per token)."""
    _require(ds, contract.LIVE)
    return np.asarray(ds[contract.LIVE].values, dtype=bool)


def live(ds: xr.Dataset) -> xr.Dataset:
    """The dataset restricted to live tokens (``live == True``: the token occurs in the corpus)."""
    return ds.isel({contract.TOKEN: np.flatnonzero(live_mask(ds))})


def dead(ds: xr.Dataset) -> xr.Dataset:
    """The dataset restricted to dead tokens (``live == False``: never in the corpus)."""
    return ds.isel({contract.TOKEN: np.flatnonzero(~live_mask(ds))})


def _split(function: Callable[[xr.Dataset], xr.DataArray], ds: xr.Dataset, split: bool) -> xr.DataArray:
    """``function(ds)``, or with ``split`` its values on live and on dead tokens along ``population``."""
    if not split:
        return function(ds)
    parts = [function(live(ds)), function(dead(ds))]
    return xr.concat(parts, dim=pd.Index(["live", "dead"], name=POPULATION), coords="minimal", compat="override")


def _from_second_row(da: xr.DataArray) -> xr.DataArray:
    """Drop the first recorded step, which has no predecessor.

    Formulas are computed on full-length arrays (``shift`` keeps dask chunks aligned, so
    each chunk is computed from the same chunks of every input) and trimmed last.
    """
    return da.isel({contract.STEP: slice(1, None)})


def _motion(ds: xr.Dataset) -> xr.DataArray:
    """``W[t] − W[t_prev]`` on every row (NaN on the first)."""
    W = ds[contract.EMBEDDINGS]
    return W - W.shift({contract.STEP: 1})


def velocity(ds: xr.Dataset) -> xr.DataArray:
    """Motion of every token between consecutive recorded steps.

    ``velocity[t] = W[t] − W[t_prev]``, labelled with ``t`` (``t_prev`` is the previous
    recorded step: ``t − 1`` when every step was recorded).
    """
    _require(ds, contract.EMBEDDINGS)
    return _from_second_row(_motion(ds)).rename("velocity")


def speed(ds: xr.Dataset) -> xr.DataArray:
    """``speed[t, token] = ‖W[t] − W[t_prev]‖₂`` over ``dim``."""
    return _norm(velocity(ds)).rename("speed")


def centroid(ds: xr.Dataset, split: bool = False) -> xr.DataArray:
    """``centroid[t] = mean over tokens of W[t]`` (``(step, dim)``; with ``split``, per population)."""
    _require(ds, contract.EMBEDDINGS)
    return _split(lambda d: d[contract.EMBEDDINGS].mean(contract.TOKEN).rename("centroid"), ds, split)


def spread(ds: xr.Dataset, split: bool = False) -> xr.DataArray:
    """``spread[t] = mean over tokens of ‖W[t, token] − centroid[t]‖₂``: mean distance to the centroid."""
    _require(ds, contract.EMBEDDINGS)

    def mean_distance(d: xr.Dataset) -> xr.DataArray:
        W = d[contract.EMBEDDINGS]
        return _norm(W - W.mean(contract.TOKEN)).mean(contract.TOKEN).rename("spread")

    return _split(mean_distance, ds, split)


def norms(ds: xr.Dataset, split: bool = False) -> xr.DataArray:
    """``norm[t, token] = ‖W[t, token]‖₂``; with ``split``, its mean over live and over dead tokens."""
    _require(ds, contract.EMBEDDINGS)
    if split:
        return _split(lambda d: _norm(d[contract.EMBEDDINGS]).mean(contract.TOKEN).rename("norm"), ds, True)
    return _norm(ds[contract.EMBEDDINGS]).rename("norm")


def _previous_embeddings(ds: xr.Dataset) -> xr.DataArray:
    """``W[t − 1]`` on every row: NaN where step t − 1 was not recorded (and on the first row)."""
    steps = ds[contract.STEP]
    consecutive = (steps - steps.shift({contract.STEP: 1})) == 1
    return ds[contract.EMBEDDINGS].shift({contract.STEP: 1}).where(consecutive)


def _adam_terms(ds: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    """The Adam step and the weight-decay term of :func:`adam_update`, on every row."""
    _require(ds, contract.EMBEDDINGS, contract.MOMENTUM, contract.VARIANCE, contract.LR)
    beta1, beta2 = _attr(ds, "adam_beta1"), _attr(ds, "adam_beta2")
    eps, wd = _attr(ds, "adam_epsilon"), _attr(ds, "weight_decay")
    t = ds[contract.STEP].astype("float64")
    t = t.where(t > 0)  # step 0 has no update (and no bias correction)
    lr = ds[contract.LR]
    m_hat = ds[contract.MOMENTUM] / (1 - beta1**t)
    v_hat = ds[contract.VARIANCE] / (1 - beta2**t)
    return -lr * m_hat / (np.sqrt(v_hat) + eps), -lr * wd * _previous_embeddings(ds)


def adam_update(ds: xr.Dataset) -> xr.Dataset:
    """The update AdamW intended at each step t, from the recorded state and hyperparameters.

    With ``m̂[t] = m[t] / (1 − β1ᵗ)`` and ``v̂[t] = v[t] / (1 − β2ᵗ)`` (the bias corrections
    of step t)::

        adam_step[t]    = −lr[t] · m̂[t] / (√v̂[t] + eps)
        weight_decay[t] = −lr[t] · wd · W[t − 1]          (decoupled weight decay)
        total[t]        = adam_step[t] + weight_decay[t]

    ``β1, β2, eps, wd`` are the attributes ``adam_beta1``, ``adam_beta2``, ``adam_epsilon``
    and ``weight_decay``. ``weight_decay`` and ``total`` are NaN where step t − 1 was not recorded.
    """
    adam_step, decay = _adam_terms(ds)
    terms = {"adam_step": adam_step, "weight_decay": decay, "total": adam_step + decay}
    return xr.Dataset({name: _from_second_row(term) for name, term in terms.items()})


def _actual_and_intended(ds: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    """``W[t] − W[t − 1]`` and AdamW's intended total update, on every row."""
    adam_step, decay = _adam_terms(ds)
    return ds[contract.EMBEDDINGS] - _previous_embeddings(ds), adam_step + decay


def update_residual(ds: xr.Dataset) -> xr.DataArray:
    """``residual[t] = (W[t] − W[t − 1]) − adam_update.total[t]``: what the parameters did not take.

    At float32 rounding (≈1e-7·|W|) on a float32 run; on a bf16 run, the part of the
    intended update that bf16 rounding swallowed.
    """
    actual, intended = _actual_and_intended(ds)
    return _from_second_row(actual - intended).rename("update_residual")


def realized_fraction(ds: xr.Dataset) -> xr.Dataset:
    """How much of AdamW's intended update landed, with ``a = W[t] − W[t−1]`` and ``u = adam_update.total``.

    ``per_token[t, token] = ⟨a, u⟩ / ⟨u, u⟩`` over ``dim``; ``overall[t]`` the same over
    ``token`` and ``dim``. Exactly 1 where every intended update landed; 0 where none did
    (as when bf16 parameters round a small update away).
    """
    actual, intended = _actual_and_intended(ds)
    dims = [contract.TOKEN, contract.DIM]
    fractions = {
        "per_token": _safe_ratio((actual * intended).sum(contract.DIM), (intended**2).sum(contract.DIM)),
        "overall": _safe_ratio((actual * intended).sum(dims), (intended**2).sum(dims)),
    }
    return xr.Dataset({name: _from_second_row(fraction) for name, fraction in fractions.items()})


def force_decomposition(ds: xr.Dataset) -> xr.Dataset:
    """Components of each token's motion ``a[t] = W[t] − W[t_prev]`` along −grad and along −momentum.

    ``cos_grad = ⟨a, −g[t]⟩ / (‖a‖‖g[t]‖)``, ``along_grad = ⟨a, −g[t]⟩ / ‖g[t]‖`` (signed length
    of the motion along −g); likewise ``cos_momentum`` and ``along_momentum`` with ``m[t]``
    (the same direction as the bias-corrected ``m̂[t]``). Per ``(step, token)``.
    """
    _require(ds, contract.EMBEDDINGS, contract.GRADS, contract.MOMENTUM)
    motion = _motion(ds)
    motion_norm = _norm(motion)
    result = {}
    for name, force in (("grad", ds[contract.GRADS]), ("momentum", ds[contract.MOMENTUM])):
        along = (motion * -force).sum(contract.DIM)
        force_norm = _norm(force)
        result[f"cos_{name}"] = _from_second_row(_safe_ratio(along, motion_norm * force_norm))
        result[f"along_{name}"] = _from_second_row(_safe_ratio(along, force_norm))
    return xr.Dataset(result)


def logit_stats(ds: xr.Dataset) -> xr.Dataset:
    """Per step, how spread the recorded logits ``z[t, token]`` are.

    ``range = max z − min z``; ``std`` (population, over tokens); ``entropy = −Σ p log p`` in
    nats with ``p = softmax(z)`` (uniform logits give ``ln V``, stored as the attribute
    ``max_entropy``); ``live_mass = Σ_live p`` and ``dead_mass = Σ_dead p``.
    """
    _require(ds, contract.LOGITS)
    z = ds[contract.LOGITS]
    token = contract.TOKEN
    shifted = z - z.max(token, skipna=False)
    log_p = shifted - np.log(np.exp(shifted).sum(token, skipna=False))
    p = np.exp(log_p)
    entropy = -(p * log_p).sum(token, skipna=False)
    entropy.attrs["max_entropy"] = float(np.log(z.sizes[token]))
    stats = {
        "range": z.max(token, skipna=False) - z.min(token, skipna=False),
        "std": z.std(token, skipna=False),
        "entropy": entropy,
    }
    if contract.LIVE in ds.coords or contract.LIVE in ds:
        mask = xr.DataArray(live_mask(ds), dims=token)
        stats["live_mass"] = p.where(mask, 0).sum(token, skipna=False)
        stats["dead_mass"] = p.where(~mask, 0).sum(token, skipna=False)
    return xr.Dataset(stats)


def pca(ds: xr.Dataset, n: int = 2, variable: str = contract.EMBEDDINGS) -> xr.Dataset:
    """Project every token's trajectory on the ``n`` principal axes shared by all steps and tokens.

    With ``X`` the ``(step·token, dim)`` matrix of ``variable`` and ``μ`` its mean row, the axes
    are the top eigenvectors of ``C = (X − μ)ᵀ(X − μ) / N`` (computed chunk by chunk);
    ``projection[t, token, k] = ⟨W[t, token] − μ, axis_k⟩``. Returns ``projection``,
    ``components (component, dim)``, ``explained_variance_ratio`` and ``mean``. Each axis is
    signed so that its largest entry is positive.
    """
    _require(ds, variable)
    X = ds[variable]
    if not 1 <= n <= X.sizes[contract.DIM]:
        raise ConfigError(f"pca needs 1 <= n <= {X.sizes[contract.DIM]} (the size of dim), got {n}")
    samples = [contract.STEP, contract.TOKEN]
    mean = X.mean(samples).compute()
    centred = X - mean
    other = centred.rename({contract.DIM: "dim_"})
    covariance = xr.dot(centred, other, dim=samples).compute().values / (X.sizes[contract.STEP] * X.sizes[contract.TOKEN])
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1][:n]
    axes = eigenvectors[:, order].T
    axes *= np.sign(axes[np.arange(n), np.abs(axes).argmax(axis=1)])[:, None]
    components = xr.DataArray(axes, dims=(COMPONENT, contract.DIM), coords={COMPONENT: np.arange(n), contract.DIM: X[contract.DIM]})
    total = eigenvalues.sum()
    ratio = eigenvalues[order] / total if total > 0 else np.full(n, np.nan)
    return xr.Dataset(
        {
            "projection": xr.dot(centred, components, dim=contract.DIM),
            "components": components,
            "explained_variance_ratio": xr.DataArray(ratio, dims=COMPONENT),
            "mean": mean,
        }
    )

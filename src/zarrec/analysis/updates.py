"""The optimizer's updates, from the recorded state: what it intended (the update identity of
AdamW, Adam and SGD), what landed (the realized fraction, the residual), the forces along the
gradient and the momentum, per-row statistics, and the whole model at a glance (:func:`by_parameter`).

Each function returns a lazy (dask-backed) DataArray or Dataset: nothing is read until
``.compute()``, ``.values`` or a plot asks for it, and then only the variables the formula
uses, chunk by chunk. The ``ds.zarrec`` accessor (:mod:`zarrec.analysis.accessor`) forwards here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from zarrec.analysis import statistics
from zarrec.analysis.parameters import (
    GRAD,
    NO_PARAMETER,
    PARAM_DIM,
    W,
    find_parameter,
    from_second_row,
    motion,
    norm,
    parameter,
    previous,
    recorded_parameters,
    require,
    rows_and_features,
    safe_ratio,
    sum_over,
    view_of,
    with_previous_step,
)
from zarrec.errors import ConfigError
from zarrec.store import contract

UPDATE_IDENTITIES = ("AdamW", "Adam", "SGD")


def row_statistics(ds: xr.Dataset, param: str | None = None) -> xr.Dataset:
    """Per step and row r of ``param`` (``W``, gradient ``g``, momentum ``m``: the optimizer's
    ``exp_avg`` or ``momentum_buffer`` after step t; ``a = W[t] − W[t−1]``; ``u`` the intended
    update, :func:`intended_update`), the other dims reduced:

    - ``param_norm = ‖W[t, r]‖``, ``grad_norm = ‖g[t, r]‖``, ``update_norm = ‖a[t, r]‖``
    - ``intended_norm = ‖u[t, r]‖``, ``update_dot_intended = ⟨a, u⟩``, ``residual_norm = ‖a − u‖``
    - ``momentum_norm = ‖m[t, r]‖``, ``cos_grad_momentum = ⟨g[t, r], m[t, r]⟩ / (‖g[t, r]‖ ‖m[t, r]‖)``

    Read from the run's health statistics (every step, whatever ``every`` kept of the full
    state); else computed from the full state (NaN where step t − 1 or a quantity is not at
    hand). Dims: ``step`` and the row dim (``token``, or ``row``).
    """
    stats = statistics.open_statistics(ds)
    name = statistics.parameter_name(ds, stats, param) if stats is not None else None
    recorded = statistics.row_statistics(stats, name) if name is not None else None
    if recorded is not None:
        return recorded
    view = parameter(ds, param)
    features = rows_and_features(view)[1]
    nan = xr.full_like(view[W].isel({f: 0 for f in features}, drop=True), np.nan)
    grad = view.get("grad")
    momentum = next((view[key] for key in contract.MOMENTUM_KEYS if key in view), None)
    grad_norm = norm(grad, features) if grad is not None else nan
    momentum_norm = norm(momentum, features) if momentum is not None else nan
    cos = nan
    if grad is not None and momentum is not None:
        cos = safe_ratio(sum_over(grad * momentum, features), grad_norm * momentum_norm)
    actual = view[W] - previous(view)
    try:
        intended = _update_terms(view)["total"]
    except ConfigError:
        intended = xr.full_like(actual, np.nan)
    return xr.Dataset({
        "param_norm": norm(view[W], features),
        "grad_norm": grad_norm,
        "update_norm": norm(actual, features),
        "intended_norm": norm(intended, features),
        "update_dot_intended": sum_over(actual * intended, features),
        "residual_norm": norm(actual - intended, features),
        "momentum_norm": momentum_norm,
        "cos_grad_momentum": cos,
    })


def _hyperparameter(view: xr.Dataset, key: str) -> Any:
    hyperparameters = view.attrs["hyperparameters"]
    if key not in hyperparameters:
        raise ConfigError(f"the store does not say {view.attrs['name']}'s {key!r}; the update identity needs it")
    return hyperparameters[key]


def _identity(view: xr.Dataset) -> str:
    """The update identity of the parameter's optimizer; refuses one zarrec does not know."""
    optimizer = view.attrs["optimizer"]
    if optimizer not in UPDATE_IDENTITIES:
        said = f"was recorded with {optimizer}" if optimizer else "has no recorded optimizer"
        raise ConfigError(
            f"{view.attrs['name']} {said}; the intended update is known for {', '.join(UPDATE_IDENTITIES)} "
            "(record through a zarrec callback or zarrec.ModelRecorder, which store the optimizer)"
        )
    if view.attrs["hyperparameters"].get("amsgrad") or view.attrs["hyperparameters"].get("maximize"):
        raise ConfigError(f"{view.attrs['name']}'s {optimizer} uses amsgrad or maximize, whose update identity zarrec does not compute")
    if contract.LR not in view:
        raise ConfigError("this store has no 'lr' (the learning rate of each step); the update identity needs it")
    return optimizer


def _adam_terms(view: xr.Dataset) -> dict[str, xr.DataArray]:
    """The terms of Adam's (AdamW's) update on every row: see :func:`adam_update`."""
    require(view, W, "exp_avg", "exp_avg_sq")
    beta1, beta2 = _hyperparameter(view, "betas")
    eps = _hyperparameter(view, "eps")
    t = view[contract.STEP].astype("float64")
    t = t.where(t > 0)  # step 0 has no update (and no bias correction)
    lr = view[contract.LR]
    m_hat = view["exp_avg"] / (1 - beta1**t)
    v_hat = view["exp_avg_sq"] / (1 - beta2**t)
    terms = {"adam_step": -lr * m_hat / (np.sqrt(v_hat) + eps)}
    if view.attrs["optimizer"] == "AdamW":  # decoupled; Adam folds weight decay into its gradient
        terms["weight_decay"] = -lr * float(_hyperparameter(view, "weight_decay")) * previous(view)
    return terms


def _sgd_terms(view: xr.Dataset) -> dict[str, xr.DataArray]:
    """The terms of SGD's update on every row: see :func:`intended_update`."""
    lr = view[contract.LR]
    momentum, nesterov = float(_hyperparameter(view, "momentum")), bool(view.attrs["hyperparameters"].get("nesterov"))
    if momentum and not nesterov:
        require(view, "momentum_buffer")
        return {"momentum_step": -lr * view["momentum_buffer"]}
    require(view, GRAD)
    terms = {"gradient_step": -lr * view[GRAD],
             "weight_decay": -lr * float(_hyperparameter(view, "weight_decay")) * previous(view)}
    if nesterov:
        require(view, "momentum_buffer")
        terms["momentum_step"] = -lr * momentum * view["momentum_buffer"]
    return terms


def _update_terms(view: xr.Dataset) -> dict[str, xr.DataArray]:
    """The intended update's terms, then ``total``, on every row."""
    terms = _sgd_terms(view) if _identity(view) == "SGD" else _adam_terms(view)
    return {**terms, "total": sum(terms.values())}


def intended_update(ds: xr.Dataset, param: str | None = None) -> xr.Dataset:
    """The update the recorded optimizer intended at each step t, from its recorded state and
    its param group's hyperparameters: ``total`` and its terms.

    - AdamW and Adam: the terms of :func:`adam_update`.
    - SGD with momentum μ (``b[t]`` its ``momentum_buffer``, which holds the weight decay
      ``wd`` and dampening): ``momentum_step[t] = −lr[t] · b[t]``; with Nesterov
      ``gradient_step[t] = −lr[t] · g[t]``, ``weight_decay[t] = −lr[t] · wd · W[t − 1]`` and
      ``momentum_step[t] = −lr[t] · μ · b[t]``; without momentum the first two.

    Terms with ``W[t − 1]`` are NaN where step t − 1 was not recorded.
    """
    view = parameter(ds, param)
    return xr.Dataset({name: from_second_row(term) for name, term in _update_terms(view).items()})


def adam_update(ds: xr.Dataset, param: str | None = None) -> xr.Dataset:
    """The update AdamW (or Adam) intended at each step t, from the recorded state and hyperparameters.

    With ``m̂[t] = m[t] / (1 − β1ᵗ)`` and ``v̂[t] = v[t] / (1 − β2ᵗ)`` (the bias corrections
    of step t)::

        adam_step[t]    = −lr[t] · m̂[t] / (√v̂[t] + eps)
        weight_decay[t] = −lr[t] · wd · W[t − 1]          (AdamW's decoupled weight decay)
        total[t]        = adam_step[t] + weight_decay[t]

    ``β1, β2, eps, wd`` are the ``betas``, ``eps`` and ``weight_decay`` of the parameter's
    param group. Adam adds ``wd · W`` to the gradient instead, so it has no ``weight_decay``
    term. ``weight_decay`` and ``total`` are NaN where step t − 1 was not recorded.
    """
    view = parameter(ds, param)
    if view.attrs["optimizer"] == "SGD":
        raise ConfigError(f"{view.attrs['name']} was recorded with SGD, not Adam; its update is intended_update()")
    return intended_update(ds, param)


def _actual_and_intended(view: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    """``W[t] − W[t − 1]`` and the optimizer's intended total update, on every row."""
    return view[W] - previous(view), _update_terms(view)["total"]


def update_residual(ds: xr.Dataset, param: str | None = None) -> xr.DataArray:
    """``residual[t] = (W[t] − W[t − 1]) − intended_update.total[t]``: what the parameter did not take.

    At float32 rounding (≈1e-7·|W|) on a float32 run; on a bf16 run, the part of the
    intended update that bf16 rounding swallowed.
    """
    actual, intended = _actual_and_intended(parameter(ds, param))
    return with_previous_step(actual - intended).rename("update_residual")


def realized_fraction(ds: xr.Dataset, param: str | None = None) -> xr.Dataset:
    """How much of the optimizer's intended update landed, with ``a = W[t] − W[t−1]`` and
    ``u = intended_update.total``.

    ``per_row[t, row] = ⟨a, u⟩ / ⟨u, u⟩`` over the row's entries; ``overall[t]`` the same
    over the whole parameter. Exactly 1 where every intended update landed; 0 where none did
    (as when bf16 parameters round a small update away).

    From the run's health statistics where it has them (every step; ``per_row`` for the
    parameters whose rows they kept, the recorded ones); else from the full state, at the
    steps whose step t − 1 is recorded too.
    """
    stats = statistics.open_statistics(ds)
    name = statistics.parameter_name(ds, stats, param) if stats is not None else None
    return statistics.realized_fraction(stats, name) if name is not None else _realized_fraction(parameter(ds, param))


def _realized_fraction(view: xr.Dataset) -> xr.Dataset:
    actual, intended = _actual_and_intended(view)
    rows, features = rows_and_features(view)
    fractions = {
        "per_row": safe_ratio(sum_over(actual * intended, features), sum_over(intended**2, features)),
        "overall": safe_ratio(sum_over(actual * intended, [rows, *features]), sum_over(intended**2, [rows, *features])),
    }
    return with_previous_step(xr.Dataset(fractions))


def force_decomposition(ds: xr.Dataset, param: str | None = None) -> xr.Dataset:
    """Components of each row's motion ``a[t] = W[t] − W[t_prev]`` along −grad and along −momentum.

    ``cos_grad = ⟨a, −g[t]⟩ / (‖a‖‖g[t]‖)``, ``along_grad = ⟨a, −g[t]⟩ / ‖g[t]‖`` (signed length
    of the motion along −g); likewise ``cos_momentum`` and ``along_momentum`` with the
    momentum ``m[t]`` (Adam's ``exp_avg``: the direction of the bias-corrected ``m̂[t]``;
    SGD's ``momentum_buffer``). Per ``(step, row)``.
    """
    view = parameter(ds, param)
    momentum = "momentum_buffer" if view.attrs["optimizer"] == "SGD" else "exp_avg"
    require(view, GRAD, momentum)
    features = rows_and_features(view)[1]
    moved = motion(view)
    moved_norm = norm(moved, features)
    result = {}
    for name, force in (("grad", view[GRAD]), ("momentum", view[momentum])):
        along = sum_over(moved * -force, features)
        force_norm = norm(force, features)
        result[f"cos_{name}"] = from_second_row(safe_ratio(along, moved_norm * force_norm))
        result[f"along_{name}"] = from_second_row(safe_ratio(along, force_norm))
    return xr.Dataset(result)


def by_parameter(ds: xr.Dataset, params: Sequence[str] | None = None) -> xr.Dataset:
    """The whole model at a glance: per step and recorded parameter (dim ``param``; those named
    in ``params`` only, if given)::

        realized_fraction[t, p] = ⟨a, u⟩ / ⟨u, u⟩ over all of p   (realized_fraction().overall)
        update_to_weight[t, p]  = ‖W[t] − W[t − 1]‖ / ‖W[t − 1]‖
        grad_norm[t, p]         = ‖g[t]‖

    From the run's health statistics where it has them: every trained parameter, every step
    (``update_to_weight`` with ``‖W[t − 1]‖ = param_norm[t − 1]``). Else from the full state of
    the recorded parameters, NaN where the store lacks what a formula needs for a parameter;
    the attribute ``not_computed`` says, per quantity, which parameters and why.
    """
    stats = statistics.open_statistics(ds)
    if stats is not None:
        names = list(map(str, stats[PARAM_DIM].values)) if params is None else [
            statistics.parameter_name(ds, stats, param) for param in params
        ]
        if all(names):
            return statistics.overview(stats, names)
    formulas = {
        "realized_fraction": lambda view: _realized_fraction(view)["overall"],
        "update_to_weight": _update_to_weight,
        "grad_norm": _grad_norm,
    }
    columns: dict[str, list[xr.DataArray]] = {quantity: [] for quantity in formulas}
    reasons: dict[str, str] = {}
    nan = from_second_row(xr.full_like(ds[contract.STEP], np.nan, dtype=float))
    recorded = recorded_parameters(ds)
    if not recorded:
        raise ConfigError(NO_PARAMETER)
    if params is not None:
        recorded = {found.name: found for found in (find_parameter(ds, param) for param in params)}
    for name, found in recorded.items():
        view = functools.cache(functools.partial(view_of, ds, found))  # made once, on first use (a failure: each time)
        for quantity, formula in formulas.items():
            try:
                column = formula(view())
            except ConfigError as reason:
                reasons[f"{quantity} of {name}"] = str(reason)
                column = nan
            columns[quantity].append(column.drop_vars([c for c in column.coords if c != contract.STEP]))
    index = pd.Index(list(recorded), name=PARAM_DIM)
    result = xr.Dataset({quantity: xr.concat(parts, dim=index) for quantity, parts in columns.items()})
    result.attrs["not_computed"] = reasons
    return result.transpose(contract.STEP, PARAM_DIM)


def _update_to_weight(view: xr.Dataset) -> xr.DataArray:
    every = list(view[W].dims[1:])
    before = previous(view)
    return with_previous_step(safe_ratio(norm(view[W] - before, every), norm(before, every)))


def _grad_norm(view: xr.Dataset) -> xr.DataArray:
    require(view, GRAD)
    return from_second_row(norm(view[GRAD], list(view[W].dims[1:])))

"""Analysis of a recorded run: plain functions from an xarray Dataset to xarray objects.

Each function takes the Dataset of ``xr.open_zarr(store)`` and returns a lazy
(dask-backed) DataArray or Dataset: nothing is read until ``.compute()``, ``.values``
or a plot asks for it, and then only the variables the formula uses, chunk by chunk.

Every function about a parameter takes its name first, as in ``model.named_parameters()``
(default: the input embedding, or the only recorded parameter), and reads it through
:func:`parameter`: ``W`` is the parameter, ``g`` its gradient, and its optimizer's state by
key (``m = exp_avg``, ``v = exp_avg_sq`` for Adam; ``b = momentum_buffer`` for SGD), with the
hyperparameters of its param group. A parameter's first dim holds its *rows* (``token`` for
the input embedding, ``row`` otherwise); per-row quantities reduce over the other dims
(``dim``, or ``col``). Quantities about the motion between two steps are labelled with the
later step and start at the second recorded step.

The ``ds.zarrec`` accessor (:mod:`zarrec.analysis.accessor`) forwards to these functions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from zarrec.store import contract
from zarrec.errors import ConfigError

POPULATION = "population"  # dimension of the live/dead split
COMPONENT = "component"  # dimension of principal components
PARAM_DIM = "param"  # dimension of the whole-model overview
ROW, COL = "row", "col"  # a parameter's dims in :func:`parameter` (the input embedding keeps token, dim)
W, GRAD = contract.PARAM, contract.GRAD  # the names of a parameter and its gradient in :func:`parameter`
UPDATE_IDENTITIES = ("AdamW", "Adam", "SGD")


@dataclass(frozen=True)
class RecordedParameter:
    """What a store holds of one parameter: its quantities' variables, its optimizer and the
    hyperparameters of its param group (``betas``, ``eps``, ``weight_decay``, ``momentum``, ...)."""

    name: str
    variables: Mapping[str, str]  # quantity ("param", "grad", "exp_avg", ...) -> store variable
    optimizer: str = ""  # the optimizer's class name ("AdamW", "SGD"), "" if the store does not say
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)

    def require(self, *quantities: str) -> None:
        """Raise a :class:`ConfigError` naming what the store lacks of this parameter, and why."""
        missing = [q for q in quantities if q not in self.variables]
        if not missing:
            return
        recorded = f"recorded with {self.optimizer}: " if self.optimizer else ""
        raise ConfigError(
            f"the store has no {', '.join(missing)} of {self.name} ({recorded}it has {', '.join(self.variables)}); "
            "record them (quantities=...) with an optimizer that keeps them"
        )


def recorded_parameters(ds: xr.Dataset) -> dict[str, RecordedParameter]:
    """Every parameter the store recorded, by name, in the model's order.

    Read from each variable's ``param`` and ``quantity`` attributes (every zarrec recorder
    writes them); in a store of :class:`~zarrec.Recorder` values without them, a variable ``W``
    is a parameter when ``W.grad`` or ``W.<state key>`` is recorded beside it.
    """
    found: dict[str, dict[str, str]] = {}
    attrs: dict[str, Mapping[str, Any]] = {}
    for name, variable in ds.data_vars.items():
        param, quantity = variable.attrs.get(contract.PARAM_ATTR), variable.attrs.get(contract.QUANTITY_ATTR)
        if param is not None and quantity is not None:
            found.setdefault(param, {})[quantity] = str(name)
            attrs.setdefault(param, variable.attrs)
    if not found:  # a plain Recorder store: W beside W.grad, W.exp_avg, ...
        names = [str(name) for name in ds.data_vars]
        for name in names:
            quantities = {other[len(name) + 1:]: other for other in names if other.startswith(f"{name}.")}
            if quantities and ds[name].dims[1:] and all(ds[v].dims == ds[name].dims for v in quantities.values()):
                found[name] = {W: name, **quantities}
                attrs[name] = ds[name].attrs
    if not found and contract.EMBEDDINGS in ds.data_vars:  # the contract's names without attributes
        found[contract.EMBEDDINGS] = {q: v for q, v in contract.EMBEDDING_VARIABLES.items() if v in ds.data_vars}
        attrs[contract.EMBEDDINGS] = {}
    model_order = list(ds.attrs.get(contract.PARAMS_ATTR) or [])
    ordered = sorted(found, key=lambda name: model_order.index(name) if name in model_order else len(model_order))
    return {name: _with_optimizer(ds, name, found[name], attrs[name]) for name in ordered}


def _with_optimizer(ds: xr.Dataset, name: str, quantities: dict[str, str], attrs: Mapping[str, Any]) -> RecordedParameter:
    """The parameter with its optimizer: from its variables' attributes, or (stores before
    per-parameter attributes) from the run's ``adam_*`` and ``weight_decay`` attributes."""
    if contract.OPTIMIZER_ATTR in attrs and contract.HYPERPARAMETERS_ATTR in attrs:
        return RecordedParameter(name, quantities, attrs[contract.OPTIMIZER_ATTR], dict(attrs[contract.HYPERPARAMETERS_ATTR]))
    run = ds.attrs
    if "adam_beta1" not in run:
        return RecordedParameter(name, quantities)
    optimizer = str(run.get("optimizer", "adamw"))
    hyperparameters = {"betas": [run["adam_beta1"], run["adam_beta2"]], "eps": run["adam_epsilon"],
                       "weight_decay": run.get("weight_decay", 0.0)}
    return RecordedParameter(name, quantities, "AdamW" if "adamw" in optimizer.lower() else optimizer, hyperparameters)


def find_parameter(ds: xr.Dataset, param: str | None = None) -> RecordedParameter:
    """The recorded parameter named ``param`` (its name in the model, or its store variable);
    by default the input embedding, or the only parameter recorded."""
    recorded = recorded_parameters(ds)
    if param is None:
        embedding = [p for p in recorded.values() if p.variables.get(W) == contract.EMBEDDINGS]
        if embedding or len(recorded) == 1:
            return (embedding or list(recorded.values()))[0]
        raise ConfigError(
            f"this store records {len(recorded)} parameters and no input embedding; name one: "
            f"{', '.join(recorded) or 'none recorded'}"
        )
    for recorded_parameter in recorded.values():
        if param in (recorded_parameter.name, recorded_parameter.variables.get(W)):
            return recorded_parameter
    raise ConfigError(f"{param!r} is not a recorded parameter; this store records {', '.join(recorded) or 'none'}")


def parameters(ds: xr.Dataset) -> xr.Dataset:
    """What is recorded of each parameter, along ``param``: its ``shape``, ``quantities``
    (``param``, ``grad`` and the optimizer's state keys), ``optimizer`` and ``weight_decay``."""
    recorded = list(recorded_parameters(ds).values())
    return xr.Dataset(
        {
            "shape": (PARAM_DIM, [" × ".join(map(str, ds[p.variables[W]].shape[1:])) if W in p.variables else "" for p in recorded]),
            "quantities": (PARAM_DIM, [", ".join(p.variables) for p in recorded]),
            "optimizer": (PARAM_DIM, [p.optimizer for p in recorded]),
            "weight_decay": (PARAM_DIM, [float(p.hyperparameters.get("weight_decay", np.nan)) for p in recorded]),
        },
        coords={PARAM_DIM: [p.name for p in recorded]},
    )


def parameter(ds: xr.Dataset, param: str | None = None) -> xr.Dataset:
    """One recorded parameter's quantities under plain names: ``param`` (``W``), ``grad``, its
    optimizer's state by key (``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``, ...), and
    ``lr``, the learning rate of its param group (the recorded ``lr`` × the group's ``lr_ratio``).

    Dims: ``step``, then ``token``, ``dim`` for the input embedding (with its coordinates),
    else ``row``, ``col`` for a matrix, ``row`` for a vector, ``row``, ``dim1``, ... beyond;
    state of another shape (Adafactor's factored moments) keeps its own. Attributes: ``name``,
    ``optimizer`` and ``hyperparameters``.
    """
    return _view(ds, find_parameter(ds, param))


def _view(ds: xr.Dataset, found: RecordedParameter) -> xr.Dataset:
    """:func:`parameter` of a parameter already found."""
    found.require(W)
    dims = ds[found.variables[W]].dims[1:]
    plain = (ROW, COL) if len(dims) == 2 else (ROW, *(f"dim{i}" for i in range(1, len(dims))))
    renamed = {} if dims == (contract.TOKEN, contract.DIM) else dict(zip(dims, plain))
    view = ds[list(found.variables.values())].rename({v: q for q, v in found.variables.items()})
    ratio = float(found.hyperparameters.get(contract.LR_RATIO, 1.0))
    if contract.LR in ds:
        view[contract.LR] = ds[contract.LR] * ratio if ratio != 1.0 else ds[contract.LR]
    view = view.rename({old: new for old, new in renamed.items() if old in view.dims})
    view.attrs = {"name": found.name, "optimizer": found.optimizer, "hyperparameters": dict(found.hyperparameters)}
    return view


def _rows_and_features(view: xr.Dataset) -> tuple[str, list[str]]:
    """The dim of a parameter's rows and the dims a per-row quantity reduces over."""
    rows, *features = view[W].dims[1:]
    return rows, features


def _norm(da: xr.DataArray, dims: list[str]) -> xr.DataArray:
    return np.sqrt((da**2).sum(dims, skipna=False)) if dims else abs(da)


def _sum(da: xr.DataArray, dims: list[str]) -> xr.DataArray:
    return da.sum(dims, skipna=False) if dims else da


def _safe_ratio(numerator: xr.DataArray, denominator: xr.DataArray) -> xr.DataArray:
    """numerator / denominator, NaN (no warning) where the denominator is 0."""
    return numerator / denominator.where(denominator != 0)


def live_mask(ds: xr.Dataset) -> np.ndarray:
    """The `live` coordinate as a numpy bool array (it is small: one entry per token)."""
    if contract.LIVE not in ds.variables:
        raise ConfigError(
            "this dataset has no 'live' coordinate (which tokens occur in the corpus); "
            "record with token_coords=corpus.token_coords(), or leave out the live/dead split"
        )
    return np.asarray(ds[contract.LIVE].values, dtype=bool)


def live(ds: xr.Dataset) -> xr.Dataset:
    """The dataset restricted to live tokens (``live == True``: the token occurs in the corpus)."""
    return ds.isel({contract.TOKEN: np.flatnonzero(live_mask(ds))})


def dead(ds: xr.Dataset) -> xr.Dataset:
    """The dataset restricted to dead tokens (``live == False``: never in the corpus)."""
    return ds.isel({contract.TOKEN: np.flatnonzero(~live_mask(ds))})


def _split(function: Callable[[xr.Dataset], xr.DataArray], view: xr.Dataset, split: bool) -> xr.DataArray:
    """``function(view)``, or with ``split`` its values on live and on dead tokens along ``population``."""
    if not split:
        return function(view)
    if _rows_and_features(view)[0] != contract.TOKEN:
        raise ConfigError(f"the live/dead split is over tokens; {view.attrs['name']} has no token rows: leave out split")
    parts = [function(live(view)), function(dead(view))]
    return xr.concat(parts, dim=pd.Index(["live", "dead"], name=POPULATION), coords="minimal", compat="override")


def _from_second_row(da: xr.DataArray) -> xr.DataArray:
    """Drop the first recorded step, which has no predecessor.

    Formulas are computed on full-length arrays (``shift`` keeps dask chunks aligned, so
    each chunk is computed from the same chunks of every input) and trimmed last.
    """
    return da.isel({contract.STEP: slice(1, None)})


def _motion(view: xr.Dataset) -> xr.DataArray:
    """``W[t] − W[t_prev]`` on every row (NaN on the first)."""
    return view[W] - view[W].shift({contract.STEP: 1})


def velocity(ds: xr.Dataset, param: str | None = None) -> xr.DataArray:
    """Motion of every row of ``param`` between consecutive recorded steps.

    ``velocity[t] = W[t] − W[t_prev]``, labelled with ``t`` (``t_prev`` is the previous
    recorded step: ``t − 1`` when every step was recorded).
    """
    return _from_second_row(_motion(parameter(ds, param))).rename("velocity")


def speed(ds: xr.Dataset, param: str | None = None) -> xr.DataArray:
    """``speed[t, row] = ‖W[t, row] − W[t_prev, row]‖₂`` over the row's entries."""
    view = parameter(ds, param)
    return _norm(_from_second_row(_motion(view)), _rows_and_features(view)[1]).rename("speed")


def centroid(ds: xr.Dataset, param: str | None = None, split: bool = False) -> xr.DataArray:
    """``centroid[t] = mean over rows of W[t]`` (with ``split``, per population of tokens)."""
    view = parameter(ds, param)
    rows = _rows_and_features(view)[0]
    return _split(lambda v: v[W].mean(rows).rename("centroid"), view, split)


def spread(ds: xr.Dataset, param: str | None = None, split: bool = False) -> xr.DataArray:
    """``spread[t] = mean over rows of ‖W[t, row] − centroid[t]‖₂``: mean distance to the centroid."""
    view = parameter(ds, param)
    rows, features = _rows_and_features(view)
    return _split(lambda v: _norm(v[W] - v[W].mean(rows), features).mean(rows).rename("spread"), view, split)


def norms(ds: xr.Dataset, param: str | None = None, split: bool = False) -> xr.DataArray:
    """``norm[t, row] = ‖W[t, row]‖₂``; with ``split``, its mean over live and over dead tokens."""
    view = parameter(ds, param)
    rows, features = _rows_and_features(view)
    if split:
        return _split(lambda v: _norm(v[W], features).mean(rows).rename("norm"), view, True)
    return _norm(view[W], features).rename("norm")


def _previous(view: xr.Dataset) -> xr.DataArray:
    """``W[t − 1]`` on every row: NaN where step t − 1 was not recorded (and on the first row)."""
    steps = view[contract.STEP]
    consecutive = (steps - steps.shift({contract.STEP: 1})) == 1
    return view[W].shift({contract.STEP: 1}).where(consecutive)


def row_statistics(ds: xr.Dataset, param: str | None = None) -> xr.Dataset:
    """Per step and row r of ``param`` (``W``, gradient ``g``, momentum ``m``: the optimizer's
    ``exp_avg`` or ``momentum_buffer`` after step t), the other dims reduced:

    - ``param_norm[t, r] = ‖W[t, r]‖``, ``grad_norm[t, r] = ‖g[t, r]‖``
    - ``update_norm[t, r] = ‖W[t, r] − W[t−1, r]‖`` (NaN where step t − 1 is not at hand)
    - ``cos_grad_momentum[t, r] = ⟨g[t, r], m[t, r]⟩ / (‖g[t, r]‖ ‖m[t, r]‖)``

    Read from the store's ``summaries`` group when the run recorded them (``summaries=True``:
    every step, whatever ``every`` kept of the full state); else computed from the full state
    (a missing quantity gives NaN). Dims as in :func:`parameter`: ``step`` and the row dim.
    """
    view = parameter(ds, param)
    rows, features = _rows_and_features(view)
    recorded = _recorded_row_statistics(ds, view.attrs["name"])
    if recorded is not None:
        dim = recorded[next(iter(recorded.data_vars))].dims[1]
        return recorded.rename({dim: rows} if dim != rows else {})
    nan = xr.full_like(view[W].isel({f: 0 for f in features}, drop=True), np.nan)
    grad = view.get("grad")
    momentum = next((view[key] for key in contract.MOMENTUM_KEYS if key in view), None)
    grad_norm = _norm(grad, features) if grad is not None else nan
    cos = nan
    if grad is not None and momentum is not None:
        cos = _safe_ratio(_sum(grad * momentum, features), grad_norm * _norm(momentum, features))
    return xr.Dataset({
        "param_norm": _norm(view[W], features),
        "grad_norm": grad_norm,
        "update_norm": _norm(view[W] - _previous(view), features),
        "cos_grad_momentum": cos,
    })


def _recorded_row_statistics(ds: xr.Dataset, name: str) -> xr.Dataset | None:
    """The ``summaries`` group's statistics of parameter ``name`` under their plain names, if recorded."""
    source = ds.encoding.get("source")
    if source is None:
        return None
    try:
        summaries = xr.open_zarr(f"{str(source).rstrip('/')}/{contract.SUMMARIES_GROUP}")
    except (FileNotFoundError, KeyError, ValueError, OSError, zarr.errors.GroupNotFoundError):
        return None
    variables = {contract.summary_variable(name, s): s for s in contract.STATISTICS}
    if not all(v in summaries for v in variables):
        return None
    return summaries[list(variables)].rename(variables)


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
    _require(view, W, "exp_avg", "exp_avg_sq")
    beta1, beta2 = _hyperparameter(view, "betas")
    eps = _hyperparameter(view, "eps")
    t = view[contract.STEP].astype("float64")
    t = t.where(t > 0)  # step 0 has no update (and no bias correction)
    lr = view[contract.LR]
    m_hat = view["exp_avg"] / (1 - beta1**t)
    v_hat = view["exp_avg_sq"] / (1 - beta2**t)
    terms = {"adam_step": -lr * m_hat / (np.sqrt(v_hat) + eps)}
    if view.attrs["optimizer"] == "AdamW":  # decoupled; Adam folds weight decay into its gradient
        terms["weight_decay"] = -lr * float(_hyperparameter(view, "weight_decay")) * _previous(view)
    return terms


def _sgd_terms(view: xr.Dataset) -> dict[str, xr.DataArray]:
    """The terms of SGD's update on every row: see :func:`intended_update`."""
    lr = view[contract.LR]
    momentum, nesterov = float(_hyperparameter(view, "momentum")), bool(view.attrs["hyperparameters"].get("nesterov"))
    if momentum and not nesterov:
        _require(view, "momentum_buffer")
        return {"momentum_step": -lr * view["momentum_buffer"]}
    _require(view, GRAD)
    terms = {"gradient_step": -lr * view[GRAD],
             "weight_decay": -lr * float(_hyperparameter(view, "weight_decay")) * _previous(view)}
    if nesterov:
        _require(view, "momentum_buffer")
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
    return xr.Dataset({name: _from_second_row(term) for name, term in _update_terms(view).items()})


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
    return view[W] - _previous(view), _update_terms(view)["total"]


def update_residual(ds: xr.Dataset, param: str | None = None) -> xr.DataArray:
    """``residual[t] = (W[t] − W[t − 1]) − intended_update.total[t]``: what the parameter did not take.

    At float32 rounding (≈1e-7·|W|) on a float32 run; on a bf16 run, the part of the
    intended update that bf16 rounding swallowed.
    """
    actual, intended = _actual_and_intended(parameter(ds, param))
    return _from_second_row(actual - intended).rename("update_residual")


def realized_fraction(ds: xr.Dataset, param: str | None = None) -> xr.Dataset:
    """How much of the optimizer's intended update landed, with ``a = W[t] − W[t−1]`` and
    ``u = intended_update.total``.

    ``per_row[t, row] = ⟨a, u⟩ / ⟨u, u⟩`` over the row's entries; ``overall[t]`` the same
    over the whole parameter. Exactly 1 where every intended update landed; 0 where none did
    (as when bf16 parameters round a small update away).
    """
    return _realized_fraction(parameter(ds, param))


def _realized_fraction(view: xr.Dataset) -> xr.Dataset:
    actual, intended = _actual_and_intended(view)
    rows, features = _rows_and_features(view)
    fractions = {
        "per_row": _safe_ratio(_sum(actual * intended, features), _sum(intended**2, features)),
        "overall": _safe_ratio(_sum(actual * intended, [rows, *features]), _sum(intended**2, [rows, *features])),
    }
    return xr.Dataset({name: _from_second_row(fraction) for name, fraction in fractions.items()})


def force_decomposition(ds: xr.Dataset, param: str | None = None) -> xr.Dataset:
    """Components of each row's motion ``a[t] = W[t] − W[t_prev]`` along −grad and along −momentum.

    ``cos_grad = ⟨a, −g[t]⟩ / (‖a‖‖g[t]‖)``, ``along_grad = ⟨a, −g[t]⟩ / ‖g[t]‖`` (signed length
    of the motion along −g); likewise ``cos_momentum`` and ``along_momentum`` with the
    momentum ``m[t]`` (Adam's ``exp_avg``: the direction of the bias-corrected ``m̂[t]``;
    SGD's ``momentum_buffer``). Per ``(step, row)``.
    """
    view = parameter(ds, param)
    momentum = "momentum_buffer" if view.attrs["optimizer"] == "SGD" else "exp_avg"
    _require(view, GRAD, momentum)
    features = _rows_and_features(view)[1]
    motion = _motion(view)
    motion_norm = _norm(motion, features)
    result = {}
    for name, force in (("grad", view[GRAD]), ("momentum", view[momentum])):
        along = _sum(motion * -force, features)
        force_norm = _norm(force, features)
        result[f"cos_{name}"] = _from_second_row(_safe_ratio(along, motion_norm * force_norm))
        result[f"along_{name}"] = _from_second_row(_safe_ratio(along, force_norm))
    return xr.Dataset(result)


def by_parameter(ds: xr.Dataset) -> xr.Dataset:
    """The whole model at a glance: per step and recorded parameter (dim ``param``)::

        realized_fraction[t, p] = ⟨a, u⟩ / ⟨u, u⟩ over all of p   (realized_fraction().overall)
        update_to_weight[t, p]  = ‖W[t] − W[t − 1]‖ / ‖W[t − 1]‖
        grad_norm[t, p]         = ‖g[t]‖

    NaN where the store lacks what a formula needs for a parameter; the attribute
    ``not_computed`` says, per quantity, which parameters and why.
    """
    formulas = {
        "realized_fraction": lambda view: _realized_fraction(view)["overall"],
        "update_to_weight": _update_to_weight,
        "grad_norm": _grad_norm,
    }
    columns: dict[str, list[xr.DataArray]] = {quantity: [] for quantity in formulas}
    reasons: dict[str, str] = {}
    nan = _from_second_row(xr.full_like(ds[contract.STEP], np.nan, dtype=float))
    recorded = recorded_parameters(ds)
    for name, found in recorded.items():
        view = functools.cache(functools.partial(_view, ds, found))  # made once, on first use (a failure: each time)
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
    previous = _previous(view)
    return _from_second_row(_safe_ratio(_norm(view[W] - previous, every), _norm(previous, every)))


def _grad_norm(view: xr.Dataset) -> xr.DataArray:
    _require(view, GRAD)
    return _from_second_row(_norm(view[GRAD], list(view[W].dims[1:])))


def _require(view: xr.Dataset, *quantities: str) -> None:
    """Raise a :class:`ConfigError` naming what the store lacks of the parameter in ``view``."""
    recorded = {str(q): str(q) for q in view.data_vars if q != contract.LR}
    RecordedParameter(view.attrs["name"], recorded, view.attrs["optimizer"]).require(*quantities)


def logit_stats(ds: xr.Dataset) -> xr.Dataset:
    """Per step, how spread the recorded logits ``z[t, token]`` are.

    ``range = max z − min z``; ``std`` (population, over tokens); ``entropy = −Σ p log p`` in
    nats with ``p = softmax(z)`` (uniform logits give ``ln V``, stored as the attribute
    ``max_entropy``); ``live_mass = Σ_live p`` and ``dead_mass = Σ_dead p``.
    """
    if contract.LOGITS not in ds:
        raise ConfigError("this dataset has no 'logits'; they are recorded by the zarrec callbacks when the model's output has them")
    token = contract.TOKEN
    if token in ds.attrs.get(contract.ROWS_ATTR, {}):
        raise ConfigError(
            f"logit_stats needs every token's logit, and this run recorded {ds.sizes[token]:,} of "
            f"{ds.attrs[contract.ROWS_ATTR][token]:,} tokens (rows=...); record without rows for the logits' spread"
        )
    z = ds[contract.LOGITS]
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


def pca(ds: xr.Dataset, param: str | None = None, n: int = 2) -> xr.Dataset:
    """Project every row's trajectory on the ``n`` principal axes shared by all steps and rows.

    With ``X`` the ``(step·row, entries)`` matrix of ``param`` and ``μ`` its mean row, the axes
    are the top eigenvectors of ``C = (X − μ)ᵀ(X − μ) / N`` (computed chunk by chunk);
    ``projection[t, row, k] = ⟨W[t, row] − μ, axis_k⟩``. Returns ``projection``,
    ``components (component, entry)``, ``explained_variance_ratio`` and ``mean``. Each axis is
    signed so that its largest entry is positive. For a parameter with 2 dims.
    """
    view = parameter(ds, param)
    rows, features = _rows_and_features(view)
    if len(features) != 1:
        raise ConfigError(f"pca projects rows of a matrix; {view.attrs['name']} has {len(features) + 1} dims")
    (entries,) = features
    X = view[W]
    if not 1 <= n <= X.sizes[entries]:
        raise ConfigError(f"pca needs 1 <= n <= {X.sizes[entries]} (the size of {entries}), got {n}")
    samples = [contract.STEP, rows]
    mean = X.mean(samples).compute()
    centred = X - mean
    other = centred.rename({entries: f"{entries}_"})
    covariance = xr.dot(centred, other, dim=samples).compute().values / (X.sizes[contract.STEP] * X.sizes[rows])
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

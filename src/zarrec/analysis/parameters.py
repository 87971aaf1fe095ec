"""A recorded parameter, as the analysis sees it: which of its quantities the store holds,
its optimizer and hyperparameters, and :func:`parameter`, its quantities under plain names.

Every function about a parameter takes its name first, as in ``model.named_parameters()``
(default: the input embedding, or the only recorded parameter), and reads it through
:func:`parameter`: ``W`` is the parameter, ``g`` its gradient, and its optimizer's state by
key (``m = exp_avg``, ``v = exp_avg_sq`` for Adam; ``b = momentum_buffer`` for SGD), with the
hyperparameters of its param group. A parameter's first dim holds its *rows* (``token`` for
the input embedding, ``row`` otherwise); per-row quantities reduce over the other dims
(``dim``, or ``col``). Quantities about the motion between two steps are labelled with the
later step and start at the second recorded step.

Also the helpers every formula shares: norms and sums over a row's entries, the live/dead
split of tokens, and the steps before each step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from zarrec.analysis.chunks import coarsened
from zarrec.errors import ConfigError
from zarrec.store import contract

POPULATION = "population"  # dimension of the live/dead split
COMPONENT = "component"  # dimension of principal components
PARAM_DIM = contract.PARAM_DIM  # dimension of the whole-model overview (and of the health statistics)
ROW, COL = "row", "col"  # a parameter's dims in :func:`parameter` (the input embedding keeps token, dim)
W, GRAD = contract.PARAM, contract.GRAD  # the names of a parameter and its gradient in :func:`parameter`


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


NO_PARAMETER = (
    "this store records no parameter (no variable names one in its attributes: plain values, as a Recorder writes "
    "them); record a model's parameters with ModelRecorder or a callback"
)


def find_parameter(ds: xr.Dataset, param: str | None = None) -> RecordedParameter:
    """The recorded parameter named ``param`` (its name in the model, or its store variable);
    by default the input embedding, or the only parameter recorded."""
    recorded = recorded_parameters(ds)
    if not recorded:
        raise ConfigError(NO_PARAMETER)
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
    return view_of(ds, find_parameter(ds, param))


def view_of(ds: xr.Dataset, found: RecordedParameter) -> xr.Dataset:
    """:func:`parameter` of a parameter already found."""
    found.require(W)
    ds = coarsened(ds, list(found.variables.values()))
    renamed = plain_dims(ds[found.variables[W]].dims[1:])
    view = ds[list(found.variables.values())].rename({v: q for q, v in found.variables.items()})
    ratio = float(found.hyperparameters.get(contract.LR_RATIO, 1.0))
    if contract.LR in ds:
        view[contract.LR] = ds[contract.LR] * ratio if ratio != 1.0 else ds[contract.LR]
    view = view.rename({old: new for old, new in renamed.items() if old in view.dims})
    view.attrs = {"name": found.name, "optimizer": found.optimizer, "hyperparameters": dict(found.hyperparameters)}
    return view


def plain_dims(dims: tuple[str, ...]) -> dict[str, str]:
    """A parameter's stored dims (after ``step``) renamed to :func:`parameter`'s plain ones."""
    plain = (ROW, COL) if len(dims) == 2 else (ROW, *(f"dim{i}" for i in range(1, len(dims))))
    return {} if dims == (contract.TOKEN, contract.DIM) else dict(zip(dims, plain))


def rows_and_features(view: xr.Dataset) -> tuple[str, list[str]]:
    """The dim of a parameter's rows and the dims a per-row quantity reduces over."""
    rows, *features = view[W].dims[1:]
    return rows, features


def norm(da: xr.DataArray, dims: list[str]) -> xr.DataArray:
    return np.sqrt((da**2).sum(dims, skipna=False)) if dims else abs(da)


def sum_over(da: xr.DataArray, dims: list[str]) -> xr.DataArray:
    return da.sum(dims, skipna=False) if dims else da


def safe_ratio(numerator: xr.DataArray, denominator: xr.DataArray) -> xr.DataArray:
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


def split_live_dead(function: Callable[[xr.Dataset], xr.DataArray], view: xr.Dataset, split: bool) -> xr.DataArray:
    """``function(view)``, or with ``split`` its values on live and on dead tokens along ``population``."""
    if not split:
        return function(view)
    if rows_and_features(view)[0] != contract.TOKEN:
        raise ConfigError(f"the live/dead split is over tokens; {view.attrs['name']} has no token rows: leave out split")
    parts = [function(live(view)), function(dead(view))]
    return xr.concat(parts, dim=pd.Index(["live", "dead"], name=POPULATION), coords="minimal", compat="override")


def require(view: xr.Dataset, *quantities: str) -> None:
    """Raise a :class:`ConfigError` naming what the store lacks of the parameter in ``view``."""
    recorded = {str(q): str(q) for q in view.data_vars if q != contract.LR}
    RecordedParameter(view.attrs["name"], recorded, view.attrs["optimizer"]).require(*quantities)


def from_second_row(da: xr.DataArray) -> xr.DataArray:
    """Drop the first recorded step, which has no predecessor.

    Formulas are computed on full-length arrays (``shift`` keeps dask chunks aligned, so
    each chunk is computed from the same chunks of every input) and trimmed last.
    """
    return da.isel({contract.STEP: slice(1, None)})


def with_previous_step(da: xr.DataArray) -> xr.DataArray:
    """``da`` (a formula with ``W[t − 1]``, on every recorded step) at the steps whose step
    t − 1 is recorded too; refuses, naming the recorded steps, where there is none."""
    steps = da[contract.STEP].values
    following = np.flatnonzero(np.diff(steps) == 1) + 1
    if not len(following):
        shown = ", ".join(map(str, steps[:4])) + (", ..." if len(steps) > 4 else "")
        raise ConfigError(
            f"this needs W[t−1] beside W[t], and the store holds the full state at steps {shown}, no two consecutive; "
            "read the health statistics (by_parameter(), realized_fraction()), or record consecutive steps "
            "(every='1:100,10': every step up to 100)"
        )
    return da.isel({contract.STEP: following})


def motion(view: xr.Dataset) -> xr.DataArray:
    """``W[t] − W[t_prev]`` on every row (NaN on the first)."""
    return view[W] - view[W].shift({contract.STEP: 1})


def previous(view: xr.Dataset) -> xr.DataArray:
    """``W[t − 1]`` on every row: NaN where step t − 1 was not recorded (and on the first row)."""
    return at_previous_step(view[W])


def at_previous_step(da: xr.DataArray) -> xr.DataArray:
    """``da[t − 1]`` labelled ``t``: NaN where step t − 1 is not there (and on the first step)."""
    steps = da[contract.STEP]
    consecutive = (steps - steps.shift({contract.STEP: 1})) == 1
    return da.shift({contract.STEP: 1}).where(consecutive)

"""A run and its branches side by side: their variables, or any answer of the analysis, along
a ``run`` dimension, aligned on ``step``.

A branch (``zarrec train --branch-from``) records the steps after its branch point; before it
its values are NaN here (they are its parent's: the branch's ``branch_step`` coordinate says
from which step), so ``answer.sel(step=slice(t, None))`` compares the runs from step ``t`` on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from zarrec.errors import ConfigError
from zarrec.store import contract
from zarrec.store.location import StoreLike, open_run

Answer = xr.DataArray | xr.Dataset

RUN = "run"
BRANCH_STEP = "branch_step"


def open_runs(stores: Mapping[str, StoreLike], **open_zarr: Any) -> xr.Dataset:
    """Each of ``stores`` (``{name: store}``) opened lazily with ``xr.open_zarr(store,
    **open_zarr)`` and joined along a new ``run`` dim (its index: the names), on the union
    of their steps (NaN where a run has no such step). ``branch_step`` (along ``run``): the
    recorded step each run branched from (NaN: not a branch)."""
    return compare_runs(stores, lambda ds: ds, **open_zarr)


def compare_runs(stores: Mapping[str, StoreLike | xr.Dataset], answer: Callable[[xr.Dataset], Answer],
                 **open_zarr: Any) -> Answer:
    """``answer(ds)`` of each run (``{name: store or opened dataset}``; a store is opened with
    ``xr.open_zarr(store, **open_zarr)``, so that the accessor reads its health statistics),
    joined along a new ``run`` dim on the union of their steps, e.g.
    ``compare_runs({"run": "run.zarr", "lr 3e-3": "branch.zarr"}, lambda ds: ds.zarrec.realized_fraction(p).overall)``."""
    if not stores:
        raise ConfigError("compare_runs needs at least one run: pass {name: store, ...}")
    opened = {name: store if isinstance(store, xr.Dataset) else _open(store, open_zarr) for name, store in stores.items()}
    answers = [answer(ds) for ds in opened.values()]
    joined = xr.concat(answers, dim=pd.Index(list(opened), name=RUN), join="outer", combine_attrs="drop_conflicts")
    branch_steps = [ds.attrs.get(contract.BRANCHED_FROM_ATTR, {}).get("step", np.nan) for ds in opened.values()]
    return joined.assign_coords({BRANCH_STEP: (RUN, np.asarray(branch_steps, dtype=float))})


def _open(store: StoreLike, open_zarr: Mapping[str, Any]) -> xr.Dataset:
    open_run(store)  # (a clear error for a path that is not a zarrec store)
    return xr.open_zarr(store, **open_zarr)

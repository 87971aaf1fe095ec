"""How the analysis chunks the full state it reads from a store.

``xr.open_zarr`` makes one dask chunk of each inner zarr chunk. A long run of a large model
has millions of them: GPT-2 small's embedding over 10,000 steps, one step a shard, is 10,000
steps × 148 row blocks = 1.48 M chunks per variable, and a formula with ``W[t−1]`` (xarray's
``shift``) builds 13 M tasks, 38 s and 2.5 GB before it reads a byte. Where a dataset's
variables are as ``xr.open_zarr`` made them, the analysis re-opens the ones it reads from
their store in chunks of many steps over the same row blocks (a row's history reads the same
inner chunks, no more), so that its graphs grow with steps ÷ :data:`CHUNK_BYTES`-sized chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import dask.array
import numpy as np
import xarray as xr

from zarrec.store import contract

# A variable with more dask chunks than this is re-opened in chunks of more steps...
MAX_CHUNKS = 10_000
# ...each of at most this many bytes (the steps of one row block).
CHUNK_BYTES = 64 * 2**20


def coarsened(ds: xr.Dataset, names: Sequence[str]) -> xr.Dataset:
    """``ds`` with its variables ``names`` re-opened from its store in chunks of more steps where
    they are as ``xr.open_zarr`` made them and have more than :data:`MAX_CHUNKS` chunks; ``ds``
    as it is otherwise (not from a store, already chunked by the user, selected, computed)."""
    source = ds.encoding.get("source")
    fine = [name for name in names if as_opened(ds[name]) and ds[name].data.npartitions > MAX_CHUNKS]
    if source is None or not fine:
        return ds
    steps = min(_steps_per_chunk(ds[name]) for name in fine)
    if steps <= min(ds[name].chunks[0][0] for name in fine):
        return ds
    reopened = reopen(ds, fine, {contract.STEP: steps})
    return ds if reopened is None else ds.assign({name: reopened[name] for name in fine})


def reopen(ds: xr.Dataset, names: Sequence[str], chunks: dict[str, int] | None) -> xr.Dataset | None:
    """Variables ``names`` of ``ds``'s store opened anew in ``chunks`` (None: lazily indexed,
    without dask), at ``ds``'s steps; None where the store no longer holds them (a store still
    being written grows: its first steps are ``ds``'s)."""
    others = [name for name in ds.variables if name not in names and name not in ds.dims]
    reopened = xr.open_dataset(ds.encoding["source"], engine="zarr", chunks=chunks, drop_variables=others)
    if reopened.sizes[contract.STEP] < ds.sizes[contract.STEP]:
        return None
    reopened = reopened.isel({contract.STEP: slice(0, ds.sizes[contract.STEP])})
    return reopened if np.array_equal(reopened[contract.STEP].values, ds[contract.STEP].values) else None


def as_opened(da: xr.DataArray) -> bool:
    """Whether ``da`` is a store's array as ``xr.open_zarr`` made it (not rechunked, selected or computed since)."""
    return (
        isinstance(da.data, dask.array.Array)
        and da.data.name.startswith("open_dataset-")
        and contract.STEP in da.encoding.get("preferred_chunks", {})
        and da.dims[:1] == (contract.STEP,)
    )


def _steps_per_chunk(da: xr.DataArray) -> int:
    """Steps per re-opened chunk of ``da`` (over its row blocks as they are): a multiple of its
    stored step chunk, within :data:`CHUNK_BYTES`."""
    stored = da.encoding["preferred_chunks"][contract.STEP]
    per_step = math.prod(chunks[0] for chunks in da.chunks[1:]) * da.dtype.itemsize
    return max(stored, CHUNK_BYTES // (per_step * stored) * stored)

"""Per-row formulas of a long run's full state, computed for the rows a reader selects.

A formula of each row's history (``speed[t, row] = ‖W[t, row] − W[t_prev, row]‖``) on a
large parameter's store is usually asked of a few rows: ``speed().sel(token=t)``. Built from
dask operations on the stored chunks, its graph computes every row of the chunks the selection
touches and selects after: GPT-2 small's embedding over 10,000 steps is a 340-row block of
10,000 steps for one token (18 s where zarr-python reads that token's rows in 3.5 s).

Where the full state is as ``xr.open_zarr`` made it and large (more than
:data:`~zarrec.analysis.chunks.MAX_CHUNKS` chunks), the formula is instead an array that dask
*reads* (:class:`RowFormula`, through ``dask.array.from_array``): dask fuses a selection into
the read, so each task computes the formula of the selected rows only, from the store's values
of those rows at its steps and the step before them.
"""

from __future__ import annotations

from collections.abc import Callable

import dask.array
import numpy as np
import xarray as xr
from dask.base import tokenize

from zarrec.analysis import chunks
from zarrec.analysis.chunks import CHUNK_BYTES, as_opened, reopen

# A formula of the rows of consecutive recorded steps: (steps + 1, rows, ...) -> (steps, rows).
RowsFormula = Callable[[np.ndarray], np.ndarray]
# Steps per chunk of the result (by the stored row blocks): a task reads its rows in blocks of
# CHUNK_BYTES, so a few rows' whole history is a few reads.
STEPS_PER_CHUNK = 2048


def speed_of_rows(values: np.ndarray) -> np.ndarray:
    """``‖W[i + 1, row] − W[i, row]‖₂`` over each row's entries, in float32."""
    motion = values[1:] - values[:-1]
    return np.sqrt((motion * motion).sum(axis=tuple(range(2, motion.ndim))))


class RowFormula:
    """``formula`` of every row of a stored variable between consecutive recorded steps, as an
    array of shape (steps − 1, rows): entry ``[i, row]`` reads that row at steps ``i`` and
    ``i + 1`` (the variable opened without dask: xarray's lazy indexing reads what is asked)."""

    def __init__(self, stored: xr.DataArray, formula: RowsFormula) -> None:
        self.stored = stored
        self.formula = formula
        self.shape = (stored.shape[0] - 1, stored.shape[1])
        self.ndim = 2
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key: tuple) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (2 - len(key))
        steps, rows = (np.arange(size)[part] for size, part in zip(self.shape, key))
        step_list, row_list = np.atleast_1d(steps), np.atleast_1d(rows)
        if not step_list.size or not row_list.size:
            return _as_asked(np.zeros((len(step_list), len(row_list)), self.dtype), steps, rows)
        first, last = int(step_list.min()), int(step_list.max())
        read_rows = np.unique(row_list)
        # (a contiguous run of rows as a slice: zarr's basic selection, faster than an orthogonal one)
        rows_read = slice(int(read_rows[0]), int(read_rows[-1]) + 1) if read_rows[-1] - read_rows[0] + 1 == len(read_rows) else read_rows
        # Read in blocks of at most CHUNK_BYTES (a block's last step is the next one's first).
        row_bytes = max(1, len(read_rows) * int(np.prod(self.stored.shape[2:])) * 4)
        block = max(1, CHUNK_BYTES // row_bytes)
        parts = []
        for start in range(first, last + 1, block):
            stop = min(start + block, last + 1)
            values = self.stored.isel({self.stored.dims[0]: slice(start, stop + 1), self.stored.dims[1]: rows_read}).values
            parts.append(self.formula(values.astype(np.float32, copy=False)))
        return _as_asked(np.concatenate(parts)[np.ix_(step_list - first, np.searchsorted(read_rows, row_list))], steps, rows)


def _as_asked(result: np.ndarray, steps: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``result`` (steps × rows asked) without the dims that were asked by an integer."""
    return result[tuple(0 if np.ndim(index) == 0 else slice(None) for index in (steps, rows))]


def on_demand(ds: xr.Dataset, name: str, formula: RowsFormula, result: str) -> xr.DataArray | None:
    """``formula`` of variable ``name``'s rows between consecutive recorded steps, labelled with
    the later step, read on demand (see the module's docstring) where ``ds[name]`` is as
    ``xr.open_zarr`` made it and has more than ``MAX_CHUNKS`` chunks; None otherwise."""
    stored = ds[name]
    source = ds.encoding.get("source")
    if source is None or not as_opened(stored) or stored.data.npartitions <= chunks.MAX_CHUNKS or stored.ndim < 2:
        return None
    reopened = reopen(ds, [name], None)
    if reopened is None:
        return None
    rows, steps = stored.chunks[1][0], max(1, min(stored.shape[0] - 1, STEPS_PER_CHUNK))
    array = dask.array.from_array(RowFormula(reopened[name], formula), chunks=(steps, rows), name=f"zarrec-{result}-{tokenize(source, name, stored.shape)}",
                                  meta=np.empty((0, 0), np.float32))
    dims = stored.dims[:2]
    coords = {key: coord.isel({dims[0]: slice(1, None)}) if dims[0] in coord.dims else coord  # (labelled with the later step)
              for key, coord in stored.coords.items() if set(coord.dims) <= set(dims)}
    return xr.DataArray(array, dims=dims, coords=coords, name=result)

"""Creating a zarrec store and appending whole step-chunks to it.

The store is a Zarr v3 group laid out as :mod:`zarrec.contract` describes. Each
append writes the chunks of every array (data and ``step``), then the consolidated
metadata: a reader that opens the store through its consolidated metadata (as
``xr.open_zarr`` does) sees only steps whose data is complete.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr import AsyncArray
from zarr.core.buffer import default_buffer_prototype
from zarr.core.common import ZARR_JSON
from zarr.core.group import ConsolidatedMetadata
from zarr.core.sync import sync
from zarr.errors import ContainsArrayError, ContainsGroupError

from zarrec import contract
from zarrec.errors import ConfigError, StoreExistsError

StoreLike = str | os.PathLike | zarr.abc.store.Store

# Every chunk is written, even one that equals the fill value: it skips zarr's check of
# each chunk against the fill value (a full pass over the data, a third of zarr's write
# cost here), and a chunk's absence then always means "not yet written". A runtime
# setting: it applies to the arrays the appender opens.
WRITE_EVERY_CHUNK = {"write_empty_chunks": True}


def describe(out: StoreLike) -> str:
    """A store's name for messages: its path or URL."""
    return os.fspath(out) if isinstance(out, (str, os.PathLike)) else repr(out)


def _consolidate(group: zarr.Group) -> None:
    # zarr-python warns that consolidated metadata is not (yet) in the v3 spec; we
    # write it anyway because xarray reads it, and readers without it still work
    # from the per-array metadata.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        zarr.consolidate_metadata(group.store, path=group.path)


def _exists_message(name: str) -> str:
    return f"{name} already exists; pass --overwrite (overwrite=True) to replace it, or choose another output path"


def ensure_new(out: StoreLike, *, overwrite: bool = False) -> None:
    """Refuse a local ``out`` that is a file, a non-empty non-Zarr directory, or a store unless ``overwrite``."""
    if isinstance(out, (str, os.PathLike)) and "://" not in os.fspath(out):
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{describe(out)} exists and is not a directory; choose another output path")
        if path.is_dir() and any(path.iterdir()):
            if not (path / "zarr.json").exists():
                raise ConfigError(
                    f"{describe(out)} is a non-empty directory but not a Zarr store; "
                    "zarrec never deletes it: choose another output path"
                )
            if not overwrite:
                raise StoreExistsError(_exists_message(describe(out)))


class RunStore:
    """A zarrec store open for writing: static coordinates, attributes and step-chunked variables."""

    def __init__(self, group: zarr.Group, name: str) -> None:
        self.group = group
        self.name = name
        self._dim_sizes: dict[str, int] = {}
        self._appender: _Appender | None = None  # opened on the first append, in the writer thread

    @classmethod
    def create(cls, out: StoreLike, *, overwrite: bool = False) -> RunStore:
        """Create an empty store at ``out`` (a path, an fsspec URL or a zarr Store); see :func:`ensure_new`."""
        ensure_new(out, overwrite=overwrite)
        try:
            group = zarr.open_group(out, mode="w" if overwrite else "w-", zarr_format=3)
        except (ContainsGroupError, ContainsArrayError, FileExistsError) as exc:
            raise StoreExistsError(_exists_message(describe(out))) from exc
        group.attrs[contract.FORMAT_ATTR] = contract.FORMAT_VERSION
        return cls(group, describe(out))

    @property
    def rows(self) -> int:
        """Rows committed so far."""
        return self._appender.rows if self._appender is not None else 0

    def update_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Add run attributes (hyperparameters, versions) to the group."""
        self.group.attrs.update(dict(attrs))

    def _create_step_coordinate(self, chunk_steps: int) -> None:
        """The ``step`` index coordinate, empty: rows are appended with the data."""
        self.group.create_array(
            contract.STEP,
            shape=(0,),
            chunks=(chunk_steps,),
            dtype="int64",
            fill_value=-1,
            compressors=contract.default_compressor(),
            dimension_names=(contract.STEP,),
            attributes={"description": contract.DESCRIPTIONS[contract.STEP]},
        )

    def write_coordinate(self, name: str, dim: str, values: np.ndarray, description: str = "") -> None:
        """Write a static coordinate along one non-step dimension (e.g. ``live`` along ``token``)."""
        values = np.asarray(values)
        if self._dim_sizes.get(dim, len(values)) != len(values):
            raise ConfigError(
                f"coordinate {name} has {len(values)} entries along {dim!r}, but {dim!r} already has {self._dim_sizes[dim]}"
            )
        self._dim_sizes[dim] = len(values)
        if values.dtype.kind in "OU":
            array = self.group.create_array(name, shape=values.shape, dtype=str, dimension_names=(dim,))
            array[:] = values.astype(object)
        else:
            array = self.group.create_array(name, data=values, dimension_names=(dim,))
        if description:
            array.attrs["description"] = description

    def create_variable(
        self,
        name: str,
        item_shape: tuple[int, ...],
        dims: tuple[str, ...],
        chunk_steps: int,
        attrs: Mapping[str, Any],
        compressor: Any,
    ) -> None:
        """Create an empty float32 array ``(step, *dims)`` chunked by ``chunk_steps`` along step.

        The first variable also creates the ``step`` coordinate, chunked the same way.
        """
        if contract.STEP not in self.group:
            self._create_step_coordinate(chunk_steps)
        if name in self.group:
            raise ConfigError(f"{self.name} already has an array named {name!r}; choose another variable name")
        for dim, size in zip(dims, item_shape):
            if self._dim_sizes.get(dim, size) != size:
                raise ConfigError(
                    f"{name} has {size} entries along {dim!r}, but {dim!r} already has {self._dim_sizes[dim]}; "
                    f"give {name} its own dims (Recorder(dims={{{name!r}: (...)}}))"
                )
            if dim in contract.INDEXED_DIMS and dim not in self.group:
                self.write_coordinate(dim, dim, np.arange(size, dtype="int64"), contract.DESCRIPTIONS.get(dim, ""))
            self._dim_sizes[dim] = size
        self.group.create_array(
            name,
            shape=(0, *item_shape),
            chunks=(chunk_steps, *item_shape),
            dtype=contract.STORED_DTYPE,
            fill_value=np.nan,
            compressors=compressor,
            dimension_names=(contract.STEP, *dims),
            attributes=dict(attrs),
        )

    def dim_sizes(self) -> dict[str, int]:
        """Size of every named dimension in the store so far (``step`` excluded)."""
        return dict(self._dim_sizes)

    def link_coordinates(self, variables: list[str]) -> None:
        """Name each variable's non-index coordinates in its ``coordinates`` attribute (xarray reads it)."""
        coords_by_dim: dict[str, list[str]] = {}
        for name, array in self.group.arrays():
            (dim, *rest) = array.metadata.dimension_names or ("",)
            if not rest and name != dim and dim != contract.STEP and name not in variables:
                coords_by_dim.setdefault(dim, []).append(name)
        for variable in variables:
            array = self.group[variable]
            names = [c for dim in array.metadata.dimension_names for c in coords_by_dim.get(dim, [])]
            if names:
                array.attrs["coordinates"] = " ".join(sorted(names))
        _consolidate(self.group)

    def append(self, steps: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
        """Append rows to every step-dimensioned array, then commit them (see :class:`_Appender`)."""
        if self._appender is None:
            self._appender = sync(_Appender.open(self.group))
        sync(self._appender.append(steps, values))

    def finish(self) -> None:
        """Shrink every array's own metadata to the committed rows (a clean close)."""
        if self._appender is not None:
            sync(self._appender.finish())


class _Appender:
    """Appends with zarr's async API: the fewest metadata writes, chunks compressed concurrently.

    The arrays' own metadata reserve rows ahead (capacity grows by doubling, so resizes
    are rare); the consolidated metadata in the root ``zarr.json`` holds the committed
    shape and is written last, after every chunk of the append: it is the commit. xarray
    (and any reader of consolidated metadata) sees exactly the committed steps; after a
    clean :meth:`finish` the arrays' own metadata agree with it.
    """

    def __init__(self, root: zarr.AsyncGroup, arrays: dict[str, AsyncArray]) -> None:
        self.root = root
        self.arrays = arrays
        self.growing = [name for name, array in arrays.items() if (array.metadata.dimension_names or ("",))[0] == contract.STEP]
        self.rows = arrays[contract.STEP].shape[0]
        self.capacity = self.rows
        # The root document with every array's metadata consolidated (what zarr.consolidate_metadata
        # writes), serialised by zarr once; a commit only changes the growing arrays' step length.
        consolidated = ConsolidatedMetadata(metadata={name: array.metadata for name, array in arrays.items()})
        self.document = dataclasses.replace(root.metadata, consolidated_metadata=consolidated).to_dict()
        members = self.document["consolidated_metadata"]["metadata"]
        for name in self.growing:
            members[name]["shape"] = list(members[name]["shape"])
        self.committed_shapes = [members[name]["shape"] for name in self.growing]

    @classmethod
    async def open(cls, group: zarr.Group) -> _Appender:
        root = await zarr.api.asynchronous.open_group(store=group.store, path=group.path, mode="r+", use_consolidated=False)
        return cls(root, {name: array.with_config(WRITE_EVERY_CHUNK) async for name, array in root.arrays()})

    async def append(self, steps: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
        start, stop = self.rows, self.rows + len(steps)
        if stop > self.capacity:
            await self._reserve(max(stop, 2 * self.capacity))
        blocks = {**values, contract.STEP: steps}
        await asyncio.gather(*(self.arrays[name].setitem(slice(start, stop), block) for name, block in blocks.items()))
        await self._commit(stop)

    async def finish(self) -> None:
        await self._reserve(self.rows)

    async def _reserve(self, rows: int) -> None:
        await asyncio.gather(*(self.arrays[n].resize((rows, *self.arrays[n].shape[1:])) for n in self.growing))
        self.capacity = rows

    async def _commit(self, rows: int) -> None:
        """Write the root document with ``rows`` committed rows in every growing array."""
        for shape in self.committed_shapes:
            shape[0] = rows
        text = json.dumps(self.document, indent=zarr.config.get("json_indent"), allow_nan=True)
        await (self.root.store_path / ZARR_JSON).set(default_buffer_prototype().buffer.from_bytes(text.encode()))
        self.rows = rows

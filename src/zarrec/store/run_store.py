"""A zarrec store open for writing (:class:`RunStore`): created, reopened to resume, or
attached to by another rank; its coordinates and variables created; whole step-chunks
appended and committed (through :class:`~zarrec.store.appender.Appender`).

The store is a Zarr v3 group laid out as :mod:`zarrec.store.contract` describes. Each append
writes whole shards of every array (data and ``step``), then every array's own metadata,
then the consolidated metadata in the root: whichever metadata a reader goes by, it sees
only steps whose data is complete (see :class:`Appender` for the order).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync
from zarr.errors import ContainsArrayError, ContainsGroupError

from zarrec.errors import ConfigError, StoreExistsError
from zarrec.store import contract
from zarrec.store.appender import Appender
from zarrec.store.location import (
    StoreLike,
    committed_steps,
    describe,
    ensure_new,
    ensure_resumable,
    exists_message,
    last_of,
    local_directory,
    quiet_zarr,
)
from zarrec.store.lock import StoreLock
from zarrec.store.shards import numcodecs_compressor


def _status(state: str, reason: str, last_step: int | None) -> dict[str, Any]:
    return {"state": state, "reason": reason, "last_step": last_step, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


class RunStore:
    """A zarrec store open for writing: static coordinates, attributes and step-chunked variables.

    It holds the store's lock (local stores) from :meth:`create` or :meth:`reopen` until
    :meth:`finish`.
    """

    def __init__(self, group: zarr.Group, name: str, lock: StoreLock | None, commits: bool = True) -> None:
        self.group = group
        self.name = name
        self._lock = lock
        self._commits = commits  # False: another rank's part of a sharded run, which rank 0 commits
        self._dim_sizes: dict[str, int] = {}
        self._appender: Appender | None = None  # opened on the first append or status, by one thread at a time
        self.last_step: int | None = None  # the last committed step
        self.steps = np.empty(0, dtype=np.int64)  # the committed steps when reopened

    @classmethod
    def create(cls, out: StoreLike, *, attrs: Mapping[str, Any] | None = None, overwrite: bool = False) -> RunStore:
        """Create an empty store at ``out`` (a path, an fsspec URL or a zarr Store) with run
        attributes (hyperparameters, versions); see :func:`ensure_new`.

        Its metadata is consolidated from the start: xarray reads the whole hierarchy in one
        document, the same snapshot of every array.
        """
        ensure_new(out, overwrite=overwrite)
        directory = local_directory(out)
        if overwrite and directory is not None and directory.is_dir():
            StoreLock.acquire(directory, describe(out)).release()  # refuse to replace a store being written
        try:
            group = zarr.open_group(out, mode="w" if overwrite else "w-", zarr_format=3)
        except (ContainsGroupError, ContainsArrayError, FileExistsError) as exc:
            raise StoreExistsError(exists_message(describe(out))) from exc
        lock = StoreLock.acquire(directory, describe(out)) if directory is not None else None
        group.attrs.update({
            **(attrs or {}),
            contract.FORMAT_ATTR: contract.FORMAT_VERSION,
            contract.STATUS_ATTR: _status(contract.RECORDING, "the recording has started", None),
        })
        with quiet_zarr():  # (``group`` stays unconsolidated: it looks members up in the store)
            zarr.consolidate_metadata(group.store, path=group.path)
        return cls(group, describe(out), lock)

    @classmethod
    def reopen(cls, out: StoreLike) -> RunStore:
        """Open an existing zarrec store to continue it (see :meth:`drop_after`)."""
        ensure_resumable(out)
        name = describe(out)
        directory = local_directory(out)
        lock = StoreLock.acquire(directory, name) if directory is not None else None
        try:
            group = zarr.open_group(out, mode="r+", zarr_format=3)
            if contract.STEP not in group:
                raise ConfigError(f"{name} has no recorded steps; it cannot be resumed")
            store = cls(group, name, lock)
            store._pick_up_steps()  # through the consolidated metadata
            store._appender = sync(Appender.open(group, rows=store.steps.size))
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return store

    @classmethod
    def attach(cls, out: StoreLike) -> RunStore:
        """Open the store that rank 0 of a sharded run holds (created, or reopened and rolled
        back), to write this rank's shards of it: no lock, no metadata; :meth:`commit` only
        counts the rows that rank 0 commits."""
        name = describe(out)
        with quiet_zarr():
            group = zarr.open_group(out, mode="r+", zarr_format=3, use_consolidated=False)
        store = cls(group, name, lock=None, commits=False)
        store._pick_up_steps()
        return store

    def _pick_up_steps(self) -> None:
        """The committed steps and the last of them, as the group's metadata has them."""
        self.steps = committed_steps(self.group)
        self.last_step = last_of(self.steps)

    def drop_after(self, step: int) -> None:
        """Drop the committed steps after ``step`` (a reopened store), committing at once: the
        store never shows two histories for one step, even if the resumed run dies at once."""
        kept = int(np.searchsorted(self.steps, step, side="right"))
        self.last_step = last_of(self.steps[:kept])
        resumed = [*self._open_appender().document["attributes"].get(contract.RESUMED_ATTR, []), int(step)]
        self.set_status(
            contract.RECORDING, f"resumed after step {step}", self.last_step, {contract.RESUMED_ATTR: resumed}, rows=kept
        )
        sync(self._appender.delete_shards_after(kept))  # after the commit: no reader can see them any more

    def variables(self) -> dict[str, zarr.Array]:
        """The step-dimensioned data arrays (``step`` itself excluded), by name."""
        with quiet_zarr():  # (a summaries group's lock file is no Zarr node)
            return {
                name: array
                for name, array in self.group.arrays()
                if name != contract.STEP and contract.along_step(array.metadata.dimension_names)
            }

    @property
    def attrs(self) -> dict[str, Any]:
        """The group's attributes as last written by this store."""
        if self._appender is not None:
            return dict(self._appender.document["attributes"])
        return dict(self.group.attrs)

    @property
    def rows(self) -> int:
        """Rows committed so far."""
        return self._appender.rows if self._appender is not None else self.steps.size

    def _create_step_coordinate(self, chunk_steps: int) -> None:
        """The ``step`` index coordinate, empty: rows are appended with the data. Its
        ``chunk_steps`` attribute says how many steps a commit holds."""
        steps = contract.shard_steps(chunk_steps, 8)
        self.group.create_array(
            contract.STEP,
            shape=(0,),
            chunks=(steps,),
            shards=(steps,),
            dtype="int64",
            fill_value=-1,
            compressors=contract.checksummed(contract.default_compressor(typesize=8)),
            dimension_names=(contract.STEP,),
            attributes={"description": contract.DESCRIPTIONS[contract.STEP], contract.CHUNK_STEPS_ATTR: chunk_steps},
        )

    def write_coordinate(self, name: str, dim: str, values: np.ndarray, description: str = "") -> None:
        """Write a static coordinate along one non-step dimension (e.g. ``live`` along ``token``)."""
        values = np.asarray(values)
        if self._dim_sizes.get(dim, len(values)) != len(values):
            raise ConfigError(
                f"coordinate {name} has {len(values)} entries along {dim!r}, but {dim!r} already has {self._dim_sizes[dim]}"
            )
        self._dim_sizes[dim] = len(values)
        text = values.dtype.kind in "OU"
        codecs = contract.checksummed(contract.default_compressor(typesize=1 if text else values.dtype.itemsize))
        if text:
            array = self.group.create_array(name, shape=values.shape, dtype=str, dimension_names=(dim,), compressors=codecs)
            array[:] = values.astype(object)
        else:
            array = self.group.create_array(name, data=values, dimension_names=(dim,), compressors=codecs)
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
        shard_rows: int | None = None,
        exact_shard_rows: int | None = None,
    ) -> None:
        """Create an empty float32 array ``(step, *dims)`` in shards of every row (or of
        ``shard_rows`` rows, rounded down to whole inner chunks; or of exactly ``exact_shard_rows``,
        in a sharded run a divisor of each rank's rows, in inner chunks of a divisor of it) and ``chunk_steps``
        steps (a small array: a multiple, :func:`zarrec.store.contract.shard_steps`), split into
        inner chunks along its first non-step dim (:func:`zarrec.store.contract.inner_chunk_rows`).

        The first variable also creates the ``step`` coordinate.
        """
        numcodecs_compressor(compressor)  # refuse, before creating anything, one zarrec cannot write
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
            if dim not in self.group:  # every dim gets an index coordinate, so .sel works on it
                self.write_coordinate(dim, dim, np.arange(size, dtype="int64"), contract.DESCRIPTIONS.get(dim, ""))
            self._dim_sizes[dim] = size
        steps = contract.shard_steps(chunk_steps, 4 * math.prod(item_shape))
        inner, shard = (steps, *item_shape), (steps, *item_shape)
        if item_shape:
            rows, *rest = item_shape
            inner_rows = contract.inner_chunk_rows(steps, rows, 4 * math.prod(rest))
            inner = (steps, inner_rows, *rest)
            if exact_shard_rows is not None:
                inner = (steps, contract.divisor_at_most(exact_shard_rows, inner_rows), *rest)
                shard = (steps, exact_shard_rows, *rest)  # the last one may extend past the array's edge
            elif shard_rows is not None and shard_rows < rows:
                inner_rows = min(inner_rows, shard_rows)
                inner = (steps, inner_rows, *rest)
                shard = (steps, shard_rows // inner_rows * inner_rows, *rest)
            else:
                shard = (steps, -(-rows // inner_rows) * inner_rows, *rest)  # the array's edge may lie inside it
        self.group.create_array(
            name,
            shape=(0, *item_shape),
            chunks=inner,
            shards=shard,
            dtype=contract.STORED_DTYPE,
            fill_value=np.nan,
            compressors=contract.checksummed(compressor),
            dimension_names=(contract.STEP, *dims),
            attributes=dict(attrs),
        )

    def dim_sizes(self) -> dict[str, int]:
        """Size of every named dimension this store has written so far (``step`` excluded)."""
        return dict(self._dim_sizes)

    def link_coordinates(self, variables: list[str]) -> None:
        """Name each variable's non-index coordinates in its ``coordinates`` attribute (xarray reads it)."""
        coords_by_dim: dict[str, list[str]] = {}
        with quiet_zarr():
            for name, array in self.group.arrays():
                (dim, *rest) = array.metadata.dimension_names or ("",)
                if not rest and name != dim and dim != contract.STEP and name not in variables:
                    coords_by_dim.setdefault(dim, []).append(name)
            for variable in variables:
                array = self.group[variable]
                names = [c for dim in array.metadata.dimension_names for c in coords_by_dim.get(dim, [])]
                if names:
                    array.attrs["coordinates"] = " ".join(sorted(names))
            zarr.consolidate_metadata(self.group.store, path=self.group.path)

    def append(self, steps: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
        """Append rows to every step-dimensioned array, then commit them (see :class:`Appender`)."""
        self.write(values)
        self.commit(steps)

    def write(self, values: Mapping[str, np.ndarray], starts: Mapping[str, int] | None = None) -> None:
        """Write the next rows (after the committed ones) of some arrays, as whole shards, without
        committing them: ``values[name]`` begins at row ``starts[name]`` (default 0) of the array's
        first non-step dim, on a shard boundary (a large step is written a part at a time)."""
        sync(self._open_appender().write(values, starts or {}))

    def commit(self, steps: np.ndarray) -> None:
        """Write ``steps`` and commit them: every array's rows written since the last commit
        (on another rank than 0 of a sharded run: count them, rank 0 commits)."""
        appender = self._open_appender()
        if self._commits:
            sync(appender.commit_steps(steps))
        else:
            appender.advance(appender.rows + len(steps))
        self.last_step = int(steps[-1])

    def set_status(
        self, state: str, reason: str, last_step: int | None, extra: Mapping[str, Any] | None = None, rows: int | None = None
    ) -> None:
        """Record how the recording stands (:data:`zarrec.store.contract.STATUS_ATTR`), committing with it
        the committed rows, or ``rows`` of them (fewer: a rollback)."""
        appender = self._open_appender()
        appender.document["attributes"].update({contract.STATUS_ATTR: _status(state, reason, last_step), **(extra or {})})
        sync(appender.commit(appender.rows if rows is None else rows))

    def finish(self, state: str = contract.COMPLETE, reason: str = "closed normally") -> None:
        """Write the final status (rank 0 of a sharded run), release the lock."""
        try:
            if self._commits:
                self.set_status(state, reason, self.last_step)
        finally:
            self.release()

    def release(self) -> None:
        """Release the lock (once); :meth:`finish` does, after writing the final status."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _open_appender(self) -> Appender:
        if self._appender is None:
            self._appender = sync(Appender.open(self.group, rows=self.steps.size))
        return self._appender



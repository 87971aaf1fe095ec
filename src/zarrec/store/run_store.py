"""Creating a zarrec store and appending whole step-chunks to it.

The store is a Zarr v3 group laid out as :mod:`zarrec.store.contract` describes. Each append
writes whole shards of every array (data and ``step``), then every array's own metadata,
then the consolidated metadata in the root: whichever metadata a reader goes by, it sees
only steps whose data is complete (see :class:`_Appender` for the order).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr import AsyncArray
from zarr.core.buffer import default_buffer_prototype
from zarr.core.common import ZARR_JSON
from zarr.core.group import ConsolidatedMetadata
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.sync import sync
from zarr.errors import ContainsArrayError, ContainsGroupError

from zarrec.store import contract
from zarrec.errors import ConfigError, StoreExistsError
from zarrec.store.lock import StoreLock
from zarrec.store.shards import AssemblyBuffer, ShardWriter, numcodecs_compressor

StoreLike = str | os.PathLike | zarr.abc.store.Store

def describe(out: StoreLike) -> str:
    """A store's name for messages: its path or URL."""
    return os.fspath(out) if isinstance(out, (str, os.PathLike)) else repr(out)


@contextlib.contextmanager
def _quiet_zarr() -> Iterator[None]:
    """Silence zarr's user warning where we know better: consolidated metadata is not (yet)
    in the v3 spec, but xarray reads it (readers without it use the per-array metadata)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        yield


def _exists_message(name: str) -> str:
    return (
        f"{name} already exists; pass --resume to continue it, --overwrite (overwrite=True) to replace it, "
        "or choose another output path"
    )


def local_directory(out: StoreLike) -> Path | None:
    """The directory of a store on the local file system, or None (an fsspec URL, a Store object)."""
    if isinstance(out, (str, os.PathLike)) and "://" not in os.fspath(out):
        return Path(out)
    return None


def store_exists(out: StoreLike) -> bool:
    """Whether ``out`` holds a Zarr group (a recording to resume)."""
    if (path := local_directory(out)) is not None:
        return (path / "zarr.json").is_file()
    try:
        zarr.open_group(out, mode="r")
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        return False
    return True


def committed_step(out: StoreLike) -> int | None:
    """The last step committed to the zarrec store at ``out``, or None (none yet)."""
    return _last(_committed_steps(zarr.open_group(out, mode="r")))


def _committed_steps(group: zarr.Group) -> np.ndarray:
    """The steps committed to a zarrec group, as its metadata has them (none before the first commit)."""
    return group[contract.STEP][:] if contract.STEP in group else np.empty(0, dtype=np.int64)


def _last(steps: np.ndarray) -> int | None:
    return int(steps[-1]) if steps.size else None


def ensure_resumable(out: StoreLike) -> None:
    """Refuse to resume a recording that is not there, or one of another format."""
    if not store_exists(out):
        raise ConfigError(f"there is no recording to resume at {describe(out)}; drop --resume to start one")
    recorded = zarr.open_group(out, mode="r").attrs.get(contract.FORMAT_ATTR)
    if recorded is None:
        raise ConfigError(f"{describe(out)} is not a zarrec recording; it cannot be resumed")
    if recorded != contract.FORMAT_VERSION:
        raise ConfigError(
            f"{describe(out)} is a zarrec format {recorded} store; this zarrec resumes format "
            f"{contract.FORMAT_VERSION} only (it still reads, analyses and exports it): record the rest into a new store"
        )


def ensure_new(out: StoreLike, *, overwrite: bool = False) -> None:
    """Refuse a local ``out`` that is a file, a non-empty non-Zarr directory, or a store unless ``overwrite``."""
    if (path := local_directory(out)) is not None:
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
        self._appender: _Appender | None = None  # opened on the first append or status, by one thread at a time
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
            raise StoreExistsError(_exists_message(describe(out))) from exc
        lock = StoreLock.acquire(directory, describe(out)) if directory is not None else None
        group.attrs.update({
            **(attrs or {}),
            contract.FORMAT_ATTR: contract.FORMAT_VERSION,
            contract.STATUS_ATTR: _status(contract.RECORDING, "the recording has started", None),
        })
        with _quiet_zarr():  # (``group`` stays unconsolidated: it looks members up in the store)
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
            store._appender = sync(_Appender.open(group, rows=store.steps.size))
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
        with _quiet_zarr():
            group = zarr.open_group(out, mode="r+", zarr_format=3, use_consolidated=False)
        store = cls(group, name, lock=None, commits=False)
        store._pick_up_steps()
        return store

    def _pick_up_steps(self) -> None:
        """The committed steps and the last of them, as the group's metadata has them."""
        self.steps = _committed_steps(self.group)
        self.last_step = _last(self.steps)

    def drop_after(self, step: int) -> None:
        """Drop the committed steps after ``step`` (a reopened store), committing at once: the
        store never shows two histories for one step, even if the resumed run dies at once."""
        kept = int(np.searchsorted(self.steps, step, side="right"))
        self.last_step = _last(self.steps[:kept])
        resumed = [*self._open_appender().document["attributes"].get(contract.RESUMED_ATTR, []), int(step)]
        self.set_status(
            contract.RECORDING, f"resumed after step {step}", self.last_step, {contract.RESUMED_ATTR: resumed}, rows=kept
        )
        sync(self._appender.delete_shards_after(kept))  # after the commit: no reader can see them any more

    def variables(self) -> dict[str, zarr.Array]:
        """The step-dimensioned data arrays (``step`` itself excluded), by name."""
        with _quiet_zarr():  # (a summaries group's lock file is no Zarr node)
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
            compressors=contract.default_compressor(typesize=8),
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
            compressors=compressor,
            dimension_names=(contract.STEP, *dims),
            attributes=dict(attrs),
        )

    def dim_sizes(self) -> dict[str, int]:
        """Size of every named dimension this store has written so far (``step`` excluded)."""
        return dict(self._dim_sizes)

    def link_coordinates(self, variables: list[str]) -> None:
        """Name each variable's non-index coordinates in its ``coordinates`` attribute (xarray reads it)."""
        coords_by_dim: dict[str, list[str]] = {}
        with _quiet_zarr():
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
        """Append rows to every step-dimensioned array, then commit them (see :class:`_Appender`)."""
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

    def _open_appender(self) -> _Appender:
        if self._appender is None:
            self._appender = sync(_Appender.open(self.group, rows=self.steps.size))
        return self._appender


class _Appender:
    """Appends whole shards, then commits: every array's own ``zarr.json``, then the root's.

    The commit order, which every reader can rely on at every moment:

    1. the shards of the new rows, each written whole, beyond the arrays' shapes (a shard
       that already holds committed rows is written again whole, with them);
    2. each array's own ``zarr.json`` with the new number of rows: the data arrays, then
       ``step`` (so ``step`` is never longer than a data array);
    3. the root ``zarr.json``, whose consolidated metadata lists every array with the new
       rows (what xarray reads): the commit.

    A rollback (:meth:`RunStore.drop_after`) shrinks in the reverse order: ``step``, the data
    arrays, the root; then it deletes the shards beyond the kept rows. So a reader of the
    arrays' own metadata (tensorstore, zarrs, ``xr.open_zarr(consolidated=False)``) sees only
    complete rows of the current history at every moment, as a reader of the consolidated
    metadata does; the two differ only between steps 2 and 3 of a commit.
    """

    def __init__(self, root: zarr.AsyncGroup, arrays: dict[str, AsyncArray], rows: int) -> None:
        self.root = root
        self.metadata = {name: array.metadata for name, array in arrays.items()}
        self.growing = [name for name, array in arrays.items() if contract.along_step(array.metadata.dimension_names)]
        self.writers = {name: ShardWriter(root.store_path / name, self.metadata[name]) for name in self.growing}
        self.buffers: list[AssemblyBuffer] = []  # free ones, reused by whichever array writes next
        # A small array's committed rows in its last shard, when that shard is partial: kept as
        # written, so that the next commit, which rewrites the shard whole, need not read them back
        # (read once after a resume). Those of the writes not yet committed wait in _written_tails.
        self.tails: dict[str, np.ndarray] = {}
        self._written_tails: dict[str, np.ndarray] = {}
        self.rows = rows
        self.shapes_rows = {name: arrays[name].shape[0] for name in self.growing}  # as in their own zarr.json
        # The root document with every array's metadata consolidated (what zarr.consolidate_metadata
        # writes), serialised by zarr once; a commit only changes the growing arrays' step length.
        consolidated = ConsolidatedMetadata(metadata=dict(self.metadata))
        self.document = dataclasses.replace(root.metadata, consolidated_metadata=consolidated).to_dict()
        members = self.document["consolidated_metadata"]["metadata"]
        for name in self.growing:
            members[name]["shape"] = list(members[name]["shape"])
        self.committed_shapes = [members[name]["shape"] for name in self.growing]

    @classmethod
    async def open(cls, group: zarr.Group, rows: int) -> _Appender:
        """Open from the arrays' own metadata, with ``rows`` rows committed."""
        with _quiet_zarr():
            root = await zarr.api.asynchronous.open_group(store=group.store, path=group.path, mode="r+", use_consolidated=False)
            arrays = {name: array async for name, array in root.arrays()}
        return cls(root, arrays, rows)

    async def write(self, values: Mapping[str, np.ndarray], starts: Mapping[str, int]) -> None:
        """Write blocks after the committed rows, concurrently, each in an assembly buffer of
        :attr:`buffers` (the largest block gets the largest buffer: the memory held is that of
        the most blocks ever written at once, not of every array)."""
        if not await (self.root.store_path / ZARR_JSON).exists():
            # A local store recreates missing directories on write: without this check, a store
            # deleted while recording would silently become chunks without metadata.
            raise FileNotFoundError("its zarr.json is gone: the store was deleted or moved while recording")
        names = sorted(values, key=lambda name: values[name].nbytes, reverse=True)
        self.buffers.sort(key=lambda buffer: buffer.memory.size, reverse=True)
        taken = [self.buffers.pop(0) if self.buffers else AssemblyBuffer() for _ in names]
        try:
            await asyncio.gather(*(self._write(name, values[name], starts.get(name, 0), b) for name, b in zip(names, taken)))
        finally:
            self.buffers.extend(taken)

    async def commit_steps(self, steps: np.ndarray) -> None:
        """Write ``steps`` after the committed rows, and commit them in every array."""
        buffer = self.buffers[-1] if self.buffers else AssemblyBuffer()
        await self._write(contract.STEP, steps, 0, buffer)
        await self.commit(self.rows + len(steps))

    async def _write(self, name: str, block: np.ndarray, start: int, buffer: AssemblyBuffer) -> None:
        """Write ``block`` after the committed rows of ``name``, from row ``start`` of its first
        non-step dim, as whole shards."""
        steps = self.writers[name].shard[0]
        first = self.rows - self.rows % steps
        whole = start == 0 and block.shape[1:] == self.metadata[name].shape[1:]
        if first < self.rows:  # the first shard holds committed rows (after a flush or a resume): rewrite them too
            tail = self.tails.get(name) if whole else None
            if tail is None or len(tail) != self.rows - first:
                rows = slice(start, start + block.shape[1]) if block.ndim > 1 else slice(None)
                tail = await self._read(name, first, self.rows, rows)
            block = np.concatenate([tail, block])
        await self.writers[name].write(first, block, buffer, start)
        last_shard = (first + len(block)) // steps * steps - first  # where the last, partial shard begins
        if whole and block[last_shard:].nbytes <= contract.SMALL_SHARD_BYTES:
            self._written_tails[name] = np.array(block[last_shard:])  # a copy: block may be staging memory

    async def _read(self, name: str, start: int, stop: int, rows: slice) -> np.ndarray:
        array = AsyncArray(self._with_rows(name, stop), self.root.store_path / name)
        return await array.getitem((slice(start, stop), rows) if array.ndim > 1 else slice(start, stop))

    def _with_rows(self, name: str, rows: int) -> ArrayV3Metadata:
        """The metadata of array ``name`` with ``rows`` rows along step."""
        metadata = self.metadata[name]
        return dataclasses.replace(metadata, shape=(rows, *metadata.shape[1:]))

    async def commit(self, rows: int) -> None:
        """Commit ``rows`` rows in every growing array: their own metadata, then the root document."""
        data = [name for name in self.growing if name != contract.STEP]
        step = [name for name in self.growing if name == contract.STEP]
        shrinking = any(self.shapes_rows[name] > rows for name in step)
        for names in (step, data) if shrinking else (data, step):  # step shrinks first and grows last
            await asyncio.gather(*(self._set_shape(name, rows) for name in names if self.shapes_rows[name] != rows))
        for shape in self.committed_shapes:
            shape[0] = rows
        text = json.dumps(self.document, indent=zarr.config.get("json_indent"), allow_nan=True)
        await (self.root.store_path / ZARR_JSON).set(default_buffer_prototype().buffer.from_bytes(text.encode()))
        self.advance(rows)

    def advance(self, rows: int) -> None:
        """``rows`` rows are committed now (by this appender, or by rank 0 of a sharded run)."""
        if rows > self.rows:
            self.tails.update(self._written_tails)
        elif rows < self.rows:  # a rollback: the kept shard is read back when next written
            self.tails.clear()
        self._written_tails.clear()
        self.rows = rows

    async def _set_shape(self, name: str, rows: int) -> None:
        for key, buffer in self._with_rows(name, rows).to_buffer_dict(default_buffer_prototype()).items():
            await (self.root.store_path / name / key).set(buffer)
        self.shapes_rows[name] = rows

    async def delete_shards_after(self, rows: int) -> None:
        """Delete the shards that hold none of the first ``rows`` rows: an abandoned history."""
        await asyncio.gather(*(self._delete_shards_after(name, rows) for name in self.growing))

    async def _delete_shards_after(self, name: str, rows: int) -> None:
        steps = self.writers[name].shard[0]
        kept_shards = -(-rows // steps)
        prefix = f"{self.root.store_path.path}/{name}/c/".lstrip("/")
        async for key in self.root.store_path.store.list_prefix(prefix):
            first = key[len(prefix):].split("/")[0]
            # (anything else there is the partial file of a write a killed writer never finished)
            if not first.isdigit() or int(first) >= kept_shards:
                await self.root.store_path.store.delete(key)

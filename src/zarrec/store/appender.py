"""Appending whole shards to a store's arrays, then committing them: the commit order every
reader can rely on (:class:`Appender`)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping

import numpy as np
import zarr
from zarr import AsyncArray
from zarr.core.buffer import default_buffer_prototype
from zarr.core.common import ZARR_JSON
from zarr.core.group import ConsolidatedMetadata
from zarr.core.metadata import ArrayV3Metadata

from zarrec.store import contract
from zarrec.store.location import quiet_zarr
from zarrec.store.shards import AssemblyBuffer, ShardWriter


class Appender:
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
    async def open(cls, group: zarr.Group, rows: int) -> Appender:
        """Open from the arrays' own metadata, with ``rows`` rows committed."""
        with quiet_zarr():
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

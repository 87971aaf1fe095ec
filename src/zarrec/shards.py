"""Whole shards of the Zarr v3 ``sharding_indexed`` codec, encoded by zarrec.

A shard object is its inner chunks, each encoded by the inner codecs (``bytes``, then one
compressor), followed by the index: for every inner chunk in C order, its offset and length
as little-endian uint64, then the CRC32C of those bytes (``index_codecs``: ``bytes``,
``crc32c``; ``index_location``: ``end``). zarrec writes only whole shards, with one store
write each, so no reader ever sees part of one and zarr-python's partial-shard writes
(zarr-python#3560, #3682) are never used. Inner chunks are compressed in parallel on
:data:`_POOL`; measured, this writes as fast as unsharded whole-row chunks, where encoding
through zarr's sharding codec was 10-35 % slower (benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import google_crc32c
import numcodecs
import numpy as np
from numcodecs.abc import Codec
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ShardingCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.metadata import ArrayV3Metadata
from zarr.storage import MemoryStore, StorePath, WrapperStore

from zarrec.errors import ConfigError

_POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="zarrec-codec")


def numcodecs_compressor(codec: object) -> Codec:
    """The numcodecs codec that encodes exactly as the Zarr v3 compressor ``codec`` does; a
    :class:`~zarrec.errors.ConfigError` for one zarrec does not encode with."""
    if isinstance(codec, BloscCodec):
        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[codec.shuffle.value]
        return numcodecs.Blosc(cname=codec.cname.value, clevel=codec.clevel, shuffle=shuffle, blocksize=codec.blocksize)
    if isinstance(codec, ZstdCodec):
        return numcodecs.Zstd(level=codec.level, checksum=codec.checksum)
    if isinstance(codec, GzipCodec):
        return numcodecs.GZip(level=codec.level)
    raise ConfigError(
        f"zarrec writes shards with zarr.codecs.BloscCodec, ZstdCodec or GzipCodec, not {type(codec).__name__}; "
        "pass one of those as compressor"
    )


class ShardWriter:
    """Writes whole shards of one array: ``write(first_row, block)`` with ``first_row`` on a shard boundary."""

    def __init__(self, path: StorePath, metadata: ArrayV3Metadata) -> None:
        (sharding,) = metadata.codecs
        if not (
            isinstance(sharding, ShardingCodec) and sharding.index_location.value == "end"
            and [type(c) for c in sharding.index_codecs] == [BytesCodec, Crc32cCodec]
            and len(sharding.codecs) == 2 and isinstance(sharding.codecs[0], BytesCodec)
        ):
            raise ConfigError(f"{path} is not sharded as zarrec writes its arrays; record into a new store")
        self.path = path
        self.metadata = metadata
        self.memory = np.empty(0, dtype=np.uint8)  # where shards are assembled, reused
        self.shard = tuple(metadata.chunk_grid.chunk_shape)
        self.inner = tuple(sharding.chunk_shape)
        self.grid = tuple(s // i for s, i in zip(self.shard, self.inner))
        self.compressor = numcodecs_compressor(sharding.codecs[-1])
        self.fill_value = metadata.fill_value
        self.dtype = metadata.data_type.to_native_dtype().newbyteorder("<")
        # A store that keeps the buffer it is given (rather than writing it out) gets its own copy.
        self.keeps_buffers = isinstance(_innermost(path.store), MemoryStore)

    async def write(self, first_row: int, block: np.ndarray) -> None:
        """Write rows ``first_row ..`` of the array, ``block``, as whole shards, one after another
        (the last one may hold fewer steps than a shard: the rest of it is beyond the array's shape)."""
        steps = self.shard[0]
        assert first_row % steps == 0, "zarrec writes whole shards only"
        block = np.asarray(block, dtype=self.dtype)
        for start in range(0, len(block), steps):
            part = block[start:start + steps]
            # Along the other dims, a shard grid of more than one shard (none today) is covered whole.
            ranges = [range(0, n, s) for n, s in zip(part.shape[1:], self.shard[1:])]
            for offsets in itertools.product(*ranges):
                piece = part[(slice(None), *(slice(o, o + s) for o, s in zip(offsets, self.shard[1:])))]
                coords = ((first_row + start) // steps, *(o // s for o, s in zip(offsets, self.shard[1:])))
                shard = self._assemble(await self._encode(piece))
                buffer = default_buffer_prototype().buffer
                value = buffer.from_bytes(shard.tobytes()) if self.keeps_buffers else buffer.from_array_like(shard)
                await (self.path / self.metadata.encode_chunk_key(coords)).set(value)

    def _assemble(self, parts: list[bytes]) -> np.ndarray:
        """``parts`` one after the other in :attr:`memory` (grown when needed): a view valid until the next call."""
        size = sum(len(part) for part in parts)
        if size > self.memory.size:
            self.memory = np.empty(size, dtype=np.uint8)
        offset = 0
        for part in parts:
            self.memory[offset:offset + len(part)] = np.frombuffer(part, dtype=np.uint8)
            offset += len(part)
        return self.memory[:size]

    async def _encode(self, piece: np.ndarray) -> list[bytes]:
        """The parts of the shard object of ``piece`` (a shard's values, possibly cut short at the
        array's edge): its inner chunks encoded, in C order, then the index and its checksum."""
        chunks = [  # every inner chunk holds values: shards are padded by less than one inner chunk
            piece[tuple(slice(c * i, (c + 1) * i) for c, i in zip(coords, self.inner))] for coords in np.ndindex(*self.grid)
        ]
        workers = _POOL._max_workers
        groups = [chunks[i * len(chunks) // workers:(i + 1) * len(chunks) // workers] for i in range(workers)]
        loop = asyncio.get_running_loop()
        encoded = [
            data
            for group in await asyncio.gather(*(loop.run_in_executor(_POOL, self._encode_chunks, g) for g in groups))
            for data in group
        ]
        lengths = np.array([len(data) for data in encoded], dtype="<u8")
        index = np.stack([np.cumsum(lengths) - lengths, lengths], axis=1).astype("<u8").tobytes()
        checksum = np.uint32(google_crc32c.value(index)).astype("<u4").tobytes()
        return [*encoded, index, checksum]

    def _encode_chunks(self, chunks: list[np.ndarray]) -> list[bytes]:
        """Inner chunks, each padded with the fill value where the array's edge cuts it."""
        encoded = []
        for chunk in chunks:
            if chunk.shape != self.inner:
                padded = np.full(self.inner, self.fill_value, dtype=self.dtype)
                padded[tuple(slice(0, n) for n in chunk.shape)] = chunk
                chunk = padded
            encoded.append(bytes(self.compressor.encode(np.ascontiguousarray(chunk))))
        return encoded


def _innermost(store: object) -> object:
    while isinstance(store, WrapperStore):
        store = store._store
    return store

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
from zarr.storage import StorePath

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
        self.shard = tuple(metadata.chunk_grid.chunk_shape)
        self.inner = tuple(sharding.chunk_shape)
        self.grid = tuple(s // i for s, i in zip(self.shard, self.inner))
        self.compressor = numcodecs_compressor(sharding.codecs[-1])
        self.fill_value = metadata.fill_value
        self.dtype = metadata.data_type.to_native_dtype().newbyteorder("<")

    async def write(self, first_row: int, block: np.ndarray) -> None:
        """Write rows ``first_row ..`` of the array, ``block``, as whole shards (the last one
        may hold fewer steps than a shard: the rest of it is beyond the array's shape)."""
        steps = self.shard[0]
        assert first_row % steps == 0, "zarrec writes whole shards only"
        block = np.asarray(block, dtype=self.dtype)
        writes = []
        for start in range(0, len(block), steps):
            part = block[start:start + steps]
            # Along the other dims, a shard grid of more than one shard (none today) is covered whole.
            ranges = [range(0, n, s) for n, s in zip(part.shape[1:], self.shard[1:])]
            for offsets in itertools.product(*ranges):
                piece = part[(slice(None), *(slice(o, o + s) for o, s in zip(offsets, self.shard[1:])))]
                coords = ((first_row + start) // steps, *(o // s for o, s in zip(offsets, self.shard[1:])))
                writes.append(self._write_shard(coords, piece))
        await asyncio.gather(*writes)

    async def _write_shard(self, coords: tuple[int, ...], piece: np.ndarray) -> None:
        encoded = await self._encode(piece)
        key = self.metadata.encode_chunk_key(coords)
        await (self.path / key).set(default_buffer_prototype().buffer.from_bytes(encoded))

    async def _encode(self, piece: np.ndarray) -> bytes:
        """The shard object of ``piece`` (a shard's values, possibly cut short at the array's edge)."""
        loop = asyncio.get_running_loop()
        chunks = [  # every inner chunk holds values: shards are padded by less than one inner chunk
            piece[tuple(slice(c * i, (c + 1) * i) for c, i in zip(coords, self.inner))] for coords in np.ndindex(*self.grid)
        ]
        encoded = await asyncio.gather(*(loop.run_in_executor(_POOL, self._encode_chunk, chunk) for chunk in chunks))
        lengths = np.array([len(data) for data in encoded], dtype="<u8")
        index = np.stack([np.cumsum(lengths) - lengths, lengths], axis=1).astype("<u8")
        index_bytes = index.tobytes()
        checksum = np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes()
        return b"".join([*encoded, index_bytes, checksum])

    def _encode_chunk(self, chunk: np.ndarray) -> bytes:
        """One inner chunk, padded with the fill value where the array's edge cuts it."""
        if chunk.shape != self.inner:
            padded = np.full(self.inner, self.fill_value, dtype=self.dtype)
            padded[tuple(slice(0, n) for n in chunk.shape)] = chunk
            chunk = padded
        return bytes(self.compressor.encode(np.ascontiguousarray(chunk)))

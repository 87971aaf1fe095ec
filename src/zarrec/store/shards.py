"""Whole shards of the Zarr v3 ``sharding_indexed`` codec, encoded by zarrec.

A shard object is its inner chunks, each encoded by the inner codecs (``bytes``, then one
compressor, then ``crc32c``: the CRC32C of the compressed bytes, so that every reader refuses
a damaged chunk), followed by the index: for every inner chunk in C order, its offset and
length as little-endian uint64, then the CRC32C of those bytes (``index_codecs``: ``bytes``,
``crc32c``; ``index_location``: ``end``). zarrec writes only whole shards, with one store
write each, so no reader ever sees part of one and zarr-python's partial-shard writes
(zarr-python#3560, #3682) are never used.

Inner chunks are compressed in parallel on :data:`_POOL`, a group of them per worker, each
group straight into its own region of an :class:`AssemblyBuffer` that the store reuses from
shard to shard; the groups are then moved together. Fresh memory is what made many small compressor calls slow:
numcodecs allocates each output anew (page faults, and unmapping it again costs every thread),
and a fresh buffer of a GPT-2 embedding's size costs more in page faults than the copy itself.
So Blosc, the default, is called through c-blosc's ``blosc_compress_ctx`` (the one numcodecs
itself calls, from numcodecs' own extension module), which writes into memory it is given.
Measured (benchmarks/README.md, "Store layout").
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import google_crc32c
import numcodecs
import numcodecs.blosc
import numpy as np
from numcodecs.abc import Codec
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ShardingCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.metadata import ArrayV3Metadata
from zarr.storage import MemoryStore, StorePath, WrapperStore

from zarrec.errors import ConfigError

_WORKERS = os.cpu_count() or 1
_POOL = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="zarrec-codec")


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


class AssemblyBuffer:
    """Memory a shard is assembled in, grown as needed and reused (one shard at a time)."""

    def __init__(self) -> None:
        self.memory = np.empty(0, dtype=np.uint8)

    def reserve(self, size: int) -> np.ndarray:
        """At least ``size`` bytes (the contents are left over)."""
        if size > self.memory.size:
            self.memory = np.empty(0, dtype=np.uint8)  # the old one goes before the new one comes
            self.memory = np.empty(size, dtype=np.uint8)
        return self.memory


class ShardWriter:
    """Writes whole shards of one array: ``write(first_row, block, buffer)`` with ``first_row``
    on a shard boundary along ``step``, and the block's first row along the next dim (``start``)
    on one along that dim."""

    def __init__(self, path: StorePath, metadata: ArrayV3Metadata) -> None:
        (sharding,) = metadata.codecs
        if not (
            isinstance(sharding, ShardingCodec) and sharding.index_location.value == "end"
            and [type(c) for c in sharding.index_codecs] == [BytesCodec, Crc32cCodec]
            and len(sharding.codecs) in (2, 3) and isinstance(sharding.codecs[0], BytesCodec)
            and (len(sharding.codecs) == 2 or isinstance(sharding.codecs[2], Crc32cCodec))
        ):
            raise ConfigError(f"{path} is not sharded as zarrec writes its arrays; record into a new store")
        self.path = path
        self.metadata = metadata
        self.shard = tuple(metadata.chunk_grid.chunk_shape)
        self.inner = tuple(sharding.chunk_shape)
        self.grid = tuple(s // i for s, i in zip(self.shard, self.inner))
        self.compressor = numcodecs_compressor(sharding.codecs[1])
        # Stores written before inner chunks had checksums go on without them, as their metadata says.
        self.checksum_bytes = 4 if len(sharding.codecs) == 3 else 0
        self.fill_value = metadata.fill_value
        self.dtype = metadata.data_type.to_native_dtype().newbyteorder("<")
        # A store that keeps the buffer it is given (rather than writing it out) gets its own copy.
        self.keeps_buffers = isinstance(_innermost(path.store), MemoryStore)

    async def write(self, first_row: int, block: np.ndarray, buffer: AssemblyBuffer, start: int = 0) -> None:
        """Write rows ``first_row ..`` of the array, ``block``, as whole shards, one after another
        (the last one may hold fewer steps than a shard: the rest of it is beyond the array's
        shape); ``block`` begins at row ``start`` of the array's first non-step dim, and covers
        whole shards along the other dims (an edge shard extends past the array)."""
        steps = self.shard[0]
        assert first_row % steps == 0 and (len(self.shard) < 2 or start % self.shard[1] == 0), "whole shards only"
        block = np.asarray(block, dtype=self.dtype)
        origin = (start, *[0] * (block.ndim - 2))
        for first in range(0, len(block), steps):
            part = block[first:first + steps]
            ranges = [range(0, n, s) for n, s in zip(part.shape[1:], self.shard[1:])]
            for offsets in itertools.product(*ranges):
                piece = part[(slice(None), *(slice(o, o + s) for o, s in zip(offsets, self.shard[1:])))]
                coords = (
                    (first_row + first) // steps, *((b + o) // s for b, o, s in zip(origin, offsets, self.shard[1:]))
                )
                shard = await self._encode(piece, buffer)
                prototype = default_buffer_prototype().buffer
                value = prototype.from_bytes(shard.tobytes()) if self.keeps_buffers else prototype.from_array_like(shard)
                await (self.path / self.metadata.encode_chunk_key(coords)).set(value)

    async def _encode(self, piece: np.ndarray, buffer: AssemblyBuffer) -> np.ndarray:
        """The shard object of ``piece`` (a shard's values, possibly cut short at the array's edge),
        in ``buffer``: a view valid until its next use.

        The inner chunks, in C order, are split into one group per worker; each group is
        compressed into its own region of the shard, sized for the worst case, and moved down
        to follow the one before as soon as that one is in place.
        """
        chunks = [  # every inner chunk holds values: shards are padded by less than one inner chunk
            piece[tuple(slice(c * i, (c + 1) * i) for c, i in zip(coords, self.inner))] for coords in np.ndindex(*self.grid)
        ]
        bound = _compress_bound(math.prod(self.inner) * self.dtype.itemsize) + self.checksum_bytes
        groups = [range(i * len(chunks) // _WORKERS, (i + 1) * len(chunks) // _WORKERS) for i in range(_WORKERS)]
        memory = buffer.reserve(bound * len(chunks) + 16 * len(chunks) + 4)  # the regions, the index, its CRC32C
        loop = asyncio.get_running_loop()
        compressing = [
            loop.run_in_executor(_POOL, self._compress_group, [chunks[i] for i in group], memory, group.start * bound, bound)
            for group in groups
        ]
        index = np.zeros((len(chunks), 2), dtype="<u8")
        end = 0
        view = memoryview(memory)
        for group, compressed in zip(groups, compressing):
            lengths = np.array(await compressed, dtype="<u8")
            start, size = group.start * bound, int(lengths.sum())
            view[end:end + size] = view[start:start + size]  # a no-op for the first group
            index[group, 0] = end + np.cumsum(lengths) - lengths
            index[group, 1] = lengths
            end += size
        index_bytes = index.tobytes()
        checksum = np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes()
        view[end:end + len(index_bytes) + 4] = index_bytes + checksum
        return memory[:end + len(index_bytes) + 4]

    def _compress_group(self, chunks: list[np.ndarray], memory: np.ndarray, start: int, bound: int) -> list[int]:
        """Compress inner chunks one after another into ``memory`` from ``start``; their
        lengths (with their CRC32C, where the array has one). Each is padded with the fill value where the array's edge cuts it; one that is
        not contiguous in memory (rows of a multi-step shard) is copied into this thread's scratch
        buffer first: reused, it costs no page faults."""
        lengths = []
        for chunk in chunks:
            if chunk.shape != self.inner or not chunk.flags.c_contiguous:
                scratch = _scratch(self.inner, self.dtype)
                if chunk.shape != self.inner:
                    scratch.fill(self.fill_value)
                scratch[tuple(slice(0, n) for n in chunk.shape)] = chunk
                chunk = scratch
            length = _compress_into(self.compressor, chunk, memory[start:start + bound])
            if self.checksum_bytes:
                checksum = np.array([google_crc32c.value(memory[start:start + length])], dtype="<u4")
                memory[start + length:start + length + 4] = checksum.view(np.uint8)
                length += 4
            lengths.append(length)
            start += length
        return lengths


def _compress_bound(size: int) -> int:
    """The most bytes that zarrec's compressors make of ``size`` bytes (Blosc adds at most 16;
    Zstd and GZip a fraction of a per cent of incompressible input and a header)."""
    return size + size // 64 + 64


def _compress_into(compressor: Codec, chunk: np.ndarray, out: np.ndarray) -> int:
    """Compress the contiguous ``chunk`` into ``out``; the compressed length."""
    if isinstance(compressor, numcodecs.Blosc) and _BLOSC_COMPRESS_CTX is not None:
        length = _BLOSC_COMPRESS_CTX(
            compressor.clevel, compressor.shuffle, chunk.dtype.itemsize, chunk.nbytes, chunk.ctypes.data,
            out.ctypes.data, out.nbytes, compressor.cname.encode(), compressor.blocksize, 1,
        )
        if length <= 0:
            raise RuntimeError(f"c-blosc could not compress an inner chunk (error {length})")
        return length
    data = compressor.encode(chunk)
    out[:len(data)] = np.frombuffer(data, dtype=np.uint8)
    return len(data)


def _blosc_compress_ctx():
    """c-blosc's ``blosc_compress_ctx(clevel, doshuffle, typesize, nbytes, src, dest, destsize,
    compressor, blocksize, numinternalthreads)`` from numcodecs' extension module, which links
    c-blosc in and exports it; ``None`` where a build does not (numcodecs' own encode is used)."""
    try:
        function = ctypes.CDLL(numcodecs.blosc.__file__).blosc_compress_ctx
    except (OSError, AttributeError):
        return None
    size_t, pointer = ctypes.c_size_t, ctypes.c_void_p
    function.argtypes = [ctypes.c_int, ctypes.c_int, size_t, size_t, pointer, pointer, size_t, ctypes.c_char_p, size_t,
                         ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_BLOSC_COMPRESS_CTX = _blosc_compress_ctx()  # ctypes releases the GIL while it runs


_THREAD = threading.local()


def _scratch(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """This thread's buffer of ``shape`` and ``dtype`` (its contents are left over)."""
    size = math.prod(shape) * dtype.itemsize
    scratch = getattr(_THREAD, "scratch", None)
    if scratch is None or scratch.nbytes < size:
        scratch = _THREAD.scratch = np.empty(size, dtype=np.uint8)
    return scratch[:size].view(dtype).reshape(shape)


def _innermost(store: object) -> object:
    while isinstance(store, WrapperStore):
        store = store._store
    return store

"""Shards encoded by zarrec, decoded by zarr-python and tensorstore: edges, short shards, codecs."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec
from zarr.core.sync import sync

from foreign_readers import tensorstore_read
from zarrec import ConfigError
from zarrec.store.shards import AssemblyBuffer, ShardWriter


@pytest.mark.parametrize("compressor", [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), ZstdCodec(level=1),
                                        GzipCodec(level=1)])
def test_shards_cut_by_the_array_edge_decode_bit_for_bit(tmp_path, compressor):
    """Rows 13 in shards of 16 (4 inner chunks of 4), steps 7 in shards of 3: the last shard along
    step holds one step, the last inner chunk along rows three rows; NaN and Inf kept."""
    values = np.random.default_rng(0).normal(size=(7, 13, 5)).astype(np.float32)
    values[2, 3, 1], values[6, 12, 4] = np.nan, np.inf
    array = zarr.create_array(tmp_path / "x", shape=(7, 13, 5), chunks=(3, 4, 5), shards=(3, 16, 5), dtype="float32",
                              fill_value=np.nan, compressors=compressor)
    writer = ShardWriter(array._async_array.store_path, array.metadata)
    sync(writer.write(0, values[:3], AssemblyBuffer()))
    sync(writer.write(3, values[3:], AssemblyBuffer()))  # two shards in one call, the second one step long
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "x")[:], values)
    np.testing.assert_array_equal(tensorstore_read(tmp_path, "x"), values)


def test_a_store_that_keeps_buffers_gets_each_shard_its_own(tmp_path):
    """zarr's MemoryStore keeps the buffer it is given: the reused assembly buffer must not leak into it."""
    array = zarr.create_array(zarr.storage.MemoryStore(), shape=(4, 8), chunks=(1, 4), shards=(1, 8), dtype="float32",
                              fill_value=np.nan)
    writer = ShardWriter(array._async_array.store_path, array.metadata)
    values = np.arange(32, dtype=np.float32).reshape(4, 8)
    sync(writer.write(0, values, AssemblyBuffer()))
    np.testing.assert_array_equal(array[:], values)


def test_a_compressor_zarrec_cannot_encode_with_is_refused(tmp_path):
    from zarrec import Recorder

    with pytest.raises(ConfigError, match="zarrec writes shards with zarr.codecs.BloscCodec, ZstdCodec or GzipCodec"):
        with Recorder(tmp_path / "run.zarr", compressor=zarr.codecs.Crc32cCodec()) as recorder:
            recorder.record(0, x=np.zeros(3, np.float32))

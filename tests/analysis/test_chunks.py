"""The analysis re-opens a store's fine-chunked full state in chunks of more steps: same numbers, fewer chunks."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import train_tiny_lm

from zarrec import analysis
from zarrec.analysis import chunks
from zarrec.store import contract

pytestmark = pytest.mark.filterwarnings("ignore::zarrec.ZarrecWarning")  # (the slow writer of a one-step-chunk store)


@pytest.fixture(scope="module")
def one_step_chunks(tmp_path_factory):
    """12 steps of an embedding stored as a large model's are: one step a shard, rows in blocks
    (the layout's byte thresholds lowered to this model's size)."""
    path = tmp_path_factory.mktemp("runs") / "run.zarr"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(contract, "SMALL_SHARD_BYTES", 1)
        patch.setattr(contract, "TARGET_INNER_CHUNK_BYTES", 16 * 16 * 4)  # 16 rows a block
        train_tiny_lm(path, rows=64, width=16, steps=12, lr=0.01, chunk_steps=1)
    return path



def test_fine_chunks_are_reopened_in_more_steps_with_the_same_numbers(one_step_chunks, monkeypatch):
    opened = xr.open_zarr(one_step_chunks, chunks={})  # the stored chunks, as xr.open_zarr leaves a large model's
    stored = opened["embeddings"].chunks
    assert stored[:2] == ((1,) * 13, (16,) * 4)
    plain = analysis.speed(opened, "0.weight").compute()
    monkeypatch.setattr(chunks, "MAX_CHUNKS", 1)
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 4 * stored[1][0] * 16 * 4)  # four steps of a row block
    view = analysis.parameter(opened, "0.weight")
    assert view["param"].chunks == ((4, 4, 4, 1), *stored[1:])
    np.testing.assert_array_equal(analysis.speed(opened, "0.weight").values, plain.values)


def test_a_dataset_the_user_chunked_or_selected_is_left_as_it_is(one_step_chunks, monkeypatch):
    monkeypatch.setattr(chunks, "MAX_CHUNKS", 1)
    opened = xr.open_zarr(one_step_chunks, chunks={})
    for ds in (opened.chunk({"step": 5}), opened.isel(step=slice(0, 12)), opened.load()):
        assert analysis.parameter(ds, "0.weight")["param"].chunks == ds["embeddings"].chunks

"""The analysis re-opens a store's fine-chunked full state in chunks of more steps: same numbers, fewer chunks."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from zarrec import analysis
from zarrec.analysis import chunks

pytestmark = pytest.mark.filterwarnings("ignore::zarrec.ZarrecWarning")  # (the slow writer of a one-step-chunk store)


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

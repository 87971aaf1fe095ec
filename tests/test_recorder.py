"""Recorder: bitwise round trips, chunking, NaN/Inf, bounded staging and errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from zarrec import Recorder, RecordError, WriterError
from zarrec.store import RunStore


def random_steps(n: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "embeddings": torch.randn(6, 3, generator=generator).to(dtype),
            "logits": torch.randn(6, generator=generator).to(dtype),
            "loss": torch.rand((), generator=generator),
        }
        for _ in range(n)
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_values_round_trip_bitwise(tmp_path, dtype):
    steps = random_steps(11, dtype)
    with Recorder(tmp_path / "r.zarr", chunk_steps=4) as recorder:
        for t, values in enumerate(steps):
            recorder.record(t, **values)
    ds = xr.open_zarr(tmp_path / "r.zarr")
    np.testing.assert_array_equal(ds.step, np.arange(11))
    for name in ("embeddings", "logits", "loss"):
        expected = torch.stack([values[name] for values in steps]).float().numpy()
        np.testing.assert_array_equal(ds[name].values, expected)
    assert ds.embeddings.dims == ("step", "token", "dim")
    assert ds.embeddings.attrs["source_dtype"] == str(dtype).removeprefix("torch.")
    assert ds.embeddings.encoding["preferred_chunks"]["step"] == 4


def test_every_bfloat16_bit_pattern_is_stored_as_its_float32(tmp_path):
    every_bf16 = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    with Recorder(tmp_path / "r.zarr") as recorder:
        recorder.record(0, x=every_bf16)
    stored = zarr.open_group(tmp_path / "r.zarr", mode="r")["x"][0]
    np.testing.assert_array_equal(stored.view(np.int32), every_bf16.float().numpy().view(np.int32))


@pytest.mark.parametrize(
    ("shapes", "dtype", "expected"),
    [
        ({"embeddings": (128, 64), "logits": (128,), "loss": ()}, torch.bfloat16, 512),  # the reference run
        ({"loss": ()}, torch.float32, 512),  # capped: a crash loses at most this many steps
        ({"w": (1024, 1024), "v": (1024, 1024)}, torch.float32, 4),  # 16 MB chunks of each
        ({"w": (4096, 4096)}, torch.float32, 1),  # larger than a chunk: one step per chunk
        ({f"p{i}": (256, 256) for i in range(64)}, torch.bfloat16, 8),  # capped by staging memory
    ],
)
def test_chunk_steps_default_to_about_16_mb_per_chunk(tmp_path, shapes, dtype, expected):
    with Recorder(tmp_path / "r.zarr") as recorder:
        recorder.record(0, **{name: torch.zeros(shape, dtype=dtype) for name, shape in shapes.items()})
    assert recorder.chunk_steps == expected
    group = zarr.open_group(tmp_path / "r.zarr", mode="r")
    assert {group[name].chunks[0] for name in [*shapes, "step"]} == {expected}


def test_nan_and_inf_are_recorded_as_they_are(tmp_path):
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-45])
    with Recorder(tmp_path / "r.zarr", chunk_steps=2) as recorder:
        recorder.record(0, x=special)
        recorder.record(1, x=-special)
    stored = zarr.open_array(tmp_path / "r.zarr" / "x")[:]
    np.testing.assert_array_equal(stored[0].view(np.uint32), special.numpy().view(np.uint32))
    np.testing.assert_array_equal(stored[1].view(np.uint32), (-special).numpy().view(np.uint32))


def test_missing_values_of_a_step_are_nan(tmp_path):
    with Recorder(tmp_path / "r.zarr", chunk_steps=3) as recorder:
        recorder.record(0, a=torch.ones(2), b=1.5)
        for t in range(1, 5):
            recorder.record(t, b=float(t))  # a not given: NaN, also in recycled staging buffers
        recorder.record(5, a=torch.zeros(2))
    ds = xr.open_zarr(tmp_path / "r.zarr")
    assert np.isnan(ds.a.values[1:5]).all() and (ds.a.values[0] == 1).all() and (ds.a.values[5] == 0).all()
    np.testing.assert_array_equal(ds.b.values, [1.5, 1, 2, 3, 4, np.nan])


def test_numpy_and_python_values(tmp_path):
    with Recorder(tmp_path / "r.zarr") as recorder:
        recorder.record(7, w=np.arange(4, dtype=np.float64), lr=1e-3, count=3)
    ds = xr.open_zarr(tmp_path / "r.zarr")
    np.testing.assert_array_equal(ds.w.values, [[0, 1, 2, 3]])
    assert ds.lr.values[0] == np.float32(1e-3) and ds["count"].values[0] == 3
    assert ds.step.values.tolist() == [7]


def test_custom_dims_and_coords(tmp_path):
    live = np.array([True, False, True])
    with Recorder(tmp_path / "r.zarr", dims={"w": ("token", "dim")}, coords={"live": ("token", live)}) as recorder:
        recorder.record(0, w=torch.zeros(3, 2), other=torch.zeros(5))
    ds = xr.open_zarr(tmp_path / "r.zarr")
    assert ds.w.dims == ("step", "token", "dim") and ds.other.dims == ("step", "other_dim0")
    assert "live" in ds.w.coords and "live" not in ds.other.coords
    np.testing.assert_array_equal(ds.live.values, live)


def test_store_is_readable_without_warnings_while_recording(tmp_path):
    recorder = Recorder(tmp_path / "r.zarr", chunk_steps=2)
    for t in range(5):
        recorder.record(t, x=torch.full((2,), float(t)))
    recorder.flush(wait=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(tmp_path / "r.zarr")
    np.testing.assert_array_equal(ds.step, np.arange(5))
    recorder.record(5, x=torch.zeros(2))  # recording continues after a flush, into the same chunk
    recorder.close()
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "r.zarr").x.values[:, 0], [0, 1, 2, 3, 4, 0])


def test_staging_memory_is_bounded(tmp_path):
    with Recorder(tmp_path / "r.zarr", chunk_steps=2, buffers=3) as recorder:
        for t in range(40):
            recorder.record(t, x=torch.zeros(100))
        buffers = {id(recorder._current)} | {id(b) for b in list(recorder._free.queue)}
        assert recorder._free.qsize() + (recorder._current is not None) <= 3
        assert len(buffers) <= 3
    assert xr.open_zarr(tmp_path / "r.zarr").sizes["step"] == 40


def test_close_on_exception_flushes_the_partial_chunk(tmp_path):
    with pytest.raises(KeyError):
        with Recorder(tmp_path / "r.zarr", chunk_steps=8) as recorder:
            for t in range(3):
                recorder.record(t, x=torch.ones(2) * t)
            raise KeyError("training crashed")
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "r.zarr").step, [0, 1, 2])


def test_steps_must_increase(tmp_path):
    with Recorder(tmp_path / "r.zarr") as recorder:
        recorder.record(3, x=1.0)
        with pytest.raises(RecordError, match="not after the last recorded step 3"):
            recorder.record(3, x=2.0)


def test_a_bad_value_is_refused_before_anything_is_staged(tmp_path):
    with Recorder(tmp_path / "r.zarr") as recorder:
        recorder.record(0, a=torch.zeros(2), b=torch.zeros(3))
        with pytest.raises(RecordError, match=r"b has shape \(4,\) at step 1, expected \(3,\)"):
            recorder.record(1, a=torch.ones(2), b=torch.ones(4))
        with pytest.raises(RecordError, match="'c' was not in the first record"):
            recorder.record(1, a=torch.ones(2), c=torch.ones(1))
        recorder.record(1, b=torch.ones(3))
    ds = xr.open_zarr(tmp_path / "r.zarr")
    assert np.isnan(ds.a.values[1]).all()  # the refused calls left nothing behind


def test_invalid_arguments(tmp_path):
    with pytest.raises(RecordError, match="chunk_steps"):
        Recorder(tmp_path / "a.zarr", chunk_steps=0)
    with Recorder(tmp_path / "b.zarr") as recorder:
        with pytest.raises(RecordError, match="at least one named value"):
            recorder.record(0)
        with pytest.raises(RecordError, match="record tensors, arrays or numbers"):
            recorder.record(0, x="text")
    with pytest.raises(RecordError, match="closed"):
        recorder.record(1, x=1.0)


class FailingStore(RunStore):
    """A real store whose disk 'fills up' after a number of chunk writes."""

    writes_before_failure = 2

    def append(self, steps, values):
        if self.writes_before_failure == 0:
            raise OSError(28, "No space left on device")
        self.writes_before_failure -= 1
        super().append(steps, values)


def test_writer_error_is_raised_in_the_training_thread(tmp_path, monkeypatch):
    monkeypatch.setattr("zarrec.recorder.RunStore", FailingStore)
    recorder = Recorder(tmp_path / "r.zarr", chunk_steps=2)
    with pytest.raises(WriterError, match="No space left on device") as raised:
        for t in range(100):
            recorder.record(t, x=torch.zeros(3))
    assert str(tmp_path / "r.zarr") in str(raised.value)
    assert isinstance(raised.value.__cause__, OSError)
    with pytest.raises(WriterError):
        recorder.close()
    # what was written before the failure is intact
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "r.zarr").step, [0, 1, 2, 3])


def test_readme_training_loop_example_runs(tmp_path, monkeypatch):
    """The README's plain-PyTorch example, executed as written."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "Recorder(" in block)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    ds = xr.open_zarr(tmp_path / "run.zarr")
    np.testing.assert_array_equal(ds.step, np.arange(1, 1001))
    assert ds.embeddings.dims == ("step", "token", "dim") and ds.loss.notnull().all()

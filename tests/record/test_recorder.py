"""Recorder: bitwise round trips, chunking, NaN/Inf, bounded staging and errors."""

from __future__ import annotations

import ast
import contextlib
import math
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FullDisk
from zarrec import ConfigError, Recorder, RecordError, WriterError, ZarrecWarning
from zarrec.store import contract


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
    assert ds.embeddings.encoding["preferred_chunks"]["step"] == contract.shard_steps(4, 4 * math.prod(ds.embeddings.shape[1:]))


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
    assert group["step"].attrs["chunk_steps"] == expected
    for name in [*shapes, "step"]:  # a small array holds a whole number of chunks a shard
        assert group[name].shards[0] == contract.shard_steps(expected, group[name].dtype.itemsize * math.prod(group[name].shape[1:]))


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


def test_label_names_dims_and_attributes_before_the_first_step(tmp_path):
    with Recorder(tmp_path / "r.zarr") as recorder:
        recorder.label("w", ("w.row", "w.col"), param="layer.weight", description="the weight")
        recorder.record(0, w=torch.zeros(3, 2))
        with pytest.raises(RecordError, match="label 'v' before the first record"):
            recorder.label("v", ("x",))
    w = xr.open_zarr(tmp_path / "r.zarr").w
    assert w.dims == ("step", "w.row", "w.col")
    assert w.attrs["param"] == "layer.weight" and w.attrs["description"] == "the weight"


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


def full_disk_run(tmp_path, on_error: str, writes: int = 14):
    """Record 0..99 (4 steps a chunk) onto a disk that fills up after ``writes`` writes."""
    path = tmp_path / "r.zarr"
    recorder = Recorder(FullDisk(path, writes), chunk_steps=4, on_error=on_error)
    values = [torch.full((3,), float(t)) for t in range(100)]
    return path, recorder, values


def test_a_full_disk_raises_in_the_training_thread_naming_store_and_cause(tmp_path):
    path, recorder, values = full_disk_run(tmp_path, "raise")
    with pytest.raises(WriterError, match=rf"writing to FullDisk\({path}\) failed \(OSError: .*No space left") as raised:
        for t in range(100):
            recorder.record(t, x=values[t])
    failed_at = t
    assert isinstance(raised.value.__cause__, OSError)
    with pytest.raises(WriterError):
        recorder.close()  # returns (no hang), and says it again
    ds = xr.open_zarr(path)  # what was committed before the failure is intact
    committed = ds.step.size
    # Noticed at the next record(), at the latest when every staging buffer (3 of 4 steps) is full.
    assert committed > 0 and failed_at <= committed + 3 * 4
    np.testing.assert_array_equal(ds.step, np.arange(committed))
    np.testing.assert_array_equal(ds.x.values, torch.stack(values[:committed]).numpy())


def test_on_error_warn_keeps_training_and_leaves_the_store_consistent(tmp_path):
    path, recorder, values = full_disk_run(tmp_path, "warn")
    with pytest.warns(ZarrecWarning, match="No space left on device.*recording has stopped, training goes on"):
        for t in range(100):
            recorder.record(t, x=values[t])
    recorder.close()  # no exception
    ds = xr.open_zarr(path)
    np.testing.assert_array_equal(ds.step, np.arange(ds.step.size))
    np.testing.assert_array_equal(ds.x.values, torch.stack(values[: ds.step.size]).numpy())


def test_a_store_deleted_while_recording_is_an_error_not_a_silent_loss(tmp_path):
    path = tmp_path / "r.zarr"
    recorder = Recorder(path, chunk_steps=2)
    for t in range(2):
        recorder.record(t, x=torch.zeros(3))
    recorder.flush(wait=True)
    shutil.rmtree(path)
    with pytest.raises(WriterError, match="was deleted or moved while recording"):
        for t in range(2, 4):
            recorder.record(t, x=torch.zeros(3))
        recorder.flush(wait=True)
    with pytest.raises(WriterError):
        recorder.close()


# A reader in its own process: opens the store again and again while it is written, as xarray
# does (consolidated metadata) and as tensorstore and zarr-python without consolidated metadata do
# (each array's own zarr.json); checks that each sees steps 0..n-1 with their values, and prints
# each n of xarray's and of tensorstore's; stops once the store is complete.
READER = textwrap.dedent(
    """
    import sys, time, warnings, numpy as np, xarray as xr
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from foreign_readers import tensorstore_view, zarr_unconsolidated_view

    def check(steps, x):
        np.testing.assert_array_equal(steps, np.arange(steps.size))
        np.testing.assert_array_equal(x, np.repeat(np.arange(x.shape[0], dtype=np.float32), 5).reshape(-1, 5))

    path, seen, own = Path(sys.argv[1]), [], []
    print("ready", flush=True)
    while True:
        if not (path / "zarr.json").exists():
            continue
        with warnings.catch_warnings():
            # For an instant while the group is created its metadata is not yet consolidated:
            # xarray then warns and lists the (still empty) group.
            warnings.simplefilter("ignore")
            ds = xr.open_zarr(path)
        steps = ds.step.values if "step" in ds else np.arange(0)  # none before step 0 is recorded
        check(steps, ds.x.values if "x" in ds else np.zeros((0, 5)))
        if (path / "x" / "zarr.json").exists():
            for view in (tensorstore_view(path, ["step", "x"]), zarr_unconsolidated_view(path)):
                check(view["step"], view["x"])
            own.append(int(view["step"].size))
        seen.append(int(steps.size))
        if ds.attrs.get("zarrec_status", {}).get("state") == "complete":
            print({"seen": seen, "own": own})
            break
    """
)


def test_readers_always_see_a_consistent_prefix_while_recording(tmp_path):
    path = tmp_path / "r.zarr"
    tests = str(Path(__file__).parents[1])  # where foreign_readers is
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path), tests], stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "ready"
    with Recorder(path, chunk_steps=4, flush_every=3) as recorder:
        for t in range(120):
            recorder.record(t, x=torch.full((5,), float(t)))
            time.sleep(0.01)  # a training step
    report = ast.literal_eval(reader.communicate(timeout=60)[0])
    assert reader.returncode == 0
    for seen in (report["seen"], report["own"]):  # xarray's rows; the arrays' own (zarr without consolidation)
        assert seen == sorted(seen) and seen[-1] == 120 and len(set(seen)) > 2, seen


def test_resume_drops_the_steps_after_the_checkpoint_then_continues(tmp_path):
    path = tmp_path / "r.zarr"
    first, second = random_steps(11, seed=1), random_steps(14, seed=2)
    with Recorder(path, chunk_steps=4, attrs={"lr": 1e-3}) as recorder:
        for t in range(11):
            recorder.record(t, **first[t])
    resumed = Recorder(path, resume_from=6, attrs={"lr": 1e-3})
    np.testing.assert_array_equal(xr.open_zarr(path).step, np.arange(7))  # dropped at once
    with resumed:
        for t in range(7, 14):
            resumed.record(t, **second[t])
    ds = xr.open_zarr(path)
    np.testing.assert_array_equal(ds.step, np.arange(14))
    expected = torch.stack([first[t]["embeddings"] for t in range(7)] + [second[t]["embeddings"] for t in range(7, 14)])
    np.testing.assert_array_equal(ds.embeddings.values, expected.numpy())
    assert ds.attrs[contract.RESUMED_ATTR] == [6] and ds.attrs[contract.STATUS_ATTR]["state"] == contract.COMPLETE
    assert ds.embeddings.encoding["preferred_chunks"]["step"] == contract.shard_steps(4, 4 * math.prod(ds.embeddings.shape[1:]))


def test_resuming_a_different_run_is_refused_naming_the_difference(tmp_path):
    path = tmp_path / "r.zarr"
    with Recorder(path, attrs={"lr": 1e-3, "model": {"layers": 2}}, coords={"live": ("token", [True, False])}) as recorder:
        recorder.record(0, embeddings=torch.zeros(2, 3, dtype=torch.bfloat16))
    with pytest.raises(ConfigError, match=r"differs in lr: recorded 0.001, now 0.002; model.layers: recorded 2, now 3"):
        Recorder(path, resume_from=0, attrs={"lr": 2e-3, "model": {"layers": 3}})
    with pytest.raises(ConfigError, match="differs in coordinate live"):
        Recorder(path, resume_from=0, coords={"live": ("token", [True, True])})
    with Recorder(path, resume_from=0) as recorder:  # refusals leave the store and its lock as they were
        with pytest.raises(ConfigError, match=r"embeddings is float32 \(2, 3\) but .* recorded it as bfloat16"):
            recorder.record(1, embeddings=torch.zeros(2, 3))
    assert xr.open_zarr(path).step.values.tolist() == [0]


def read_committed(path) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of ``x`` that a reader sees (none if the store never got a step)."""
    if not (path / "zarr.json").exists() or "step" not in zarr.open_group(path, mode="r"):
        return np.arange(0), np.zeros((0, 2))  # the disk filled up before step 0 was recorded
    ds = xr.open_zarr(path)
    return ds.step.values, ds.x.values


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunk_steps=st.integers(1, 5),
    every=st.integers(1, 3),
    segments=st.lists(
        st.tuples(
            st.integers(0, 14),  # training steps in this segment
            st.sets(st.integers(0, 14), max_size=3),  # flush after these of them
            st.none() | st.integers(0, 40),  # the disk fills up after this many writes: a crash
            st.integers(0, 4),  # the next segment resumes from a checkpoint this many steps before the last commit
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_any_mix_of_every_chunks_flushes_crashes_and_resumes_matches_an_in_ram_reference(chunk_steps, every, segments):
    """The step coordinate stays contiguous (every ``every``-th step) and duplicate-free, and holds
    exactly what an in-RAM reference recording holds: after a crash a prefix of it, after a resume
    the kept steps then the new ones."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "r.zarr"
        committed: dict[int, np.ndarray] = {}  # what the store holds
        next_step, resume_from = 0, None
        for index, (length, flushes, writes, back) in enumerate(segments):
            store = path if writes is None else FullDisk(path, writes)
            expected = dict(committed)  # what the store should hold, as the recorder is told it
            recorder, crashed = None, False
            try:
                recorder = Recorder(store, chunk_steps=chunk_steps, resume_from=resume_from,
                                    overwrite=resume_from is None and index > 0)
                if resume_from is not None:
                    expected = {s: v for s, v in committed.items() if s <= resume_from}
                elif index > 0:
                    expected = {}
                for position, step in enumerate(range(next_step, next_step + length)):
                    if step % every == 0:
                        value = np.full(2, step + 1000 * index, dtype=np.float32)
                        recorder.record(step, x=torch.from_numpy(value))
                        expected[step] = value
                    if position in flushes:
                        recorder.flush()
                recorder.close()
            except WriterError:
                crashed = True
                if recorder is not None:
                    with contextlib.suppress(WriterError):
                        recorder.close()
            steps, values = read_committed(path)
            order = sorted(expected)
            assert steps.tolist() == order[: steps.size]  # a prefix, in order, no duplicates
            np.testing.assert_array_equal(values, np.array([expected[s] for s in steps.tolist()]).reshape(-1, 2))
            if not crashed:
                assert steps.tolist() == order  # nothing lost
            committed = {s: expected[s] for s in steps.tolist()}
            # Training continues from a checkpoint at or before the last committed step.
            if steps.size:
                resume_from = max(-1, int(steps[-1]) - back)
                next_step = resume_from + 1
            else:
                resume_from, next_step = None, 0  # nothing kept: start again


def test_a_wider_dtype_than_the_first_steps_is_refused_not_rounded(tmp_path):
    with Recorder(tmp_path / "r.zarr") as recorder:
        recorder.record(0, x=torch.zeros(2, dtype=torch.bfloat16))
        recorder.record(1, x=torch.ones(2, dtype=torch.bfloat16))
        with pytest.raises(RecordError, match="x is float32 at step 2 but bfloat16 in the first step"):
            recorder.record(2, x=torch.full((2,), 1.001))  # would be rounded to 1.0 in bf16
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "r.zarr").x.values, [[0, 0], [1, 1]])


def test_a_parameter_its_gradient_and_its_state_share_dims(tmp_path):
    """``W.grad`` and ``W.exp_avg`` take the dims of ``W`` (same shape), so ``W - W.grad`` never broadcasts."""
    with Recorder(tmp_path / "r.zarr") as recorder:
        for t in range(3):
            recorder.record(t, **{"q0": torch.ones(4, 3), "q0.grad": torch.ones(4, 3), "q0.exp_avg": torch.ones(4, 3),
                                  "q0.mask": torch.ones(4)})
    ds = xr.open_zarr(tmp_path / "r.zarr")
    assert ds["q0"].dims == ds["q0.grad"].dims == ds["q0.exp_avg"].dims == ("step", "q0_dim0", "q0_dim1")
    assert ds["q0.mask"].dims == ("step", "q0_mask_dim0")  # another shape: its own dims
    assert (ds["q0"] - ds["q0.grad"]).shape == (3, 4, 3)
    assert ds.sel(q0_dim0=2, q0_dim1=1)["q0"].dims == ("step",)  # every dim has an index coordinate


def test_mantissa_rounding_keeps_the_stated_bits_and_plain_float32(tmp_path):
    """7 bits (bfloat16's precision): every stored value within 2^-8 of the given one, relatively,
    its low 16 bits zero; NaN, Inf and the per-step scalars exact; the attribute says so."""
    rng = np.random.default_rng(0)
    given = [rng.normal(scale=10.0 ** rng.integers(-30, 30), size=(8, 5)).astype(np.float32) for _ in range(6)]
    given[2][0, :3] = [np.nan, np.inf, -np.inf]
    given[3][1, 0] = np.frombuffer(np.uint32(0x7F800001).tobytes(), np.float32)[0]  # a NaN whose payload is in low bits
    with Recorder(tmp_path / "r.zarr", chunk_steps=4, mantissa_bits=7) as recorder:
        for step, values in enumerate(given):
            recorder.record(step, w=torch.from_numpy(values), loss=float(values[0, 3]))
    ds = xr.open_zarr(tmp_path / "r.zarr")
    stored, exact = ds.w.values, np.stack(given)
    assert stored.dtype == np.float32 and ds.w.attrs["mantissa_bits"] == 7 and "mantissa_bits" not in ds.loss.attrs
    finite = np.isfinite(exact)
    assert (np.abs(stored[finite] - exact[finite]) <= 2.0**-8 * np.abs(exact[finite])).all()
    assert (stored[finite].view(np.uint32) & 0xFFFF == 0).all()
    np.testing.assert_array_equal(np.isnan(stored), np.isnan(exact))
    np.testing.assert_array_equal(stored[np.isinf(exact)], exact[np.isinf(exact)])
    np.testing.assert_array_equal(ds.loss.values, exact[:, 0, 3])  # scalars are not rounded
    rounded_to_bf16 = torch.from_numpy(exact).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(stored[finite], rounded_to_bf16[finite])  # exactly what a cast to bfloat16 keeps
    with pytest.raises(RecordError, match="mantissa_bits must be between 1 and 22"):
        Recorder(tmp_path / "bad.zarr", mantissa_bits=23)


def record_steps(recorder: Recorder, steps: int, seconds_a_step: float) -> None:
    for step in range(steps):
        time.sleep(seconds_a_step)  # the training step
        recorder.record(step, x=torch.full((64, 64), float(step)), loss=float(step))


def test_a_writer_that_cannot_keep_up_is_named_once_with_its_rates(tmp_path):
    """A real store that is slow on purpose: the training thread waits, and says so, once."""
    from conftest import SlowDisk

    with pytest.warns(ZarrecWarning) as caught:
        with Recorder(SlowDisk(tmp_path / "slow.zarr", delay=0.05), chunk_steps=2) as recorder:
            record_steps(recorder, 16, seconds_a_step=0.001)
    slow = [w for w in caught if "training waited for the writer" in str(w.message)]
    assert len(slow) == 1
    message = str(slow[0].message)
    assert "SlowDisk(" in message and "/s, the run makes " in message and "every=N" in message and "mantissa_bits=7" in message
    assert xr.open_zarr(tmp_path / "slow.zarr").step.size == 16  # nothing lost: it only waited


def test_a_writer_that_keeps_up_says_nothing(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZarrecWarning)
        with Recorder(tmp_path / "fast.zarr", chunk_steps=2) as recorder:
            record_steps(recorder, 16, seconds_a_step=0.05)


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda r: r.record(0, **{"a/b": 1.0}), RecordError, "'a/b' cannot name a variable: Zarr names hold no '/'"),
    (lambda r: r.record(0, step=1.0), RecordError, "'step' is the store's index coordinate, not a variable"),
    (lambda r: r.record(-1, loss=1.0), RecordError, "step must be a whole number from 0 up"),
    (lambda r: r.record(1.5, loss=1.0), RecordError, "step must be a whole number from 0 up"),
])
def test_a_value_the_store_cannot_hold_is_refused_and_recording_goes_on(tmp_path, call, error, message):
    with Recorder(tmp_path / "run.zarr") as recorder:
        with pytest.raises(error, match=message):
            call(recorder)
        recorder.record(0, loss=1.0)
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "run.zarr").loss, [1.0])


def test_a_store_that_is_not_a_path_url_or_store_is_refused():
    with pytest.raises(ConfigError, match=r"cannot record into 123 \(int\); pass a path, an fsspec URL or a zarr Store"):
        Recorder(123)
